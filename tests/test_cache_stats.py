"""The mask statistics stored with the frames (preprocess/cache/stats.py): exactly the per-clip
masks the trainer's clip mode computes, on the sampled clips, whatever the chunking; files that
go stale with their frames; the summary and the trainer's chance warning read them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from preprocess.cache import (STATS_CLIP_LEN, ClipStatsSampler, MaskParams, MaskStats, open_cache, read_stats,
                              stats_means, stats_text, write_cache_from_arrays)
from preprocess.masks import foreground_masks
from tests.conftest import moving_square_video

P = [MaskParams(30, 0.5), MaskParams(10, 0.1)]


def direct(frames: np.ndarray, t0s: list[int], params: MaskParams, stride: int) -> MaskStats:
    """What the trainer's clip mode (train.data: foreground_masks on the clip's frames) gives for
    clips of `stride` starting at `t0s`, clamped to the last frame as the reference samples them."""
    st = MaskStats()
    for t0 in t0s:
        idx = np.minimum(t0 + stride * np.arange(STATS_CLIP_LEN), len(frames) - 1)
        st.add_masks(foreground_masks(frames[idx], params.lam, params.m, "soft", True), every=1)
    return st


def feed(frames: np.ndarray, chunk: int, first: int) -> dict:
    sampler = ClipStatsSampler(P, first=first)
    for lo in range(0, len(frames), chunk):
        hi = min(lo + chunk, len(frames))
        want = sampler.wanted(lo, hi)
        assert np.all((want >= lo) & (want < hi))
        sampler.add(want, frames[want])
    return sampler.finish(len(frames))


@pytest.mark.parametrize("n, first, t0s", [
    (600, 0, [0, 256, 512]),      # a clip every 256 frames of the shard
    (300, 0, [0, 256]),           # the second window is cut by the end: clamped, as the trainer clamps
    (20, 0, [0]),                 # shorter than a window: one clamped clip per stride
    (300, 250, [6, 262]),         # a later video of its shard: the shard's windows at 256 and 512
    (20, 250, [6]),
    (20, 10, [])])                # no window starts in it (the next one is at the shard's frame 256)
def test_sampled_clips_have_the_trainers_masks_whatever_the_chunking(n, first, t0s):
    rng = np.random.default_rng(n)
    frames = moving_square_video(n, height=72, width=96, seed=n)
    frames = np.clip(frames.astype(int) + rng.integers(-20, 21, frames.shape), 0, 255).astype(np.uint8)
    results = [feed(frames, chunk, first) for chunk in (16, 7, n)]
    for p in P:
        for s in (1, 2, 3, 4):
            want = direct(frames, t0s, p, s)
            assert want.frames == len(t0s) * STATS_CLIP_LEN and (want.mask_sum > 0 or not t0s)
            for got in results:
                assert got[p][s].to_dict() == want.to_dict(), (n, first, p, s)


def test_sampler_reads_only_the_frames_its_clips_need():
    sampler = ClipStatsSampler([MaskParams()])
    want = sampler.wanted(0, 1000)
    assert len(want) == 4 * 38 and want.max() < 768 + 61          # 38 of every 256 frames
    assert ClipStatsSampler([]).wanted(0, 1000).size == 0          # nothing asked: nothing decoded


def test_cache_statistics_files_and_text(tmp_path):
    videos = [(f"UCF-101/C{i % 2}/v_C{i % 2}_g{i:02d}_c01.avi", i % 2, (1, 1, 1),
               moving_square_video(40, seed=i), 25.0) for i in range(5)]
    root = write_cache_from_arrays(tmp_path, "toy", ["C0", "C1"], videos, masks=[MaskParams()], strides=(),
                                   videos_per_shard=2)
    assert not list(root.glob("masks-*")) and sorted(p.name for p in (root / "stats-lam30_m0.5").iterdir()) == \
        ["manifest.json", "shard-00000.json", "shard-00001.json", "shard-00002.json"]
    manifest = read_stats(root, MaskParams())
    assert manifest["complete"] and manifest["videos"] == 5
    for s in ("1", "2", "3", "4"):            # shards of 80, 80 and 40 frames: one clip each
        st = manifest["strides"][s]
        assert st["frames"] == 3 * STATS_CLIP_LEN and 0 < st["mean"] < st["coverage"] < 1
    text = stats_text(manifest)
    assert text.startswith("per-clip masks, stride 1: mean ") and "(3 sampled clips per stride)" in text
    assert set(stats_means(manifest)) == {1, 2, 3, 4}
    assert read_stats(root, MaskParams(10, 0.5)) is None
    assert stats_text(None).startswith("mask statistics: not computed")
    # a shard's statistics belong to its frames: another uid makes them stale
    from preprocess.cache import shard_stats_stale, write_stats_manifest

    path = root / "stats-lam30_m0.5" / "shard-00001.json"
    frames = json.loads((root / "frames" / "manifest.json").read_text())
    assert shard_stats_stale(path, frames["shard_uids"]["1"]) is None
    assert "other frames" in shard_stats_stale(path, "0" * 16)
    body = json.loads(path.read_text())
    path.write_text(json.dumps({**body, "frames_uid": "0" * 16}))
    again = write_stats_manifest(root, MaskParams(), frames)
    assert not again["complete"] and again["stale"] == [1] and again["videos"] == 3
    path.write_text("{not json")
    assert "damaged" in shard_stats_stale(path, frames["shard_uids"]["1"])
    open_cache(tmp_path, "toy", masks=MaskParams(), strides=())        # the frames read as before


def test_chance_warning_shows_the_caches_statistics():
    from train.pretrain import PretrainConfig, chance_warning

    cfg = PretrainConfig()
    text = chance_warning(cfg, 2, 40, 0.25, 200, {4: 0.012}, {1: 0.031, 4: 0.044})
    assert "stride 4: 0.012" in text and "the cache's statistics for the whole dataset" in text
    assert "stride 1: 0.031, stride 4: 0.044" in text
    assert "cache's statistics" not in chance_warning(cfg, 2, 40, 0.25, 200, {4: 0.012}, {})
