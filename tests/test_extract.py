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
    return ClipReader(index).masks(video, np.arange(index.n_frames[video]))


def test_build_reuse_new_lambda_and_determinism(tiny_ucf, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    assert run(tiny_ucf, cache, workers=2) == 0
    index = open_cache(cache, "ucf101", masks=MaskParams())
    assert len(index) == 6 and set(index.n_frames) == {20}
    assert (index.heights[0], index.widths[0]) == (128, 171)  # 160x120 -> short side 128
    frame_set = index.root
    frames_before = digests(frame_set / "frames")
    masks30 = digests(frame_set / "masks-lam30_m0.5_soft_dilate")
    first_run_masks = mask_data(index, 3)

    # Same parameters again: nothing recomputed, said so.
    capsys.readouterr()
    assert run(tiny_ucf, cache) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert digests(frame_set / "frames") == frames_before

    # A new lambda: frames reused without running ffmpeg, the old set untouched.
    import preprocess.decode as decode

    def no_ffmpeg(*a, **k):
        raise AssertionError("ffmpeg must not run when only a mask set is added")

    monkeypatch.setattr(decode, "iter_frames", no_ffmpeg)
    monkeypatch.setattr(decode, "probe", no_ffmpeg)
    assert run(tiny_ucf, cache, "--lambda", "10") == 0
    assert digests(frame_set / "frames") == frames_before
    assert digests(frame_set / "masks-lam30_m0.5_soft_dilate") == masks30
    open_cache(cache, "ucf101", masks=MaskParams(lam=10))

    # The same parameters give the same masks whichever run computed them: recompute lam=30 from
    # the cached frames (a later run) and compare with what the first (decoding) run stored.
    shutil.rmtree(frame_set / "masks-lam30_m0.5_soft_dilate")
    assert run(tiny_ucf, cache) == 0
    np.testing.assert_array_equal(mask_data(open_cache(cache, "ucf101", masks=MaskParams()), 3), first_run_masks)


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
           "--cache-dir", str(cache), "--videos-per-shard", "2", "--workers", "1"]
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
    ClipReader(index).masks(11, np.arange(60))


def test_job_array_parts_combine(tiny_ucf, tmp_path):
    cache = tmp_path / "cache"
    assert run(tiny_ucf, cache, "--shard-index", "0", "--num-shards", "2") == 0
    with pytest.raises(Exception, match="incomplete"):
        open_cache(cache, "ucf101")
    assert run(tiny_ucf, cache, "--shard-index", "1", "--num-shards", "2") == 0
    assert len(open_cache(cache, "ucf101", masks=MaskParams())) == 6


def test_list_and_doctor(tiny_ucf, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert run(tiny_ucf, cache, "--doctor") == 0
    out = capsys.readouterr().out
    assert "ffmpeg" in out and "free" in out
    run(tiny_ucf, cache)
    capsys.readouterr()
    assert extract_masks.main(["--list", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "s128_q90_420" in out and "masks-lam30_m0.5_soft_dilate" in out and "complete" in out


def test_missing_dataset_says_where_to_put_it(tmp_path, capsys):
    assert extract_masks.main(["--data-root", str(tmp_path / "nowhere"), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "UCF-101" in err and "--dataset demo" in err
