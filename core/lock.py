"""One writer per run directory: an advisory lock held by the running process.

Owns: ``RunLock`` (``fcntl.flock`` on ``<dir>/.lock``, taken before anything in the directory is
written; the file names the holder: PID, host, start time and command). The kernel drops the
lock when the process ends, however it ends, so a run killed with SIGKILL never blocks the
``--resume`` that follows; a second writer started while the first runs is refused with one line
(exit 2) naming the holder. Must not import torch or either stage.

Advisory locks hold between processes of one machine, and on network file systems that pass
flock through (NFSv4, Lustre and GPFS do); where they do not, two writers are not detected.
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
from pathlib import Path

from core.errors import ToolError

try:
    import fcntl
except ImportError:          # Windows: no advisory locks here; runs are not guarded
    fcntl = None

LOCK_NAME = ".lock"
_held: dict[str, "RunLock"] = {}     # path -> the lock this process holds (kept for its lifetime)


class RunInUseError(ToolError):
    """Another live process is writing this run directory."""


class RunLock:
    def __init__(self, directory: str | os.PathLike, what: str = "run directory"):
        self.dir, self.what = Path(directory), what
        self.path = self.dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise RunInUseError naming the holder. Idempotent in one process."""
        key = str(self.path.resolve())
        if key in _held:
            return _held[key]
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
                os.close(fd)
                raise RunInUseError(f"{self.dir}: this {self.what} is in use by another run ({holder}); wait for "
                                    f"it to end, stop it, or use another --run-dir. (The lock is released when "
                                    f"that process ends, even if it is killed.)") from None
        os.ftruncate(fd, 0)
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}, since {stamp}: "
                      f"{' '.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))}\n".encode(), 0)
        self._fd = fd
        _held[key] = self
        return self

    def release(self) -> None:
        if self._fd is not None:
            _held.pop(str(self.path.resolve()), None)
            os.close(self._fd)        # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
