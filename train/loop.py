"""The training loop pretraining and finetuning share: ``fit`` with a ``Task``, and the
``PrefetchLoader`` (timm's train_one_epoch / PrefetchLoader); checkpoints are written by
``train.utils.checkpoint.CheckpointSaver``.

A script builds its data, model and optimiser, then hands ``fit`` a Task with what is its own:
``prepare`` (a CPU batch -> the device batch: the MAC transform, or the finetuning clip
transform), ``step`` (forward and loss terms: "loss" plus anything to log), ``end_epoch``
(evaluation, best-model tracking, warnings) and ``checkpoint`` (its checkpoint fields). ``fit``
does the rest, identically for both: epochs and steps, backward, gradient clipping, the
non-finite guard, the optimiser and scheduler, metric windows and epoch means (all-reduced),
metrics.jsonl, the progress bar, checkpoints and resume.

Keeping the GPU busy:
  - the DataLoader's workers are persistent, and the next epoch's iterator is started before the
    epoch-end evaluation and checkpoint, so its first batches are ready when training resumes;
  - ``PrefetchLoader`` runs ``prepare`` (host-to-device copy of pinned batches, the batched MAC
    transform) for batch i+1 on a side CUDA stream while step i computes;
  - ``CheckpointSaver`` copies the state to host memory (the only stall) and writes it from a
    background thread; every write is atomic (temp file + rename), so last.pt is always a whole
    checkpoint, even after a kill mid-write;
  - the first step's time (compilation included) is logged once (`kind: "first_step"`) and each
    checkpoint's stall and write times (`kind: "checkpoint"`).

Resume: a checkpoint holds the epoch, the batch reached within it (mid-epoch checkpoints come
from ``--save-every-min`` or a ``--max-steps`` stop), the partial sums of the epoch's metrics and
every rank's RNG state; samples are a pure function of (seed, epoch, index) and the loader skips
the batches already done, so a resumed run ends exactly where the uninterrupted one ends.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from core.errors import ToolError
from core.flags import config_dict
from train.utils.checkpoint import CheckpointSaver, load_checkpoint
from train.utils.distributed import Dist, all_reduce_sum, broadcast_buffers, gather_objects, param_hash, unwrap
from train.utils.guards import check_finite, out_of_memory
from train.utils.log import MetricsLog
from train.utils.random import derive_seed, gather_rng_states, restore_rng_states, seed_everything
from train.data import set_loader_epoch
from train.utils.preemption import Preempted, Preemption

Batch = Any


# ------------------------------------------------------------------------------------------
# Prefetching
# ------------------------------------------------------------------------------------------

class PrefetchLoader:
    """Iterate a DataLoader one batch ahead: ``inspect(cpu_batch)`` (host-side statistics), then
    ``prepare(cpu_batch)`` -> device batch, the latter on a side CUDA stream so that the copy and
    the transform of batch i+1 overlap step i. On CPU it prepares each batch in line.

    ``inspect`` may return a callable: it is called when that batch is handed to the loop (yield
    time), not when it is prepared, so whatever it counts covers exactly the batches the loop has
    received; a checkpoint after step i never counts batch i+1, which one-ahead preparation has
    already inspected (and which a resumed run trains on, and counts, again).

    ``start()`` creates the DataLoader's iterator at once (its workers start producing), which
    lets ``fit`` open the next epoch before the current one's evaluation and checkpoint."""

    lookahead_on_cpu = False     # tests: the one-ahead order of CUDA, without a stream

    def __init__(self, loader, device: torch.device, prepare: Callable[[Batch], Batch],
                 inspect: Callable[[Batch], Callable[[], None] | None] | None = None):
        self.loader, self.device = loader, torch.device(device)
        self.prepare, self.inspect = prepare, inspect
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.lookahead = self.stream is not None or self.lookahead_on_cpu

    def __len__(self) -> int:
        return len(self.loader)

    def start(self) -> Iterator[Batch]:
        return self._iterate(iter(self.loader))

    def __iter__(self) -> Iterator[Batch]:
        return self.start()

    def _prepare(self, batch: Batch) -> tuple[Batch, Callable[[], None] | None]:
        commit = self.inspect(batch) if self.inspect is not None else None
        return self.prepare(batch), (commit if callable(commit) else None)

    def _iterate(self, it) -> Iterator[Batch]:
        if not self.lookahead:
            for batch in it:
                out, commit = self._prepare(batch)
                if commit is not None:
                    commit()
                yield out
            return
        ready = None
        for batch in it:
            with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
                nxt = self._prepare(batch)
            if ready is not None:
                if ready[1] is not None:
                    ready[1]()
                yield ready[0]
            if self.stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(self.stream)
                _record_stream(nxt[0], torch.cuda.current_stream(self.device))
            ready = nxt
        if ready is not None:
            if ready[1] is not None:
                ready[1]()
            yield ready[0]


