"""The training loop pretraining and finetuning share: ``fit`` with a ``Task``, the
``CheckpointSaver`` and the ``PrefetchLoader`` (timm's train_one_epoch / CheckpointSaver /
PrefetchLoader, in one small module).

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

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from train import engine as E
from train.data import set_loader_epoch

Batch = Any


# ------------------------------------------------------------------------------------------
# Prefetching
# ------------------------------------------------------------------------------------------

class PrefetchLoader:
    """Iterate a DataLoader one batch ahead: ``inspect(cpu_batch)`` (host-side statistics), then
    ``prepare(cpu_batch)`` -> device batch, the latter on a side CUDA stream so that the copy and
    the transform of batch i+1 overlap step i. On CPU it prepares each batch in line.

    ``start()`` creates the DataLoader's iterator at once (its workers start producing), which
    lets ``fit`` open the next epoch before the current one's evaluation and checkpoint."""

    def __init__(self, loader, device: torch.device, prepare: Callable[[Batch], Batch],
                 inspect: Callable[[Batch], None] | None = None):
        self.loader, self.device = loader, torch.device(device)
        self.prepare, self.inspect = prepare, inspect
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __len__(self) -> int:
        return len(self.loader)

    def start(self) -> Iterator[Batch]:
        return self._iterate(iter(self.loader))

    def __iter__(self) -> Iterator[Batch]:
        return self.start()

    def _prepare(self, batch: Batch) -> Batch:
        if self.inspect is not None:
            self.inspect(batch)
        return self.prepare(batch)

    def _iterate(self, it) -> Iterator[Batch]:
        if self.stream is None:
            for batch in it:
                yield self._prepare(batch)
            return
        ready = None
        for batch in it:
            with torch.cuda.stream(self.stream):
                nxt = self._prepare(batch)
            if ready is not None:
                yield ready
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            _record_stream(nxt, torch.cuda.current_stream(self.device))
            ready = nxt
        if ready is not None:
            yield ready


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
# Checkpoints
# ------------------------------------------------------------------------------------------

def to_host(obj):
    """A copy of a (nested) checkpoint with every tensor cloned to CPU: what the background writer
    saves while training goes on changing the live tensors."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(v) for v in obj)
    return obj


class CheckpointSaver:
    """last.pt at every save, epoch_XXXX.pt every `save_every` finished epochs, best.pt when told.

    With `background` the state is copied to host memory in the caller (the only pause in
    training) and written by one writer thread; a save waits for the previous write, and
    ``close()`` for the last. Writes are atomic (``engine.save_checkpoint``)."""

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
                E.save_checkpoint(ck, p)
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
    inspect: Callable[[Batch], None] | None = None       # CPU batch observer (before prepare)
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


def resume(last: Path, model, opt, sched, cfg, d: E.Dist, log, task: Task) -> State:
    """Restore model, optimiser, scheduler, RNG states and the script's state from `last`."""
    ck = E.load_checkpoint(last)
    E.unwrap(model).load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    E.restore_rng_states(ck.get("rng"), d)
    if task.restore is not None:
        task.restore(ck)
    changed = {k: (v, ck["config"].get(k)) for k, v in E.config_dict(cfg).items()
               if ck["config"].get(k) != v and k not in ("resume", "epochs", "progress", "workers", "save_every_min")}
    if changed:
        log(f"[{task.kind}] warning: resuming with a different config (now, then): {changed}")
    st = State(epoch=ck["epoch"], batch=int(ck.get("batch", 0)), step=ck["step"], metrics=ck.get("metrics", {}),
               sums=dict(ck.get("epoch_sums") or {}))
    where = f"epoch {st.epoch}" + (f", batch {st.batch}" if st.batch else "")
    log(f"[{task.kind}] resumed {last}: {where}, step {st.step}")
    return st


