"""The preprocessing job end to end: real ffmpeg decoding of small videos in UCF101's layout."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from preprocess import extract_masks
from preprocess.cache import ClipReader, MaskParams, open_cache
from tests.conftest import make_ucf_layout, moving_square_video, write_video

REPO = Path(__file__).resolve().parent.parent


def run(root: Path, cache: Path, *extra: str, workers: int = 1) -> int:
    return extract_masks.main(["--dataset", "ucf101", "--data-root", str(root), "--cache-dir", str(cache),
                               "--videos-per-shard", "2", "--workers", str(workers), *extra])


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*.h5"))}


def mask_data(index, video: int) -> np.ndarray:
    """Every stored D of a video, all strides."""
    return np.stack([ClipReader(index).diffs(video, np.arange(index.n_frames[video]), s) for s in index.strides])


def set_digests(frame_set: Path, key: str) -> dict[str, dict[str, str]]:
    """Digests of every per-stride mask set of (lambda, m) `key`, e.g. lam30_m0.5."""
    return {p.name: digests(p) for p in sorted(frame_set.glob(f"masks-{key}_stride*"))}


def stats_of(frame_set: Path, key: str) -> dict:
    import json

    return json.loads((frame_set / f"stats-{key}" / "manifest.json").read_text())["strides"]


def test_default_stores_frames_and_statistics_and_says_why(tiny_ucf, tmp_path, capsys):
    """The documented command stores what the default training reads: frames and the mask
    statistics of (lambda, m), no mask set, and says so; the cache-mode trainer's error names the
    exact command that adds the sets."""
    from preprocess.cache import CacheError

    cache = tmp_path / "cache"
    assert run(tiny_ucf, cache, "--lambda", "30", "--m", "0.5") == 0
    out = capsys.readouterr().out
    frame_set = open_cache(cache, "ucf101", masks=MaskParams(), strides=()).root
    assert not list(frame_set.glob("masks-*")), "the default writes no mask set"
    assert "no mask set stored" in out and "--mask-source clip" in out and "--strides 1 2 3 4" in out
    stats = stats_of(frame_set, "lam30_m0.5")
    assert sorted(stats, key=int) == ["1", "2", "3", "4"]
    for s, st in stats.items():
        assert st["frames"] == 3 * 16 and 0 < st["mean"] < st["coverage"] < 1, (s, st)   # a clip per 256 frames of a shard
        assert f"stride {s}: mean {st['mean']:.3f}" in out
    with pytest.raises(CacheError) as e:            # what --mask-source cache asks for
        open_cache(cache, "ucf101", masks=MaskParams(), strides=(1, 2, 3, 4))
    assert "python preprocess/extract_masks.py --dataset ucf101" in str(e.value)
    assert "--lambda 30 --m 0.5 --strides 1 2 3 4" in str(e.value)


def test_build_reuse_new_lambda_and_determinism(tiny_ucf, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    assert run(tiny_ucf, cache, workers=2) == 0
    index = open_cache(cache, "ucf101", masks=MaskParams(), strides=())
    assert len(index) == 6 and set(index.n_frames) == {20}
    assert (index.heights[0], index.widths[0]) == (128, 171)  # 160x120 -> short side 128
    frame_set = index.root
    frames_before = digests(frame_set / "frames")
    stats30 = stats_of(frame_set, "lam30_m0.5")

    # Same parameters again: nothing recomputed, said so.
    capsys.readouterr()
    assert run(tiny_ucf, cache) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert digests(frame_set / "frames") == frames_before

    # A new lambda, then mask sets: frames reused without running ffmpeg, nothing else touched.
    import preprocess.decode as decode

    def no_ffmpeg(*a, **k):
        raise AssertionError("ffmpeg must not run when only statistics or mask sets are added")

    monkeypatch.setattr(decode, "iter_frames", no_ffmpeg)
    monkeypatch.setattr(decode, "probe", no_ffmpeg)
    assert run(tiny_ucf, cache, "--lambda", "10") == 0
    assert digests(frame_set / "frames") == frames_before
    assert stats_of(frame_set, "lam30_m0.5") == stats30
    stats10 = stats_of(frame_set, "lam10_m0.5")
    assert all(stats10[s]["coverage"] > stats30[s]["coverage"] for s in stats30)   # a lower threshold
    assert not list(frame_set.glob("masks-*"))
    assert run(tiny_ucf, cache, "--strides", "1", "2", "3", "4") == 0
    assert digests(frame_set / "frames") == frames_before
    masks30 = set_digests(frame_set, "lam30_m0.5")
    assert sorted(masks30) == [f"masks-lam30_m0.5_stride{s}" for s in (1, 2, 3, 4)]
    index = open_cache(cache, "ucf101", masks=MaskParams())
    from_cached_frames = mask_data(index, 3)

    # A new stride: only its set is written; frames and every other set stay byte-identical.
    assert run(tiny_ucf, cache, "--lambda", "10", "--strides", "1") == 0
    lam10 = set_digests(frame_set, "lam10_m0.5")
    assert run(tiny_ucf, cache, "--strides", "5", "7") == 0
    assert digests(frame_set / "frames") == frames_before
    assert set_digests(frame_set, "lam10_m0.5") == lam10
    now = set_digests(frame_set, "lam30_m0.5")
    assert {k: v for k, v in now.items() if k in masks30} == masks30
    assert set(now) - set(masks30) == {"masks-lam30_m0.5_stride5", "masks-lam30_m0.5_stride7"}
    open_cache(cache, "ucf101", masks=MaskParams(), strides=(1, 5, 7))

    # The same parameters give the same masks and statistics whichever run computed them: a run
    # that decodes the videos and stores the sets at once against the sets and statistics computed
    # later from the cached frames above.
    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    assert run(tiny_ucf, fresh, "--strides", "1", "2", "3", "4") == 0
    index = open_cache(fresh, "ucf101", masks=MaskParams())
    np.testing.assert_array_equal(mask_data(index, 3), from_cached_frames)
    assert stats_of(index.root, "lam30_m0.5") == stats30


def test_changed_source_is_redone_and_force(tiny_ucf, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert run(tiny_ucf, cache) == 0
    frame_set = open_cache(cache, "ucf101").root
    before = digests(frame_set / "frames")
    video = tiny_ucf / "UCF-101/MoveLeft/v_MoveLeft_g01_c01.avi"  # sorted first: shard 0
    write_video(video, moving_square_video(25, seed=99), _ffmpeg())
    capsys.readouterr()
    assert run(tiny_ucf, cache) == 0
    assert "source changed" in capsys.readouterr().out
    after = digests(frame_set / "frames")
    assert after["shard-00000.h5"] != before["shard-00000.h5"]
    assert after["shard-00001.h5"] == before["shard-00001.h5"] and after["shard-00002.h5"] == before["shard-00002.h5"]
    assert open_cache(cache, "ucf101").n_frames[0] == 25
    assert run(tiny_ucf, cache, "--force") == 0
    assert digests(frame_set / "frames")["shard-00001.h5"] != before["shard-00001.h5"]


def _ffmpeg() -> str:
    from preprocess.decode import ffmpeg_binary

    return ffmpeg_binary()


def test_bad_inputs_are_reported_and_the_rest_is_cached(tiny_ucf, tmp_path, capsys):
    cls = tiny_ucf / "UCF-101" / "MoveLeft"
    good = (cls / "v_MoveLeft_g01_c01.avi").read_bytes()
    (cls / "v_MoveLeft_g04_c01.avi").write_bytes(b"")                       # zero bytes
    (cls / "v_MoveLeft_g04_c02.avi").write_text("this is not a video\n")    # not a video
    (cls / "v_MoveLeft_g04_c03.avi").write_bytes(good[: len(good) // 2])    # truncated
    write_video(cls / "v_MoveLeft_g04_c04.avi", moving_square_video(1), _ffmpeg())  # one frame
    write_video(cls / "v_MoveLeft_g05_c01 with spaces é.avi", moving_square_video(12), _ffmpeg())
    lists = tiny_ucf / "ucfTrainTestlist"
    with open(lists / "trainlist01.txt", "a") as f:
        f.write("this line is malformed\n")
    cache = tmp_path / "cache"
    capsys.readouterr()
    assert run(tiny_ucf, cache) == 1  # something failed: exit status 1
    out, err = capsys.readouterr()
    index = open_cache(cache, "ucf101")
    names = set(index.names)
    assert "UCF-101/MoveLeft/v_MoveLeft_g05_c01 with spaces é.avi" in names
    assert len(names) == 7  # the 6 good ones and the spaced/non-ASCII one
    report = (index.root / "failures.txt").read_text()
    for name, reason in [("g04_c01", "empty"), ("g04_c02", "video"), ("g04_c03", "truncated"), ("g04_c04", "frame")]:
        line = next(l for l in report.splitlines() if name in l)
        assert reason in line.lower(), line
        assert name in err
    assert "malformed" in err.lower() and "trainlist01.txt" in err
    # Known failures are not retried on a plain rerun: it finishes in seconds, still exit 1.
    capsys.readouterr()
    assert run(tiny_ucf, cache) == 1
    assert "nothing to do" in capsys.readouterr().out


def test_sigkill_midway_then_rerun_completes(tmp_path, ffmpeg_exe):
    root = make_ucf_layout(tmp_path / "ucf", ffmpeg_exe, groups=6, n_frames=60)
    cache = tmp_path / "cache"
    cmd = [sys.executable, str(REPO / "preprocess/extract_masks.py"), "--dataset", "ucf101", "--data-root", str(root),
           "--cache-dir", str(cache), "--videos-per-shard", "2", "--workers", "1", "--strides", "1", "2", "3", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    frames_dir = cache / "ucf101" / "s128_q90_420" / "frames"
    deadline = time.time() + 120
    while time.time() < deadline and not list(frames_dir.glob("shard-*.h5")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    shards = sorted(frames_dir.glob("shard-*.h5"))
    assert 1 <= len(shards) < 6, "kill must land mid-way"
    for s in shards:  # every file named shard-*.h5 is whole
        with h5py.File(s, "r") as f:
            assert f["jpeg_offsets"][-1] == f["jpeg"].shape[0]
    with pytest.raises(Exception, match="incomplete|no cached"):
        open_cache(cache, "ucf101", masks=MaskParams())
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    index = open_cache(cache, "ucf101", masks=MaskParams())
    assert len(index) == 12
    assert not list(cache.rglob(".*.tmp-*"))
    ClipReader(index).masks(11, np.arange(0, 60, 4))
    assert stats_of(index.root, "lam30_m0.5")["4"]["frames"] == 6 * 16    # statistics of every shard


def test_job_array_parts_combine(tiny_ucf, tmp_path):
    cache = tmp_path / "cache"
    assert run(tiny_ucf, cache, "--shard-index", "0", "--num-shards", "2") == 0
    with pytest.raises(Exception, match="incomplete"):
        open_cache(cache, "ucf101")
    assert run(tiny_ucf, cache, "--shard-index", "1", "--num-shards", "2") == 0
    index = open_cache(cache, "ucf101", masks=MaskParams(), strides=())
    assert len(index) == 6
    assert stats_of(index.root, "lam30_m0.5")["1"]["frames"] == 3 * 16     # both parts' statistics


def test_list_and_doctor(tiny_ucf, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert run(tiny_ucf, cache, "--doctor") == 0
    out = capsys.readouterr().out
    assert "ffmpeg" in out and "free" in out
    run(tiny_ucf, cache, "--strides", "1", "2", "3", "4")
    capsys.readouterr()
    assert extract_masks.main(["--list", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "s128_q90_420" in out and "complete" in out
    line = next(l for l in out.splitlines() if "stats-lam30_m0.5 " in l)   # the per-clip statistics
    assert "per-clip masks, stride 1: mean 0." in line and "stride 4: mean 0." in line and "3 sampled clips" in line
    for s in (1, 2, 3, 4):   # one line per stored set, with its statistics
        line = next(l for l in out.splitlines() if f"masks-lam30_m0.5_stride{s} " in l)
        mean = float(line.split("mean mask ")[1].split(",")[0])
        coverage = float(line.split("coverage ")[1].split(" ")[0])
        assert 0 < mean < coverage < 1, line


def test_bad_values_are_refused_before_any_work(tiny_ucf, tmp_path, capsys):
    """A bad run-level value is the command's problem: exit 2 naming the flag, nothing decoded,
    nothing recorded against the videos; a valid run right after caches everything."""
    cache = tmp_path / "cache"
    for bad in (["--lambda", "-5"], ["--lambda", "300"], ["--m", "1.5"], ["--m", "nan"], ["--strides", "0"],
                ["--strides", "2", "2"], ["--shard-index", "2", "--num-shards", "2"]):
        with pytest.raises(SystemExit) as e:
            run(tiny_ucf, cache, *bad)
        assert e.value.code == 2
        assert bad[0] in capsys.readouterr().err
        assert not cache.exists()
    assert run(tiny_ucf, cache) == 0
    assert len(open_cache(cache, "ucf101", masks=MaskParams(), strides=())) == 6


def test_old_format_cache_is_detected_and_upgraded_without_decoding(tiny_ucf, tmp_path, capsys, monkeypatch):
    """A cache from before per-stride sets: its frames are kept, the message gives the exact
    command, and that command adds the sets from the cached frames (ffmpeg never runs)."""
    import json
    import shlex

    import preprocess.decode as decode
    from preprocess.cache import CacheError

    cache = tmp_path / "cache"
    assert run(tiny_ucf, cache, "--strides", "1", "2", "3", "4") == 0
    frame_set = open_cache(cache, "ucf101").root
    frames_before = digests(frame_set / "frames")
    # turn it into an old cache: one format-1 set of soft masks, no per-stride sets
    for s in (1, 2, 3, 4):
        shutil.rmtree(frame_set / f"masks-lam30_m0.5_stride{s}")
    old = frame_set / "masks-lam30_m0.5_soft_dilate"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format_version": 1, "complete": True, "shards_present": [0],
                                                   "masks": {"lam": 30, "m": 0.5, "mode": "soft", "dilate": True}}))
    with pytest.raises(CacheError) as e:
        open_cache(cache, "ucf101", masks=MaskParams())
    msg = str(e.value)
    assert "older format" in msg and "masks-lam30_m0.5_soft_dilate" in msg and "no video is decoded" in msg
    command = next(l.strip() for l in msg.splitlines() if l.strip().startswith("python preprocess/extract_masks.py"))
    assert "--lambda 30 --m 0.5 --strides 1 2 3 4" in command

    def no_ffmpeg(*a, **k):
        raise AssertionError("upgrading an old cache must not decode videos")

    monkeypatch.setattr(decode, "iter_frames", no_ffmpeg)
    monkeypatch.setattr(decode, "probe", no_ffmpeg)
    argv = shlex.split(command)[2:] + ["--data-root", str(tiny_ucf), "--cache-dir", str(cache), "--videos-per-shard", "2"]
    capsys.readouterr()
    assert extract_masks.main(argv) == 0
    assert "older-format mask sets are not read" in capsys.readouterr().out
    assert digests(frame_set / "frames") == frames_before
    assert len(open_cache(cache, "ucf101", masks=MaskParams())) == 6


def test_missing_dataset_says_where_to_put_it(tmp_path, capsys):
    assert extract_masks.main(["--data-root", str(tmp_path / "nowhere"), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "UCF-101" in err and "--dataset demo" in err
