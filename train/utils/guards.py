"""The divergence guard: stop at the first non-finite loss or gradient, naming the step and terms.

Owns: ``check_finite``, ``out_of_memory`` (one device sync per call; under DDP the verdict is all-reduced so every
rank stops at the same step) and ``NonFiniteLossError``. Must not save or delete checkpoints.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.distributed as dist

from core.errors import ToolError
from train.utils.distributed import Dist


class NonFiniteLossError(ToolError):
    """A diverged run: a user's problem (the learning rate, the data), status 2 with the step,
    the terms and the advice; the step is never applied and no checkpoint is written after it."""


class OutOfMemory(ToolError):
    """The device ran out of memory: status 2 with the batch size and what to change."""


def out_of_memory(e: BaseException, device, batch_size: int) -> OutOfMemory:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return OutOfMemory(f"out of memory on {device} at --batch-size {batch_size} per process ({first}). Lower "
                       f"--batch-size (and scale --lr with it), keep --bf16 on, or spread the batch over more GPUs "
                       f"with torchrun; the last checkpoint is kept, so --resume continues from it")


def check_finite(terms: Mapping[str, torch.Tensor | float], epoch: int, step: int,
                 d: Dist | None = None, failed: bool = False) -> bool:
    """Stop at the first NaN/inf, naming the step and every loss term (a diverged run should
    fail loudly, not write garbage checkpoints). Under DDP the verdict is all-reduced so every
    rank stops at the same step instead of the healthy ones hanging in the next collective.
    One device sync per call, DDP or not (the values and the all-reduced flag are read back
    together): cheap next to a 3D-CNN step.

    Under DDP the same all-reduce carries `failed` (this rank has an error the others must learn
    of, see train/loop.py); returns whether any rank set it (always False on one process)."""
    dev = next((v.device for v in terms.values() if torch.is_tensor(v)), torch.device("cpu"))
    # python numbers become device scalars by a fill (no host-to-device copy)
    vals_t = torch.stack([v.detach().float().reshape(()) if torch.is_tensor(v) else
                          torch.full((), float(v), device=dev) for v in terms.values()])
    distributed = d is not None and d.distributed
    if distributed:
        flag_t = torch.stack([(~torch.isfinite(vals_t)).any().float(),
                              torch.full((), float(failed), device=vals_t.device)])
        dist.all_reduce(flag_t)                                 # on the device: no read yet
        vals_t = torch.cat([vals_t, flag_t])
    read = vals_t.tolist()                                      # the one sync
    vals = dict(zip(terms, read))
    if distributed and read[-1]:
        return True            # a failure elsewhere: the caller raises it on every rank
    if distributed:
        read = read[:-1]
    bad = not all(math.isfinite(v) for v in vals.values())
    if distributed and read[-1] and not bad:
        raise NonFiniteLossError(f"non-finite loss on another rank at epoch {epoch} step {step} "
                                 f"(this rank {d.rank}: " + ", ".join(f"{k}={v:.6g}" for k, v in vals.items()) + ")")
    if bad:
        desc = ", ".join(f"{k}={v:.6g}" for k, v in vals.items())
        raise NonFiniteLossError(
            f"non-finite loss or gradient at epoch {epoch} step {step}: {desc}. The step was not applied and "
            f"the last good checkpoint is kept (never overwritten with these weights). Lower --lr, check the "
            f"inputs, or resume from the last good checkpoint with --resume.")
    return False
