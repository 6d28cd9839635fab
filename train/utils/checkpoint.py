"""Checkpoints: writing them atomically, reading them as data, and the background saver.

Owns: ``save_checkpoint`` (temp file in the same directory + os.replace, so a SIGKILL mid-save
leaves the previous last.pt intact), ``load_checkpoint`` (torch's weights-only unpickler; a file
that needs more is refused unless the user trusts it), ``backbone_weights`` (the backbone of any
supported file), ``clean_stale_temps``, and ``CheckpointSaver`` / ``to_host`` (one host snapshot,
written on a background thread). What goes *into* a checkpoint is the loop's business
(train/loop.py); how weights are matched to a backbone is the model's (train/models.py).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from core import atomic
from core.errors import ToolError


def save_checkpoint(obj: dict, path: str | os.PathLike) -> Path:
    """torch.save, atomically (core/atomic.py): readers and a resumed run see the old file
    or the new one, never a torn write."""
    with atomic.atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def clean_stale_temps(run_dir: Path) -> None:
    """Remove temp files left by a save that was killed (they are never valid checkpoints)."""
    for p in Path(run_dir).glob(".*.pt.*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()



class CheckpointError(ToolError):
    """A checkpoint that cannot be read, or is refused because reading it could run code."""


def load_checkpoint(path: str | os.PathLike, map_location="cpu", trust: bool = False):
    """Read a checkpoint as data: torch's weights-only unpickler (tensors and plain python
    values), which is all this project's checkpoints and torchvision's state dicts need.

    A pickle that needs more (arbitrary python objects, e.g. an ``argparse.Namespace`` kept by
    another codebase, or code planted in a downloaded file) is refused with CheckpointError,
    unless ``trust`` (the scripts' ``--trust-checkpoint``, for that file) allows the full
    unpickler, which runs whatever the file asks it to."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        needs = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
        if needs is None:          # a damaged or non-torch file, not a refused one
            detail = next((ln.split("error:")[-1].strip() for ln in str(e).splitlines() if "error:" in ln), "")
            raise CheckpointError(f"{path}: not a readable checkpoint ({detail or str(e).splitlines()[0]})") from None
        if not trust:
            raise CheckpointError(
                f"{path}: refused: reading it needs the full unpickler (for {needs.group(1)}), which can run code "
                f"stored in the file. This project's checkpoints and torchvision state dicts never need it; if you "
                f"trust where the file comes from, pass --trust-checkpoint") from None
    except (RuntimeError, EOFError, ValueError) as e:   # not a torch file, truncated, damaged zip
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'empty'})") from None
    print(f"[checkpoint] {path}: --trust-checkpoint: unpickling fully", file=sys.stderr)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None


def backbone_weights(obj, source: str | os.PathLike = "checkpoint") -> tuple[dict, dict]:
    """(backbone state dict, info) of a loaded checkpoint. info: {"kind": "pretrain" | "finetune"
    | "state_dict", and for this project's checkpoints backbone_name, dataset, epoch, step, norm,
    "checkpoint": the whole dict}. CheckpointError naming `source` for anything else."""
    if isinstance(obj, dict) and obj.get("kind") in ("pretrain", "finetune"):
        sd = obj.get("backbone") or obj.get("model")
        if not isinstance(sd, dict):
            raise CheckpointError(f"{source}: a {obj['kind']} checkpoint without 'backbone' or 'model' weights")
        norm = obj.get("norm") or (obj.get("mac") or {}).get("norm") or (obj.get("config") or {}).get("norm")
        return sd, {"kind": obj["kind"], "backbone_name": obj.get("backbone_name"), "dataset": obj.get("dataset"),
                    "epoch": obj.get("epoch"), "step": obj.get("step"), "norm": norm, "checkpoint": obj}
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "backbone"):      # common wrappers of foreign checkpoints
            if isinstance(obj.get(key), dict) and any(torch.is_tensor(v) for v in obj[key].values()):
                return obj[key], {"kind": "state_dict"}
        if obj and any(torch.is_tensor(v) for v in obj.values()):
            return obj, {"kind": "state_dict"}
    raise CheckpointError(f"{source}: not a state dict or checkpoint ({type(obj).__name__}); expected this "
                          f"project's checkpoint or a torchvision-format state dict")



def to_host(obj, _memo: dict | None = None):
    """A copy of a (nested) checkpoint with every tensor cloned to CPU: what the background writer
    saves while training goes on changing the live tensors.

    Each storage is copied once, and tensors that share one (a checkpoint's ``backbone`` and
    ``moco.queue`` entries are the model's own tensors) come back as views of the same host copy,
    so ``torch.save`` writes it once, as it would the live checkpoint (a MAC-SC R(2+1)D-18 save:
    ~160 MB less to copy and write)."""
    memo = {} if _memo is None else _memo
    if torch.is_tensor(obj):
        t = obj.detach()
        if t.layout != torch.strided or t.is_quantized or t.is_conj() or t.is_neg():
            return t.to("cpu", copy=True)
        st = t.untyped_storage()
        key = (t.device, st.data_ptr(), st.nbytes())
        if key not in memo or st.nbytes() == 0:
            whole = torch.empty(0, dtype=torch.uint8, device=t.device).set_(st)
            memo[key] = whole.to("cpu", copy=True).untyped_storage()
        return torch.empty(0, dtype=t.dtype).set_(memo[key], t.storage_offset(), t.size(), t.stride())
    if isinstance(obj, dict):
        return {k: to_host(v, memo) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(v, memo) for v in obj)
    return obj


class CheckpointSaver:
    """last.pt at every save, epoch_XXXX.pt every `save_every` finished epochs, best.pt when told.

    With `background` the state is copied to host memory in the caller (the only pause in
    training) and written by one writer thread; a save waits for the previous write, and
    ``close()`` for the last. Writes are atomic (``save_checkpoint``)."""

    def __init__(self, run_dir: Path, save_every: int = 0, background: bool = True, enabled: bool = True,
                 on_written: Callable[[dict], None] | None = None):
        self.run_dir, self.save_every, self.background, self.enabled = Path(run_dir), save_every, background, enabled
        self.on_written = on_written
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def paths(self, epoch_done: int, partial: bool, is_best: bool) -> list[Path]:
        out = [self.run_dir / "last.pt"]
        if is_best:
            out.append(self.run_dir / "best.pt")
        if self.save_every and not partial and epoch_done % self.save_every == 0:
            out.append(self.run_dir / f"epoch_{epoch_done:04d}.pt")
        return out

    def save(self, ck: dict, epoch_done: int, partial: bool, is_best: bool = False) -> float:
        """Save `ck`; returns the seconds training was paused."""
        if not self.enabled:
            return 0.0
        t0 = time.perf_counter()
        self.wait()
        paths = self.paths(epoch_done, partial, is_best)
        if not self.background:
            self._write(ck, paths, t0)
            return time.perf_counter() - t0
        host = to_host(ck)
        self._thread = threading.Thread(target=self._write, args=(host, paths, time.perf_counter()),
                                        name="checkpoint-writer", daemon=False)
        self._thread.start()
        return time.perf_counter() - t0

    def _write(self, ck: dict, paths: list[Path], t0: float) -> None:
        try:
            for p in paths:
                save_checkpoint(ck, p)
            if self.on_written is not None:
                self.on_written({"epoch": ck.get("epoch"), "step": ck.get("step"),
                                 "write_seconds": round(time.perf_counter() - t0, 4),
                                 "files": [p.name for p in paths]})
        except BaseException as e:      # re-raised in the training thread by wait()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    close = wait
