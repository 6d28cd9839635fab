"""The shared training loop (train/loop.py): mid-epoch resume reproduces the uninterrupted run,
the checkpoint saver is atomic and writes in the background, the prefetching loader on CPU."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_pretrain import _state_equal, sigkill_when, tiny_args, tiny_cache  # noqa: F401 (fixture)
from train.utils.checkpoint import load_checkpoint
from train.utils.log import read_metrics
from train.loop import PrefetchLoader
from train.utils.checkpoint import CheckpointSaver

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "2"}   # every run in a fresh process, same thread count


def _run(args: list[str], run: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train/pretrain.py", *args, "--run-dir", str(run), *extra], cwd=REPO,
                          env=ENV, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _same_run(a_dir: Path, b_dir: Path) -> None:
    a, b = load_checkpoint(a_dir / "last.pt"), load_checkpoint(b_dir / "last.pt")
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"] and a["batch"] == b["batch"] == 0
    for key in ("model", "optimizer", "scheduler", "moco", "rng"):
        assert not _state_equal(a[key], b[key]), (key, _state_equal(a[key], b[key])[:5])
    ea = [r for r in read_metrics(a_dir / "metrics.jsonl") if r["kind"] == "epoch" and not r["partial"]]
    eb = [r for r in read_metrics(b_dir / "metrics.jsonl") if r["kind"] == "epoch" and not r["partial"]]
    assert [(r["epoch"], r["loss"], r["acc"]) for r in ea] == [(r["epoch"], r["loss"], r["acc"]) for r in eb]


def test_resume_mid_epoch_equals_the_uninterrupted_run(tiny_cache, tmp_path):
    """A run stopped in the middle of an epoch (--max-steps) and resumed continues from the batch
    it reached (not from the epoch's start) and ends bit for bit where the uninterrupted run ends;
    so does one killed after a --save-every-min checkpoint."""
    args = tiny_args(tiny_cache, "--epochs", "3", "--batch-size", "2", "--queue-size", "8", "--seed", "5")
    _run(args, tmp_path / "full")
    steps = load_checkpoint(tmp_path / "full" / "last.pt")["step"]
    per_epoch = steps // 3
    assert per_epoch >= 4

    stopped = tmp_path / "stopped"
    _run(args, stopped, "--max-steps", str(per_epoch + 2))
    ck = load_checkpoint(stopped / "last.pt")
    assert ck["partial"] and ck["epoch"] == 1 and ck["batch"] == 2 and ck["step"] == per_epoch + 2
    _run(args, stopped, "--resume")
    _same_run(tmp_path / "full", stopped)

    killed = tmp_path / "killed"

    def mid_epoch_checkpoint_of_epoch_1() -> bool:
        recs = read_metrics(killed / "metrics.jsonl") if (killed / "metrics.jsonl").exists() else []
        return any(r["kind"] == "checkpoint_written" and r["epoch"] == 1 for r in recs[:-1])

    sigkill_when([sys.executable, "train/pretrain.py", *args, "--save-every-min", "1e-9", "--run-dir", str(killed)],
                 ENV, mid_epoch_checkpoint_of_epoch_1)
    ck = load_checkpoint(killed / "last.pt")
    assert ck["step"] < steps, "really interrupted"
    mid = [r for r in read_metrics(killed / "metrics.jsonl") if r["kind"] == "checkpoint" and r["batch"] > 0]
    assert mid, "--save-every-min wrote mid-epoch checkpoints"
    _run(args, killed, "--resume", "--save-every-min", "1e-9")
    _same_run(tmp_path / "full", killed)


def test_checkpoint_saver_is_atomic_and_writes_in_the_background(tmp_path, monkeypatch):
    saver = CheckpointSaver(tmp_path, save_every=2)
    live = {"w": torch.zeros(3), "epoch": 2}
    real_save = torch.save

    def slow_save(obj, f, *a, **k):
        time.sleep(0.2)
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", slow_save)
    paused = saver.save(live, epoch_done=2, partial=False)
    live["w"].add_(1)                      # training goes on changing the live tensors...
    saver.wait()
    assert paused < 0.2                    # ...while the writer thread saves the host copy
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["w"], torch.zeros(3))
    assert (tmp_path / "epoch_0002.pt").is_file() and not (tmp_path / "best.pt").exists()

    def full_disk(obj, f, *a, **k):        # dies half-way through writing the temp file
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    saver.save({"w": torch.ones(3), "epoch": 3}, epoch_done=3, partial=False, is_best=True)
    with pytest.raises(OSError, match="No space left"):
        saver.wait()                        # the writer's error reaches the training thread
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["w"], torch.zeros(3))   # the previous one, whole
    assert not (tmp_path / "best.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0002.pt", "last.pt"]  # no temp file left


def test_prefetch_loader_on_cpu_prepares_every_batch_in_order():
    data = torch.arange(20).reshape(10, 2)
    loader = torch.utils.data.DataLoader(data, batch_size=3)
    seen = []
    pf = PrefetchLoader(loader, torch.device("cpu"), prepare=lambda b: {"x": b * 10},
                        inspect=lambda b: seen.append(b.clone()))
    out = list(pf)
    assert len(pf) == 4 and [o["x"].tolist() for o in out] == [(b * 10).tolist() for b in loader]
    assert [s.tolist() for s in seen] == [b.tolist() for b in loader]     # every CPU batch, before prepare
    it = pf.start()                         # a fresh pass from start()
    assert next(it)["x"].tolist() == (data[:3] * 10).tolist()
