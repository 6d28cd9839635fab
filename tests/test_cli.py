"""Every tool's bad values, expected failures and exit status (core/errors.py).

A bad value is refused before any data, cache or run directory is touched: status 2 and one line
naming the flag, the value and what is allowed; the cache stays byte for byte as it was and a
valid run right after works. Expected failures (full disk, refused checkpoint, damaged cache)
are one message, never a traceback; a bug is a traceback plus a line saying so."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import errors as cli
from tests.test_pretrain import build_tiny_cache, tiny_args

REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict:
    """Every file under root with its size, mtime and bytes' hash: 'untouched' means equal."""
    import hashlib

    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return build_tiny_cache(tmp_path_factory.mktemp("cli_cache"))


def _tool(name: str):
    import importlib

    module = {"pretrain": "train.pretrain", "finetune": "train.finetune", "evaluate": "train.evaluate",
              "retrieve": "train.retrieve", "report": "train.report", "make_demo": "preprocess.make_demo",
              "extract_masks": "preprocess.extract_masks"}[name]
    return importlib.import_module(module).main


# (tool, arguments, what the one line must say). {cache} and {tmp} are filled in per test.
BAD_VALUES = [
    ("pretrain", ["--k", "1"], "--k 1: must be an integer >= 2"),
    ("pretrain", ["--n", "0"], "--n 0: must be an integer >= 1"),
    ("pretrain", ["--batch-size", "0"], "--batch-size 0: must be an integer >= 1"),
    ("pretrain", ["--split", "4"], "--split 4: must be an integer in [1, 3]"),
    ("pretrain", ["--lambda", "300"], "--lambda 300: must be an integer in [0, 255]"),
    ("pretrain", ["--m", "1.5"], "--m 1.5: must be a number in [0, 1]"),
    ("pretrain", ["--m", "nan"], "--m nan: must be a number in [0, 1]"),
    ("pretrain", ["--frames", "5"], "--frames 5: must be a multiple of --n 2"),
    ("pretrain", ["--strides", "0", "2"], "--strides 0 2: must be one or more values, each an integer >= 1"),
    ("pretrain", ["--crop", "64"], "--crop 64: must be <= the smallest of --scales (16)"),
    ("pretrain", ["--temperature", "0"], "--temperature 0.0: must be a number > 0"),
    ("pretrain", ["--lr", "-0.1"], "--lr -0.1: must be a number >= 0"),
    ("pretrain", ["--queue-size", "18"], "--queue-size 18: must be divisible by the keys enqueued per step"),
    ("pretrain", ["--backbone", "resnet50"], "--backbone resnet50: unknown backbone"),
    ("pretrain", ["--epochs", "0"], "--epochs 0: must be an integer >= 1"),
    ("finetune", ["--init", "random", "--split", "4"], "--split 4: must be an integer in [1, 3]"),
    ("finetune", ["--init", "random", "--label-fraction", "1.5"], "--label-fraction 1.5: must be a number in (0, 1]"),
    ("finetune", ["--init", "random", "--batch-size", "0"], "--batch-size 0: must be an integer >= 1"),
    ("finetune", ["--init", "random", "--stride", "0"], "--stride 0: must be an integer >= 1"),
    ("finetune", ["--init", "random", "--dropout", "1"], "--dropout 1.0: must be a number in [0, 1)"),
    ("finetune", ["--init", "{tmp}/missing.pt"], "--init {tmp}/missing.pt: no such file"),
    ("evaluate", ["--checkpoint", "{tmp}/missing.pt"], "--checkpoint {tmp}/missing.pt: no such file"),
    ("evaluate", ["--checkpoint", "{tmp}/some.pt", "--num-clips", "0"], "--num-clips 0: must be an integer >= 1"),
    ("evaluate", ["--checkpoint", "{tmp}/some.pt", "--split", "0"], "--split 0: must be an integer in [1, 3]"),
    ("evaluate", ["--checkpoint", "{tmp}/some.pt", "--crop", "200", "--short-side", "128"],
     "--crop 200: must be <= --short-side (128)"),
    ("retrieve", ["--checkpoint", "{tmp}/some.pt", "--ks", "0", "5"], "--ks 0 5: must be one or more values"),
    ("retrieve", ["--checkpoint", "{tmp}/some.pt", "--batch-size", "0"], "--batch-size 0: must be an integer >= 1"),
    ("retrieve", ["--checkpoint", "{tmp}/missing.pt"], "--checkpoint {tmp}/missing.pt: no such file"),
    ("report", ["--run-dir", "{tmp}/no-run"], "--run-dir {tmp}/no-run: no such directory"),
    ("report", ["--aggregate", "{tmp}"], "needs --out-dir"),
    ("make_demo", ["--root", "{tmp}/demo", "--groups", "2"], "--groups 2: must be an integer in [3, 99]"),
    ("make_demo", ["--root", "{tmp}/demo", "--classes", "1"], "--classes 1: must be an integer in [2, "),
    ("make_demo", ["--root", "{tmp}/demo", "--frames", "4"], "--frames 4: must be an integer >= 8"),
    ("extract_masks", ["--cache-dir", "{tmp}/fresh", "--lambda", "-5"], "--lambda -5: must be an integer in [0, 255]"),
    ("extract_masks", ["--cache-dir", "{cache}", "--lambda", "300"], "--lambda 300: must be an integer in [0, 255]"),
    ("extract_masks", ["--cache-dir", "{cache}", "--m", "1.5"], "--m 1.5: must be a number in [0, 1]"),
    ("extract_masks", ["--cache-dir", "{tmp}/fresh", "--strides", "2", "2"], "--strides 2 2: must be distinct"),
    ("extract_masks", ["--cache-dir", "{tmp}/fresh", "--shard-index", "2", "--num-shards", "2"],
     "--shard-index 2: must be an integer in [0, 1]"),
    ("extract_masks", ["--cache-dir", "{tmp}/fresh", "--workers", "0"], "--workers 0: must be an integer >= 1"),
]


