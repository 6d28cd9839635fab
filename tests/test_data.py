"""Datasets and loaders over a real (tiny) cache (train/data.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from preprocess.cache import ClipReader, DecodeParams, MaskParams, open_cache, write_cache_from_arrays
from train.data import (
    EvalClips, LabelledClips, PretrainClips, item_rng, make_loader, set_loader_epoch,
)
from train.mac import (
    ClipConfig, MACConfig, apply_spatial, centre_spatial, gpu_transform, sample_clip_indices,
    uniform_clip_starts, SpatialParams,
)

H, W = 128, 160
# (name, label, splits, n_frames): two short videos (shorter than a stride-4 clip span and than
# 16 frames) and longer ones.
VIDEOS = [("A/v_a1.avi", 0, (1, 1, 2), 70), ("A/v_a2.avi", 0, (1, 2, 1), 12),
          ("B/v_b1.avi", 1, (1, 1, 1), 45), ("B/v_b2.avi", 1, (2, 1, 1), 90),
          ("B/v_b3.avi", 1, (1, 0, 1), 33), ("A/v_a3.avi", 0, (2, 2, 2), 64)]


def _video(n, seed):
    rng = np.random.default_rng(seed)
    bg = rng.integers(30, 110, size=(H // 8, W // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    frames = np.repeat(bg[None], n, 0)
    for t in range(n):
        x = (5 + 3 * t) % (W - 30)
        frames[t, 30:70, x:x + 30] = (230, 200, 60)
        frames[t, :4, :4] = t * 2 % 256          # frame-identifying corner
    return frames


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    vids = [(name, label, splits, _video(n, i), 25.0) for i, (name, label, splits, n) in enumerate(VIDEOS)]
    write_cache_from_arrays(root, "tiny", ("A", "B"), vids, videos_per_shard=4)
    return open_cache(root, "tiny", DecodeParams(), MaskParams())


@pytest.fixture(scope="module")
def cache_no_masks(cache):
    return open_cache(cache.root.parent.parent, "tiny", DecodeParams(), None)


def _equal_batches(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------------


def test_pretrain_item(cache):
    cfg = MACConfig(seed=3)
    ds = PretrainClips(cache, 1, "train", cfg)
    assert len(ds) == int((cache.splits[:, 0] == 1).sum()) == 4
    item = ds[0]
    S = cfg.crop
    assert item["frames"].shape == (16, S, S, 3) and item["frames"].dtype == torch.uint8
    assert item["masks"].shape == (16, S, S) and item["masks"].dtype == torch.uint8
    assert item["key_frames"].shape == (16, S, S, 3) and item["key_frames"].dtype == torch.uint8
    assert item["alpha_idx"].shape == (2,) and item["alpha_idx"].dtype == torch.int64
    assert item["alpha"].dtype == torch.float32 and item["alpha_target"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and 0 <= int(item["label"]) < 16
    assert item["jitter"].shape == (5,) and item["key_jitter"].shape == (5,)
    # a pure function of (seed, epoch, idx)
    _equal_batches(item, ds[0])
    ds2 = PretrainClips(cache, 1, "train", cfg)
    _equal_batches(item, ds2[0])
    ds2.set_epoch(1)
    assert not torch.equal(ds2[0]["frames"], item["frames"]) or not torch.equal(ds2[0]["alpha"], item["alpha"])
    with pytest.raises(IndexError):
        ds[len(ds)]


@pytest.mark.parametrize("scales", [(128,), (112, 128, 144)])
def test_pretrain_item_is_the_cached_clip(cache, scales):
    """The item's frames are the cached frames of the drawn clip through the drawn spatial
    parameters. In the exact mode its masks are Algorithm 1 on exactly those augmented frames,
    bit for bit; in the cache mode they are identical to that whenever the stored differences
    are the clip's own (the clip starts its stride's phase, or runs past the video's end) and
    the crop needs no resize (scale 128 on a 128-pixel cache), and close otherwise."""
    import dataclasses

    from preprocess.masks import foreground_masks

    cfg = MACConfig(seed=0, scales=scales, mask_source="cache")
    ds = PretrainClips(cache, 1, "all", cfg)
    exact = PretrainClips(cache, 1, "all", dataclasses.replace(cfg, mask_source="clip"))
    reader = ClipReader(cache)
    seen = {"short": 0, "phase_start": 0, "other": 0}
    for i in range(len(ds)):
        for epoch in range(6):
            ds.set_epoch(epoch)
            exact.set_epoch(epoch)
            it, ex = ds[i], exact[i]
            for k in it:
                if k != "masks":
                    assert torch.equal(it[k], ex[k]), k          # the mask source changes no draw
            v = int(it["video"])
            assert v == ds.videos[i]
            start, stride = it["clip"].tolist()
            n = int(cache.n_frames[v])
            idx = sample_clip_indices(n, 16, stride, start)
            fr = reader.frames(v, idx)
            sp = SpatialParams.from_array(it["spatial"])
            f, _ = apply_spatial(fr, None, sp)
            np.testing.assert_array_equal(it["frames"].numpy(), f)
            np.testing.assert_array_equal(ex["masks"].numpy(), foreground_masks(f))
            kf, _ = apply_spatial(fr, None, SpatialParams.from_array(it["key_spatial"]))
            np.testing.assert_array_equal(it["key_frames"].numpy(), kf)
            short = (idx == n - 1).sum() > 1
            own = short or start < stride
            if own and sp.size == sp.out:
                np.testing.assert_array_equal(it["masks"].numpy(), ex["masks"].numpy())
            else:
                a, b = it["masks"].numpy().astype(float), ex["masks"].numpy().astype(float)
                assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.6
            seen["short" if short else "phase_start" if start < stride else "other"] += 1
            if short:                                   # short video: last frame repeated
                last = np.flatnonzero(idx == n - 1)
                assert all(torch.equal(it["frames"][last[0]], it["frames"][j]) for j in last)
    reader.close()
    assert min(seen.values()) > 0, seen


def test_pretrain_options(cache, cache_no_masks):
    with pytest.raises(ValueError, match="mask parameters"):
        PretrainClips(cache_no_masks, 1, "train", MACConfig())
    with pytest.raises(ValueError, match=r"strides \[5\]"):
        PretrainClips(cache, 1, "train", MACConfig(strides=(1, 5), mask_source="cache"))
    PretrainClips(cache, 1, "train", MACConfig(strides=(1, 5), mask_source="clip"))[0]
    it = PretrainClips(cache, 1, "train", MACConfig(key_view=False, n=4, loss="mse-n"))[1]
    assert "key_frames" not in it and "key_jitter" not in it
    assert it["alpha"].shape == (4,) and int(it["label"]) == -1
    assert torch.equal(it["alpha"], it["alpha_target"]) and (it["alpha"] > 0).all()
    it = PretrainClips(cache, 1, "train", MACConfig(loss="mse"))[1]
    assert torch.equal(it["alpha"], it["alpha_target"])


def test_labelled_and_eval(cache, cache_no_masks):
    ds = LabelledClips(cache_no_masks, 1, "train", ClipConfig(seed=1))
    it = ds[2]
    v = int(it["video"])
    assert it["frames"].shape == (16, 112, 112, 3) and int(it["label"]) == cache.labels[v]
    assert it["clip"][1] == 2
    _equal_batches(it, ds[2])

    ev = EvalClips(cache_no_masks, 1, "test")
    assert len(ev) == int((cache.splits[:, 0] == 2).sum())
    reader = ClipReader(cache_no_masks)
    for i in range(len(ev)):
        e = ev[i]
        v = int(e["video"])
        n = int(cache.n_frames[v])
        assert e["frames"].shape == (10, 16, 112, 112, 3) and e["frames"].dtype == torch.uint8
        starts = uniform_clip_starts(n, 16, 2, 10)
        np.testing.assert_array_equal(e["starts"].numpy(), starts)
        p = centre_spatial(H, W, 128, 112)
        for c in (0, 9):
            fr = reader.frames(v, sample_clip_indices(n, 16, 2, int(starts[c])))
            np.testing.assert_array_equal(e["frames"][c].numpy(), fr[:, p.y0:p.y0 + 112, p.x0:p.x0 + 112])
    reader.close()


def _collect(loader, epochs=(0,)):
    out = []
    for ep in epochs:
        set_loader_epoch(loader, ep)
        out += [b for b in loader]
    return out


def test_loader_workers_fork_match_single_process(cache):
    cfg = MACConfig(seed=7)
    ds = PretrainClips(cache, 1, "all", cfg)
    ds[0]                                       # the parent's reader is open before forking
    ref = _collect(make_loader(ds, 2, 0, shuffle=True, seed=5), epochs=(0, 1))
    assert len(ref) == 6                        # 6 videos, batch 2, 2 epochs (drop_last)
    got = _collect(make_loader(ds, 2, 2, shuffle=True, seed=5, multiprocessing_context="fork"), epochs=(0, 1))
    assert len(got) == len(ref)
    for a, b in zip(ref, got):
        _equal_batches(a, b)
    # the order is a function of (seed, epoch): epochs differ, a new loader repeats it
    assert ref[0]["video"].tolist() != ref[3]["video"].tolist() or ref[1]["video"].tolist() != ref[4]["video"].tolist()


def test_loader_spawn_matches_single_process(cache):
    cfg = MACConfig(seed=11, n=4, mask_source="cache")   # the cache path in spawned workers
    ds = PretrainClips(cache, 1, "all", cfg)
    ref = _collect(make_loader(ds, 3, 0, shuffle=True, seed=1), epochs=(0, 2))
    # persistent spawned workers: set_epoch reaches them through the shared epoch tensor
    got = _collect(make_loader(ds, 3, 2, shuffle=True, seed=1, multiprocessing_context="spawn"), epochs=(0, 2))
    assert len(ref) == len(got) == 4
    for a, b in zip(ref, got):
        _equal_batches(a, b)
    # and the device transform consumes the collated batch
    out = gpu_transform(got[0], cfg, "cpu")
    assert out["query"].shape == (3, 3, 16, 112, 112) and out["key"].shape == (3, 3, 16, 112, 112)
    assert out["alpha_target"].shape == (3, 4)


def test_make_loader_order_and_eval_batches(cache_no_masks):
    ds = LabelledClips(cache_no_masks, 1, "all", ClipConfig())
    a = make_loader(ds, 4, 0, shuffle=True, seed=3)
    b = make_loader(ds, 4, 0, shuffle=True, seed=3)
    set_loader_epoch(a, 4)
    set_loader_epoch(b, 4)
    assert list(iter(a.sampler)) == list(iter(b.sampler))
    assert sorted(iter(a.sampler)) == list(range(len(ds)))
    ev = make_loader(EvalClips(cache_no_masks, 1, "all", num_clips=2), 4, 0, shuffle=False)
    batches = list(ev)
    assert [len(x["video"]) for x in batches] == [4, 2]            # no drop_last when not shuffling
    assert batches[0]["frames"].shape == (4, 2, 16, 112, 112, 3)


def test_resume_mid_epoch(cache):
    ds = PretrainClips(cache, 1, "all", MACConfig(seed=2, key_view=False))
    loader = make_loader(ds, 2, 0, shuffle=True, seed=9)
    full = _collect(loader, epochs=(3,))
    set_loader_epoch(loader, 3, start_batch=1)
    assert len(loader) == 2
    resumed = list(loader)
    for a, b in zip(full[1:], resumed):
        _equal_batches(a, b)
    set_loader_epoch(loader, 4)                 # the next epoch is whole again
    assert len(loader) == 3


def test_item_rng_pure():
    assert item_rng(1, 2, 3).random() == item_rng(1, 2, 3).random()
    assert item_rng(1, 2, 3).random() != item_rng(1, 3, 3).random()