def fit(*, cfg, d: E.Dist, model, params, opt, sched, loader, steps_per_epoch: int, run_dir: Path,
        task: Task, state: State, log=print) -> dict:
    """Train from `state` to cfg.epochs (or cfg.max_steps); returns the last epoch's metrics and
    the step. `cfg` provides epochs, max_steps, log_every, clip_grad, save_every, save_every_min,
    batch_size, seed and progress."""
    mlog = E.MetricsLog(run_dir / "metrics.jsonl", d.is_main)
    mlog.truncate_after(state.step)     # forget what a killed run logged past its checkpoint
    saver = CheckpointSaver(run_dir, cfg.save_every, background=True, enabled=d.is_main,
                            on_written=lambda rec: mlog.write(kind="checkpoint_written", **rec))
    prefetch = PrefetchLoader(loader, d.device, task.prepare, task.inspect)
    clips_per_step = cfg.batch_size * d.world_size
    save_every_s = 60.0 * getattr(cfg, "save_every_min", 0.0)
    step, metrics = state.step, state.metrics
    first_step = step == 0

    def save(epoch: int, batch: int, sums: dict, is_best: bool = False, rng: list | None = None) -> None:
        """Checkpoint after `batch` batches of `epoch` (batch == steps_per_epoch: the epoch is done).
        `rng`: the RNG states to store (default: now); collective, every rank takes part."""
        rng = rng if rng is not None else E.gather_rng_states(d)
        done = batch >= steps_per_epoch
        if not d.is_main:
            return
        ck = {"kind": task.kind, "config": E.config_dict(cfg), "model": E.unwrap(model).state_dict(),
              "epoch": epoch + 1 if done else epoch, "batch": 0 if done else batch, "step": step,
              "partial": not done, "epoch_sums": {} if done else sums, "optimizer": opt.state_dict(),
              "scheduler": sched.state_dict(), "scaler": None, "rng": rng, "world_size": d.world_size,
              "global_batch": clips_per_step, "metrics": metrics, **task.checkpoint()}
        paused = saver.save(ck, ck["epoch"], not done, is_best)
        mlog.write(kind="checkpoint", epoch=ck["epoch"], batch=ck["batch"], step=step, seconds=round(paused, 4))

    stopped = bool(cfg.max_steps and step >= cfg.max_steps)
    nxt = None
    try:
        for epoch in range(state.epoch, cfg.epochs):
            if stopped:
                break
            start_batch = state.batch if epoch == state.epoch else 0
            sums = dict(state.sums) if epoch == state.epoch else {}
            n_done = start_batch
            # dropout etc.: f(seed, epoch, rank); a mid-epoch resume restored the exact RNG state instead
            if not start_batch:
                E.seed_everything(E.derive_seed(cfg.seed, epoch, d.rank))
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
                terms = task.step(batch, step)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad or float("inf"))
                # one sync per step; a non-finite step is never applied
                E.check_finite({k: v for k, v in terms.items() if k.startswith(("loss", "grad"))}, epoch, step, d)
                opt.step()
                step, n_done, win_n = step + 1, n_done + 1, win_n + 1
                if first_step:
                    first_step = False
                    mlog.write(kind="first_step", step=step, seconds=round(time.perf_counter() - t_step, 4),
                               compile=bool(getattr(cfg, "compile", False)))
                for k, v in terms.items():
                    win[k] = win.get(k, 0.0) + v.detach().float()
                stopped = bool(cfg.max_steps and step >= cfg.max_steps)
                bar.update(1)
                if step % cfg.log_every == 0 or n_done == steps_per_epoch or stopped:
                    vals = {k: float(v) / win_n for k, v in win.items()}   # one sync per window
                    wall = time.perf_counter() - t_win
                    for k, v in vals.items():
                        sums[k] = sums.get(k, 0.0) + v * win_n
                    mlog.write(kind="train", epoch=epoch, step=step, **vals, lr=opt.param_groups[0]["lr"],
                               data_time=data_t / win_n, step_time=wall / win_n,
                               clips_per_s=win_n * clips_per_step / max(wall, 1e-9),
                               **_memory(d))
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
            tot = E.all_reduce_sum([sums[k] for k in keys] + [n_done], d)
            metrics = {"epoch": epoch, "step": step, **{k: v / max(tot[-1], 1) for k, v in zip(keys, tot)},
                       "lr": opt.param_groups[0]["lr"], "epoch_time": time.perf_counter() - t_epoch}
            # a partial epoch continues where it stopped: its RNG states are those after its last step
            rng = E.gather_rng_states(d) if partial else None
            E.broadcast_buffers(model, d)        # every rank evaluates / saves rank 0's BN statistics
            if not partial:
                sched.step()
            res = task.end_epoch(EpochEnd(epoch, step, partial, metrics, int(tot[-1]))) if task.end_epoch else EpochResult()
            metrics.update(res.metrics)
            mlog.write(kind="epoch", **metrics, partial=partial, **res.record)
            log(f"[{task.kind}] epoch {epoch} step {step}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and not k.startswith(task.log_skip)))
            for msg in res.warnings:
                log(f"[{task.kind}] {msg}")
                mlog.write(kind="warning", epoch=epoch, step=step, message=msg)
            save(epoch, n_done, sums, res.is_best, rng)
    finally:
        saver.close()
    digests = E.gather_objects(E.param_hash(model), d)   # every rank must hold the same model
    if d.is_main:
        mlog.write(kind="final", epoch=cfg.epochs, step=step, rank_param_hashes=digests,
                   **(task.final() if task.final else {}))
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks disagree on the parameters: {digests}")
    return {"step": step, "metrics": metrics}


def _agree(flag: bool, d: E.Dist) -> bool:
    """Rank 0's decision, for every rank (a save is collective)."""
    if not d.distributed:
        return flag
    return bool(E.gather_objects(flag, d)[0])


def _memory(d: E.Dist) -> dict:
    if d.device.type != "cuda":
        return {}
    return {"max_memory_gb": round(torch.cuda.max_memory_allocated(d.device) / 2**30, 3)}