def _record_stream(obj, stream) -> None:
    """Tell the caching allocator that tensors made on the side stream are used on `stream`."""
    if torch.is_tensor(obj):
        if obj.is_cuda:
            obj.record_stream(stream)
    elif isinstance(obj, dict):
        for v in obj.values():
            _record_stream(v, stream)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _record_stream(v, stream)


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Task:
    """What a training script adds to ``fit`` (see the module docstring)."""

    kind: str                                            # "pretrain" | "finetune": checkpoints, logs
    prepare: Callable[[Batch], Batch]                    # CPU batch -> device batch
    step: Callable[[Batch, int], dict]                   # (device batch, global step) -> terms with "loss"
    checkpoint: Callable[[], dict]                       # the script's own checkpoint fields
    end_epoch: Callable[["EpochEnd"], "EpochResult"] | None = None
    inspect: Callable[[Batch], Any] | None = None        # CPU batch observer (before prepare); may return
                                                         # a callable run when the loop receives the batch
    train_mode: Callable[[], None] | None = None         # default: model.train()
    restore: Callable[[dict], None] | None = None        # the script's own state from a checkpoint
    epoch_start: Callable[[int, int], None] | None = None  # (epoch, batches already done)
    log_skip: tuple[str, ...] = ()                       # metric prefixes left out of the log line
    final: Callable[[], dict] | None = None               # fields of the run's final metrics.jsonl record


@dataclasses.dataclass
class EpochEnd:
    epoch: int
    step: int
    partial: bool
    metrics: dict          # epoch means of the logged terms, lr, epoch_time
    steps_done: int        # steps of this epoch over all ranks


@dataclasses.dataclass
class EpochResult:
    metrics: dict = dataclasses.field(default_factory=dict)      # added to the epoch's metrics
    record: dict = dataclasses.field(default_factory=dict)       # added to the metrics.jsonl record only
    is_best: bool = False
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class State:
    epoch: int = 0          # the epoch to run (or resume)
    batch: int = 0          # batches of that epoch already done (mid-epoch checkpoints)
    step: int = 0
    metrics: dict = dataclasses.field(default_factory=dict)
    sums: dict = dataclasses.field(default_factory=dict)      # the epoch's partial metric sums
    t_saved: float = 0.0


def resume(last: Path, model, opt, sched, cfg, d: Dist, log, task: Task) -> State:
    """Restore model, optimiser, scheduler, RNG states and the script's state from `last`."""
    ck = load_checkpoint(last)
    check_resumable(ck, last, cfg, d)
    unwrap(model).load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    restore_rng_states(ck.get("rng"), d)
    if task.restore is not None:
        task.restore(ck)
    changed = {k: (v, ck["config"].get(k)) for k, v in config_dict(cfg).items()
               if ck["config"].get(k) != v and k not in ("resume", "epochs", "progress", "workers", "save_every_min")}
    if changed:
        log(f"[{task.kind}] warning: resuming with a different config (now, then): {changed}")
    st = State(epoch=ck["epoch"], batch=int(ck.get("batch", 0)), step=ck["step"], metrics=ck.get("metrics", {}),
               sums=dict(ck.get("epoch_sums") or {}))
    where = f"epoch {st.epoch}" + (f", batch {st.batch}" if st.batch else "")
    log(f"[{task.kind}] resumed {last}: {where}, step {st.step}")
    return st


class ResumeRefused(ToolError):
    """A checkpoint this run cannot continue exactly (status 2, one line)."""


