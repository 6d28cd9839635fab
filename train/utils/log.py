"""Run records: the run directory with config.json and its provenance, metrics.jsonl, TensorBoard.

Owns: ``prepare_run_dir`` (config.json: the resolved flags, git commit, argv, world size, torch
and device; a resumed run keeps the previous one as config.prev.json), ``MetricsLog`` (append-only
metrics.jsonl on rank 0, flushed per record, optionally mirrored to TensorBoard), ``read_metrics``
and ``git_commit``. Must not decide what is logged: the loops do.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from core import atomic
from core.flags import config_dict
from core.lock import RunInUseError, RunLock
from train.utils.checkpoint import clean_stale_temps
from train.utils.distributed import Dist, barrier, gather_objects


REPO_ROOT = Path(__file__).resolve().parents[2]


def git_commit() -> dict:
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD") or None,
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def prepare_run_dir(run_dir: str | os.PathLike, cfg, d: Dist, extra: dict | None = None) -> Path:
    """Create the run dir and write config.json (rank 0): the resolved config plus provenance.
    A resumed run rewrites it; the previous one is kept as config.prev.json. First the run
    directory's lock is taken (held until the process ends): a second writer is refused."""
    run_dir = Path(run_dir)
    refused = None
    if d.is_main:        # one writer per run directory (core/lock.py), before anything is written
        try:
            RunLock(run_dir).acquire()
        except RunInUseError as e:
            refused = str(e)
    refused = gather_objects(refused, d)[0]     # collective: every rank stops with rank 0's message
    if refused:
        raise RunInUseError(refused)
    if d.is_main:
        clean_stale_temps(run_dir)
        out = {"config": config_dict(cfg), "git": git_commit(), "argv": sys.argv,
               "world_size": d.world_size, "torch": torch.__version__,
               "device": str(d.device) if d.device.type == "cpu" else torch.cuda.get_device_name(d.device),
               "time": datetime.datetime.now().isoformat(timespec="seconds"), **(extra or {})}
        cj = run_dir / "config.json"
        if cj.exists():
            os.replace(cj, run_dir / "config.prev.json")
        atomic.write_json(cj, out)
    barrier(d)
    return run_dir


class MetricsLog:
    """Append-only metrics.jsonl (rank 0 only); one JSON object per line, flushed each write so
    a killed run keeps everything it logged.

    With ``tensorboard`` (the trainers' ``--tensorboard``) every numeric scalar of a record that
    has a step is also written to TensorBoard under ``<kind>/<key>`` (``train/loss``,
    ``epoch/pretext_acc``, ...) in ``<run-dir>/tb``: the same numbers, where researchers watch
    runs. metrics.jsonl stays the record the reports read."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True, tensorboard: bool = False):
        self.path = Path(path)
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            self._tb = tensorboard_writer(self.path.parent / "tb")

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (those of an epoch that a resumed run redoes), so the
        log reads as one uninterrupted run."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic.write_text(self.path, "".join(json.dumps(r, default=_json_default) + "\n" for r in keep))

    def write(self, **rec) -> None:
        if not self.enabled:
            return
        rec = {"time": round(time.time(), 3), **rec}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")
            f.flush()
        if self._tb is not None and isinstance(rec.get("step"), int):
            kind = rec.get("kind", "metrics")
            for key, value in rec.items():
                if key in ("time", "step", "kind", "epoch") or isinstance(value, bool):
                    continue
                if isinstance(value, (int, float, np.integer, np.floating)) and np.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", float(value), rec["step"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def tensorboard_writer(log_dir: Path):
    """torch's SummaryWriter, or a ToolError saying how to get it (tensorboard is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from core.errors import ToolError
        raise ToolError("--tensorboard needs the tensorboard package (pip install tensorboard); "
                        "metrics.jsonl has the same numbers") from None
    return SummaryWriter(log_dir=str(log_dir))


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.item() if o.numel() == 1 else o.tolist()
    return str(o)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