@pytest.mark.parametrize("tool,argv,expected", BAD_VALUES, ids=[f"{t}{' '.join(a)}" for t, a, _ in BAD_VALUES])
def test_bad_values_are_refused_before_any_work(tool, argv, expected, cache, tmp_path, capsys):
    (tmp_path / "some.pt").write_bytes(b"")            # exists: the value check comes first
    fill = {"{tmp}": str(tmp_path), "{cache}": str(cache)}
    argv = [next((a.replace(k, v) for k, v in fill.items() if k in a), a) for a in argv]
    expected = expected.replace("{tmp}", str(tmp_path))
    if tool == "pretrain":
        argv = tiny_args(cache, *argv)
    elif tool == "finetune":
        argv = ["--cache-dir", str(cache), "--scales", "16", "20", "--crop", "16", "--frames", "4", *argv]
    if tool in ("pretrain", "finetune"):
        argv += ["--run-dir", str(tmp_path / "run")]
    before = snapshot(cache)
    capsys.readouterr()
    status = cli.run(_tool(tool), f"{tool}.py", argv)
    err = capsys.readouterr().err
    assert status == cli.EXIT_USAGE, err
    assert err.strip() == f"{tool}.py: error: {err.split('error: ', 1)[1].strip()}"   # exactly one line
    assert expected in err and "Traceback" not in err
    assert snapshot(cache) == before
    assert not any((tmp_path / d).exists() for d in ("run", "demo", "fresh"))


def test_a_valid_run_right_after_bad_ones_uses_the_same_cache(cache, tmp_path, capsys):
    from train.pretrain import main

    before = snapshot(cache)
    for bad in (["--k", "1"], ["--batch-size", "0"], ["--n", "3"]):
        assert cli.run(main, "pretrain.py", tiny_args(cache, *bad, "--run-dir", str(tmp_path / "run"))) == 2
    assert snapshot(cache) == before
    res = main(tiny_args(cache, "--method", "mac-s", "--max-steps", "1", "--run-dir", str(tmp_path / "run")))
    assert res["step"] == 1 and (tmp_path / "run" / "last.pt").is_file()


