"""One writer per run directory (core/lock.py): a second pretrain.py into a running run is refused
with one line naming the holder, without touching the directory; after SIGKILL the lock is gone
and --resume runs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from core.errors import EXIT_USAGE
from core.lock import RunInUseError, RunLock
from tests.test_loop import ENV, REPO
from tests.test_pretrain import tiny_args, tiny_cache  # noqa: F401 (fixture)

HOLD = """
import sys, time
from core.lock import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_process_is_refused_and_a_killed_holder_frees_the_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUseError, match=rf"in use by another run \(PID {holder.pid} on "):
            RunLock(tmp_path / "run").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(tmp_path / "run") as lock:          # the kernel released it with the process
        assert lock.path.read_text().startswith(f"PID {os.getpid()} on ")


@pytest.mark.slow
def test_second_pretrain_into_a_running_run_is_refused_then_resume_after_sigkill(tiny_cache, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "train/pretrain.py", *tiny_args(tiny_cache, "--epochs", "200", "--batch-size", "2",
                                                             "--queue-size", "8"), "--run-dir", str(run)]
    first = subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "metrics.jsonl").exists():
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        config_before = (run / "config.json").read_bytes()
        second = subprocess.run([*args, "--resume"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == EXIT_USAGE, second.stderr[-2000:]
        assert second.stderr.count("\n") == 1 and f"in use by another run (PID {first.pid} on " in second.stderr
        assert (run / "config.json").read_bytes() == config_before and not (run / "config.prev.json").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    again = subprocess.run([*args, "--resume", "--max-steps", "2"], cwd=REPO, env=ENV, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