def check_resumable(ck: dict, last: Path, cfg, d: Dist) -> None:
    """A mid-epoch checkpoint continues at its batch index, which means the same samples only with
    the same world size and per-process batch (the sampler deals each rank its share of the
    epoch's permutation): refuse anything else. Epoch-boundary checkpoints resume at any size."""
    batch = int(ck.get("batch", 0) or 0)
    if not batch:
        return
    world = int(ck.get("world_size", d.world_size))
    per = int(ck.get("global_batch", world * cfg.batch_size)) // max(world, 1)
    where = f"epoch {ck.get('epoch')} batch {batch}"
    if world != d.world_size:
        raise ResumeRefused(
            f"{last} is a mid-epoch checkpoint ({where}) of {world} process(es); this run has {d.world_size}: "
            f"the rest of that epoch would be other samples. Resume it with {world} process(es) "
            f"(torchrun --nproc_per_node {world}, or the same nodes x GPUs), or at an epoch boundary")
    if per != cfg.batch_size:
        raise ResumeRefused(
            f"{last} is a mid-epoch checkpoint ({where}) at --batch-size {per} per process; this run has "
            f"--batch-size {cfg.batch_size}: the rest of that epoch would be other samples. Resume it with "
            f"--batch-size {per}, or at an epoch boundary")