@pytest.mark.parametrize("script,argv,expected", [
    ("train/pretrain.py", ["--k", "1"], "pretrain.py: error: --k 1: must be an integer >= 2 (the paper's: 2..6)"),
    ("train/finetune.py", ["--init", "random", "--split", "4"], "finetune.py: error: --split 4: must be an integer in [1, 3]"),
])
def test_scripts_exit_2_with_one_line(script, argv, expected, tmp_path):
    """As a user runs them: a real process, its status and its whole stderr."""
    p = subprocess.run([sys.executable, script, "--cache-dir", str(tmp_path / "none"), *argv], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.strip() == expected, p.stderr
    assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------------------------------------
# cli.run: the outcome -> status and message mapping

def _raiser(exc: BaseException):
    def main(argv=None):
        raise exc
    return main


def test_expected_failures_are_one_message(capsys):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/cache/x/shard-00001.h5")
    assert cli.run(_raiser(full), "tool") == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "tool: error: no space left on the device: /cache/x/shard-00001.h5" in err and "Traceback" not in err
    # HDF5 reports a failed write in its message only; wrapped in another exception it is still found
    h5 = OSError("Can't write data (file write failed: time = Mon, filename = 'x.h5', errno = 28, ...)")
    try:
        try:
            raise h5
        except OSError as inner:
            raise RuntimeError("writing shard 3") from inner
    except RuntimeError as outer:
        wrapped = outer
    assert cli.run(_raiser(wrapped), "tool") == cli.EXIT_USAGE
    assert "no space left on the device" in capsys.readouterr().err
    assert cli.run(_raiser(OSError(errno.EROFS, "Read-only file system", "/ro")), "tool") == 2
    assert "read-only file system: /ro" in capsys.readouterr().err
    assert cli.run(_raiser(KeyboardInterrupt()), "tool") == cli.EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err
    # a ToolError raised in a DataLoader worker arrives with the worker's traceback in its text
    worker = cli.ToolError("Caught ToolError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1\ncli.ToolError: shard-00002.h5: damaged; run X")
    assert cli.run(_raiser(worker), "tool") == 2
    assert capsys.readouterr().err.strip() == "tool: error: shard-00002.h5: damaged; run X"
    assert cli.run(_raiser(SystemExit("last.pt exists: pass --resume")), "tool") == 2
    assert capsys.readouterr().err.strip() == "tool: error: last.pt exists: pass --resume"
    assert cli.run(lambda argv: 1, "tool") == 1 and cli.run(lambda argv: {"acc": 1.0}, "tool") == 0


def test_a_bug_is_a_traceback_and_says_so(capsys):
    assert cli.run(_raiser(ZeroDivisionError("division by zero")), "tool") == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and "internal error (a bug" in err
    # an OSError the user cannot fix by making room (here: a missing file deep inside) is a bug too
    assert cli.run(_raiser(FileNotFoundError(errno.ENOENT, "No such file", "x")), "tool") == cli.EXIT_BUG


def test_full_disk_during_extraction_keeps_the_cache_consistent(tiny_ucf, tmp_path, monkeypatch, capsys):
    """ENOSPC in the middle of a shard (simulated: HDF5 writes fail after a byte budget): one
    message, no traceback, no temporary or partial shard left; a rerun with room completes and
    keeps the shards finished before the disk filled up."""
    import h5py

    from preprocess.cache import MaskParams, open_cache
    from preprocess.extract_masks import main

    real_setitem = h5py.Dataset.__setitem__
    budget = {"bytes": float("inf"), "used": 0}

    def small_disk(self, key, value):
        budget["used"] += getattr(value, "nbytes", 0)
        if budget["used"] > budget["bytes"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.file.filename)
        return real_setitem(self, key, value)

    def argv(cache):
        return ["--data-root", str(tiny_ucf), "--cache-dir", str(cache), "--workers", "1", "--videos-per-shard", "2"]

    monkeypatch.setattr(h5py.Dataset, "__setitem__", small_disk)
    assert cli.run(main, "extract_masks.py", argv(tmp_path / "measure")) == 0     # what a full run writes
    budget.update(bytes=budget["used"] * 0.6, used=0)                            # the disk fills up in shard 2
    cache = tmp_path / "cache"
    assert cli.run(main, "extract_masks.py", argv(cache)) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "extract_masks.py: error: no space left on the device" in err and "Traceback" not in err
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]          # nothing half-written
    kept = {p: p.stat().st_mtime_ns for p in cache.rglob("shard-*.h5")}
    assert kept, "the budget should let the first shard finish"
    monkeypatch.setattr(h5py.Dataset, "__setitem__", real_setitem)         # room again
    assert cli.run(main, "extract_masks.py", argv(cache)) == 0
    assert len(open_cache(cache, "ucf101", masks=MaskParams(), strides=())) == 6
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())       # finished shards were kept


def test_trainer_stops_on_a_damaged_shard_with_the_path_and_the_fix(cache, tmp_path, capsys):
    """A frame record damaged after extraction: pretraining (reading in a DataLoader worker
    process) stops with status 2, the shard's path and the repair command, not a traceback."""
    import shutil

    import h5py

    from tests.test_integrity import flip_record_byte
    from train.pretrain import main

    damaged = tmp_path / "cache"
    shutil.copytree(cache, damaged)
    from preprocess.cache import open_cache

    index = open_cache(damaged, "ucf101")
    shard = index.frames_path(0)
    for video in range(len(index)):
        if index.shard[video] == 0:
            for t in range(int(index.n_frames[video])):
                flip_record_byte(index, shard, video, t)
    with h5py.File(shard, "r"):   # still a valid HDF5 file: only our checksums can tell
        pass
    argv = tiny_args(damaged, "--method", "mac-s", "--workers", "1", "--epochs", "1",
                     "--run-dir", str(tmp_path / "run"))
    assert cli.run(main, "pretrain.py", argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{shard}" in err and "damaged" in err and "--verify" in err, err
    assert "Traceback" not in err and "internal error" not in err
