"""Preemption (train/utils/preemption.py, train/loop.py): a stop signal mid-epoch -> the current
step finishes, a mid-epoch last.pt past the last periodic one is written, metrics are flushed, the
run exits 143, and --resume ends bit for bit where the uninterrupted run ends. Real subprocesses,
the signal sent to the whole process group as a cluster scheduler does (DataLoader workers too)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import EXIT_PREEMPTED
from tests.test_loop import ENV, REPO, _run, _same_run
from tests.test_pretrain import tiny_args, tiny_cache  # noqa: F401 (fixture)
from train.utils.checkpoint import load_checkpoint
from train.utils.log import read_metrics
from train.utils.preemption import Preemption


def _records(run: Path) -> list[dict]:
    return read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []


def signal_when(cmd: list[str], sig: int, ready, timeout: float = 180.0) -> subprocess.CompletedProcess:
    """Start `cmd` in its own process group, send `sig` to the group once `ready()` holds, and
    wait for it to end by itself."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.002)
        assert proc.poll() is None, f"run ended before the signal: {proc.stderr.read().decode()[-2000:]}"
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(cmd, proc.returncode, "", err.decode())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_exits_143_and_resumes_exactly(tiny_cache, tmp_path):
    sig = signal.SIGTERM
    args = tiny_args(tiny_cache, "--epochs", "3", "--batch-size", "2", "--queue-size", "8", "--seed", "5",
                     "--workers", "1")
    _run(args, tmp_path / "full")
    steps = load_checkpoint(tmp_path / "full" / "last.pt")["step"]
    per_epoch = steps // 3

    run = tmp_path / "preempted"

    def first_step_of_epoch_1() -> bool:
        return any(r["kind"] == "train" and r["epoch"] == 1 for r in _records(run))

    p = signal_when([sys.executable, "train/pretrain.py", *args, "--run-dir", str(run)], sig, first_step_of_epoch_1)
    assert p.returncode == EXIT_PREEMPTED, p.stderr[-3000:]
    assert f"stopped by {signal.Signals(sig).name}" in p.stderr and "--resume" in p.stderr
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    ck = load_checkpoint(run / "last.pt")
    periodic = [r["step"] for r in _records(run) if r["kind"] == "checkpoint" and r["batch"] == 0]
    assert ck["partial"] and ck["epoch"] == 1 and 0 < ck["batch"] < per_epoch, (ck["epoch"], ck["batch"])
    assert ck["step"] > max(periodic) == per_epoch, "the checkpoint is past the last periodic one"
    recs = _records(run)
    assert recs[-1]["kind"] == "preempted" and recs[-1]["step"] == ck["step"]
    assert any(r["kind"] == "checkpoint_written" and r["step"] == ck["step"] for r in recs), "written before exit"
    assert not any(r["kind"] == "final" for r in recs)

    _run(args, run, "--resume")
    _same_run(tmp_path / "full", run)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_stop_signals_are_recorded_can_be_turned_off_and_handlers_are_restored(name):
    sig = getattr(signal, name)
    before = signal.getsignal(sig)
    with Preemption(("SIGTERM", "SIGUSR1")) as p:
        assert signal.getsignal(sig) != before
        os.kill(os.getpid(), sig)
        time.sleep(0.01)
        assert p.requested and p.name == name
    assert signal.getsignal(sig) == before
    with Preemption(()) as off:
        assert off.numbers == [] and signal.getsignal(signal.SIGTERM) == before