def fit(*, cfg, d: Dist, model, params, opt, sched, loader, steps_per_epoch: int, run_dir: Path,
        task: Task, state: State, log=print) -> dict:
    """Train from `state` to cfg.epochs (or cfg.max_steps); returns the last epoch's metrics and
    the step. `cfg` provides epochs, max_steps, log_every, clip_grad, save_every, save_every_min,
    batch_size, seed and progress."""
    mlog = MetricsLog(run_dir / "metrics.jsonl", d.is_main, tensorboard=getattr(cfg, "tensorboard", False))
    mlog.truncate_after(state.step)     # forget what a killed run logged past its checkpoint
    saver = CheckpointSaver(run_dir, cfg.save_every, background=True, enabled=d.is_main,
                            on_written=lambda rec: mlog.write(kind="checkpoint_written", **rec))
    prefetch = PrefetchLoader(loader, d.device, task.prepare, task.inspect)
    clips_per_step = cfg.batch_size * d.world_size
    save_every_s = 60.0 * getattr(cfg, "save_every_min", 0.0)
    step, metrics = state.step, state.metrics
    first_step = step == 0
    # Under DDP a failure of rank 0's own work (metrics.jsonl, checkpoints) must reach every rank,
    # else the others wait in the next collective until the process-group timeout: the error is
    # kept, flagged in the next step's all-reduce (check_finite) or save, and raised on every rank.
    pending: list[BaseException] = []

    def record(**rec) -> None:
        if not d.distributed:
            mlog.write(**rec)
            return
        try:
            mlog.write(**rec)
        except Exception as e:      # noqa: BLE001 - raised on every rank at the next agreement
            pending[:] = pending or [e]

    def save(epoch: int, batch: int, sums: dict, is_best: bool = False, rng: list | None = None) -> None:
        """Checkpoint after `batch` batches of `epoch` (batch == steps_per_epoch: the epoch is done).
        `rng`: the RNG states to store (default: now); collective, every rank takes part."""
        rng = rng if rng is not None else gather_rng_states(d)
        done = batch >= steps_per_epoch
        err = pending[0] if pending else None
        if d.is_main and err is None:
            try:
                ck = {"kind": task.kind, "config": config_dict(cfg), "model": unwrap(model).state_dict(),
                      "epoch": epoch + 1 if done else epoch, "batch": 0 if done else batch, "step": step,
                      "partial": not done, "epoch_sums": {} if done else sums, "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(), "scaler": None, "rng": rng, "world_size": d.world_size,
                      "global_batch": clips_per_step, "metrics": metrics, **task.checkpoint()}
                paused = saver.save(ck, ck["epoch"], not done, is_best)   # raises a failed previous write
                mlog.write(kind="checkpoint", epoch=ck["epoch"], batch=ck["batch"], step=step,
                           seconds=round(paused, 4))
            except Exception as e:      # noqa: BLE001 - re-raised below, on every rank
                err = e
        raise_together(err, d, "saving a checkpoint")

    stopped = bool(cfg.max_steps and step >= cfg.max_steps)
    preempt = Preemption(getattr(cfg, "stop_signals", ()), log=log)
    preempted = False
    nxt = None
    try:
        preempt.__enter__()
        for epoch in range(state.epoch, cfg.epochs):
            if stopped:
                break
            start_batch = state.batch if epoch == state.epoch else 0
            sums = dict(state.sums) if epoch == state.epoch else {}
            n_done = start_batch
            # dropout etc.: f(seed, epoch, rank); a mid-epoch resume restored the exact RNG state instead
            if not start_batch:
                seed_everything(derive_seed(cfg.seed, epoch, d.rank))
            if nxt is None:
                set_loader_epoch(loader, epoch, start_batch)
                nxt = prefetch.start()
            it, nxt = nxt, None
            if task.epoch_start is not None:
                task.epoch_start(epoch, start_batch)
            (task.train_mode or model.train)()
            t_epoch = time.perf_counter()
            win, win_n, data_t = {}, 0, 0.0
            t_win = t_last = t_saved = time.perf_counter()
            bar = tqdm(total=steps_per_epoch, initial=start_batch, desc=f"epoch {epoch}",
                       disable=not (d.is_main and cfg.progress), dynamic_ncols=True, leave=False)
            for batch in (it if n_done < steps_per_epoch else ()):
                data_t += time.perf_counter() - t_last
                t_step = time.perf_counter()
                try:
                    terms = task.step(batch, step)
                    opt.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                except torch.OutOfMemoryError as e:
                    raise out_of_memory(e, d.device, cfg.batch_size) from None
                terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad or float("inf"))
                # one sync per step; a non-finite step is never applied
                if check_finite({k: v for k, v in terms.items() if k.startswith(("loss", "grad"))}, epoch, step, d,
                                failed=bool(pending)):
                    raise_together(pending[0] if pending else None, d, "writing metrics.jsonl")
                opt.step()
                step, n_done, win_n = step + 1, n_done + 1, win_n + 1
                if first_step:
                    first_step = False
                    record(kind="first_step", step=step, seconds=round(time.perf_counter() - t_step, 4),
                           compile=bool(getattr(cfg, "compile", False)))
                for k, v in terms.items():
                    win[k] = win.get(k, 0.0) + v.detach().float()
                stopped = bool(cfg.max_steps and step >= cfg.max_steps)
                # a stop signal: this step is done; under DDP the ranks agree at window boundaries
                if preempt.numbers and (not d.distributed or step % cfg.log_every == 0 or n_done == steps_per_epoch):
                    preempted = _agree_any(preempt.requested, d)
                    stopped = stopped or preempted
                bar.update(1)
                if step % cfg.log_every == 0 or n_done == steps_per_epoch or stopped:
                    vals = window_means(win, win_n)     # one sync per window
                    wall = time.perf_counter() - t_win
                    for k, v in vals.items():
                        sums[k] = sums.get(k, 0.0) + v * win_n
                    record(kind="train", epoch=epoch, step=step, **vals, lr=opt.param_groups[0]["lr"],
                           data_time=data_t / win_n, step_time=wall / win_n,
                           clips_per_s=win_n * clips_per_step / max(wall, 1e-9), **_memory(d))
                    bar.set_postfix(loss=f"{vals['loss']:.3f}", **({"acc": f"{vals['acc']:.3f}"} if "acc" in vals else {}))
                    win, win_n, data_t, t_win = {}, 0, 0.0, time.perf_counter()
                    if (save_every_s and n_done < steps_per_epoch and not stopped
                            and _agree(time.perf_counter() - t_saved >= save_every_s, d)):
                        save(epoch, n_done, sums)        # mid-epoch: at a window boundary (sums complete)
                        t_saved = time.perf_counter()
                t_last = time.perf_counter()
                if stopped or n_done >= steps_per_epoch:
                    break
            bar.close()
            partial = n_done < steps_per_epoch           # only a --max-steps stop cuts an epoch
            if not partial and epoch + 1 < cfg.epochs and not stopped:
                set_loader_epoch(loader, epoch + 1)      # workers prepare the next epoch meanwhile
                nxt = prefetch.start()
            keys = sorted(sums)
            tot = all_reduce_sum([sums[k] for k in keys] + [n_done], d)
            metrics = {"epoch": epoch, "step": step, **{k: v / max(tot[-1], 1) for k, v in zip(keys, tot)},
                       "lr": opt.param_groups[0]["lr"], "epoch_time": time.perf_counter() - t_epoch}
            # a partial epoch continues where it stopped: its RNG states are those after its last step
            rng = gather_rng_states(d) if partial else None
            broadcast_buffers(model, d)        # every rank evaluates / saves rank 0's BN statistics
            if not partial:
                sched.step()
            # a preempted partial epoch is saved at once (no evaluation: the grace period is short)
            end = task.end_epoch if not (preempted and partial) else None
            res = end(EpochEnd(epoch, step, partial, metrics, int(tot[-1]))) if end else EpochResult()
            metrics.update(res.metrics)
            record(kind="epoch", **metrics, partial=partial, **res.record)
            log(f"[{task.kind}] epoch {epoch} step {step}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and not k.startswith(task.log_skip)))
            for msg in res.warnings:
                log(f"[{task.kind}] {msg}")
                record(kind="warning", epoch=epoch, step=step, message=msg)
            save(epoch, n_done, sums, res.is_best, rng)
        err = None
        if d.is_main:            # the last checkpoint is on disk before anything below
            try:
                saver.close()
            except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
                err = e
        raise_together(err, d, "writing the last checkpoint")
    finally:
        preempt.__exit__()
        with contextlib.suppress(Exception):   # after an error: the writer is done, the error is the first one
            saver.close()
    if preempted:
        mlog.write(kind="preempted", epoch=epoch, step=step, signal=preempt.name or "another rank's")
        mlog.close()
        raise Preempted(f"stopped by {preempt.name or 'a stop signal on another rank'} at epoch {epoch} step {step}: "
                        f"checkpoint {run_dir / 'last.pt'} written; rerun the same command with --resume to "
                        f"continue exactly")
    digests = gather_objects(param_hash(model), d)   # every rank must hold the same model
    err = None
    if d.is_main:
        try:
            mlog.write(kind="final", epoch=cfg.epochs, step=step, rank_param_hashes=digests,
                       **(task.final() if task.final else {}))
        except Exception as e:      # noqa: BLE001 - re-raised below, on every rank
            err = e
    raise_together(err, d, "writing the final record")
    mlog.close()
    if len(set(digests)) != 1:   # every rank holds the digests: every rank stops
        raise RuntimeError(f"ranks disagree on the parameters: {digests}")
    return {"step": step, "metrics": metrics}


def window_means(win: dict, n: int) -> dict[str, float]:
    """The window's summed terms / n, read back in one transfer."""
    dev = next((v.device for v in win.values() if torch.is_tensor(v)), torch.device("cpu"))
    stacked = torch.stack([v.reshape(()) if torch.is_tensor(v) else torch.full((), float(v), device=dev)
                           for v in win.values()])
    return {k: v / n for k, v in zip(win, stacked.tolist())}


def _agree_any(flag: bool, d: Dist) -> bool:
    """True on every rank when it is True on any (a stop signal may reach the ranks apart)."""
    if not d.distributed:
        return flag
    return all_reduce_sum([float(flag)], d)[0] > 0


def _agree(flag: bool, d: Dist) -> bool:
    """Rank 0's decision, for every rank (a save is collective)."""
    if not d.distributed:
        return flag
    return bool(gather_objects(flag, d)[0])


def _memory(d: Dist) -> dict:
    """Peak and current allocation (the allocator's counters: no sync). A leak shows as a
    growing memory_gb from one epoch to the next."""
    if d.device.type != "cuda":
        return {}
    return {"max_memory_gb": round(torch.cuda.max_memory_allocated(d.device) / 2**30, 3),
            "memory_gb": round(torch.cuda.memory_allocated(d.device) / 2**30, 3)}


class RankFailed(ToolError):
    """Another rank failed where every rank must agree (a checkpoint write, say): this rank stops
    with its message instead of waiting in the next collective until the process-group timeout."""


def raise_together(err: BaseException | None, d: Dist, what: str) -> None:
    """Re-raise `err` (this rank's failure, or None) on this rank, and on every other rank a
    RankFailed naming the failed rank and its message: collective, every rank calls it."""
    if not d.distributed:
        if err is not None:
            raise err
        return
    msgs = gather_objects(None if err is None else f"{type(err).__name__}: {err}", d)
    if err is not None:
        raise err
    failed = [(r, m) for r, m in enumerate(msgs) if m]
    if failed:
        r, m = failed[0]
        raise RankFailed(f"rank {r} failed {what} ({m}); every rank stops: the last checkpoint written is kept, "
                         f"rerun with --resume once the cause is fixed")
