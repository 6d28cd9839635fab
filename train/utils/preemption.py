"""Preemption: a cluster's "stop soon" signal (SLURM sends SIGTERM, or with ``--signal`` SIGUSR1,
then waits its grace period before SIGKILL) turned into a clean stop of the training loop.

Owns: ``Preemption`` (installs the handlers for the run's ``--stop-signals``, records the first
signal, restores the previous handlers on exit), ``ignore_in_workers`` (DataLoader workers ignore
those signals, which a scheduler sends to every process of the job: the main process stops them
itself once its checkpoint is written) and ``Preempted`` (what the loop raises after that
checkpoint; ``core.errors.run`` turns it into exit status 143). Must not save anything itself: the
loop finishes the current step, writes a mid-epoch checkpoint through its saver and flushes
metrics.jsonl, so ``--resume`` continues bit for bit.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Sequence

from core.errors import Preempted  # noqa: F401 (re-exported: the loop raises it)

STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


def signal_numbers(names: Sequence[str]) -> list[int]:
    out = []
    for n in names:
        sig = getattr(signal, n, None)
        if sig is None:
            raise ValueError(f"{n}: not a signal on this platform")
        out.append(int(sig))
    return out


class Preemption:
    """``with Preemption(("SIGTERM", "SIGUSR1")) as p: ... if p.requested: stop``. Only the main
    thread can install handlers; elsewhere (a test calling the loop from a thread) it does nothing."""

    def __init__(self, names: Sequence[str] = STOP_SIGNALS, log=None):
        self.numbers = signal_numbers(names)
        self.signal: int | None = None
        self._old: dict[int, object] = {}
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signum
            self._log(f"[preempt] {signal.Signals(signum).name} received: finishing the current step, then "
                      f"writing a checkpoint and exiting (resume with --resume)")

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            for n in self.numbers:
                self._old[n] = signal.signal(n, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for n, old in self._old.items():
            signal.signal(n, old)
        self._old.clear()


def ignore_in_workers(names: Sequence[str] = STOP_SIGNALS) -> None:
    """In a DataLoader worker: ignore the stop signals (the main process ends the workers)."""
    for n in signal_numbers(names):
        signal.signal(n, signal.SIG_IGN)
