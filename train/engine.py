"""Shared plumbing for train/pretrain.py and train/finetune.py (small on purpose).

What lives here, and why it is shared:
  - config: a frozen dataclass is the single source of truth for a run; ``parse_config`` builds
    the argparse parser from it (bools become ``--flag/--no-flag``), so the flags, the printed
    config and the saved ``config.json`` can never disagree.
  - distributed: ``setup_distributed`` reads torchrun's env (RANK/WORLD_SIZE/LOCAL_RANK) and
    picks nccl on CUDA, gloo on CPU; everything else is rank-aware through the ``Dist`` object.
  - device: CUDA when present; bf16 autocast and channels_last_3d only there (CPU autocast would
    be slow and change numerics of the CPU tests).
  - checkpoints: atomic (temp file in the same directory + os.replace, so a SIGKILL mid-save
    leaves the previous last.pt intact), with the full resume state incl. every rank's RNG.
  - metrics.jsonl appender, NaN/inf guard, run directory + config.json + git commit.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from core import atomic
from core.checks import check_choice, check_range
from train.inference import CheckpointError, load_checkpoint  # noqa: F401 (re-exported)

REPO_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# Config: frozen dataclass <-> argparse <-> json
# ------------------------------------------------------------------------------------------

def flag(default, help: str = "", name: str | None = None, choices=None, *, lo=None, hi=None,
         lo_open: bool = False, hi_open: bool = False, note: str = "", empty_ok: bool = False):
    """A dataclass field with argparse metadata (``name`` overrides ``--field-name``) and the
    range its value must lie in (``lo``/``hi``, open or closed; every element of a tuple, which
    may be empty only with ``empty_ok``), checked by ``validate_config`` for the CLI and the API alike."""
    md = {"help": help, "flag": name, "choices": choices,
          "range": (lo, hi, lo_open, hi_open, note) if lo is not None or hi is not None else None,
          "empty_ok": empty_ok}
    return dataclasses.field(default=tuple(default) if isinstance(default, (list, tuple)) else default, metadata=md)


def flag_name(cls_or_cfg, field: str) -> str:
    """The command-line spelling of a config field (e.g. lam -> --lambda)."""
    f = {x.name: x for x in dataclasses.fields(cls_or_cfg)}[field]
    return f.metadata.get("flag") or "--" + field.replace("_", "-")


def validate_config(cfg) -> None:
    """Check every field's range and choices, then the config's own ``check()`` (combinations
    of flags); raise ``UsageError`` naming the flag, the value and what is allowed. Called from
    the configs' ``__post_init__``, so a config that exists is a valid one."""
    for f in dataclasses.fields(cfg):
        v, md = getattr(cfg, f.name), f.metadata
        if md.get("choices") and v not in md["choices"]:
            check_choice(flag_name(cfg, f.name), v, md["choices"])
        if md.get("range") and not (v == () and md.get("empty_ok")):
            lo, hi, lo_open, hi_open, note = md["range"]
            check_range(flag_name(cfg, f.name), v, lo, hi, lo_open, hi_open, note)
    check = getattr(cfg, "check", None)
    if check is not None:
        check()


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the module docstring's layout and show every default."""


def build_parser(cls, description: str = "", prog: str | None = None) -> argparse.ArgumentParser:
    # allow_abbrev=False: "--m" must never be read as a prefix of "--momentum" and the like
    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                formatter_class=_HelpFormatter)
    for f in dataclasses.fields(cls):
        md = f.metadata
        name = md.get("flag") or "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": f.default, "help": md.get("help") or " "}
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction   # never type=bool ("False" is truthy)
        elif isinstance(f.default, tuple):
            kw["nargs"] = "*"
            kw["type"] = type(f.default[0]) if f.default else str
        elif f.default is None:
            kw["type"] = str
        else:
            kw["type"] = type(f.default)
        if md.get("choices"):
            kw["choices"] = md["choices"]
        p.add_argument(name, **kw)
    return p


def parse_config(cls, argv=None, description: str = "", prog: str | None = None):
    """Flags -> a validated config; a bad value ends the program here (status 2, one line naming
    the flag, the value and what is allowed), before any data, cache or run directory is touched.

    ``--config FILE`` (JSON, keys = the flags' long names without the dashes, e.g.
    configs/demo/pretrain.json) sets values between the defaults and the command line: defaults <
    file < flags. The file's values pass through the same checks (its own line names the file and
    the key). The path itself is not a field of the config: config.json records it in ``argv``."""
    from core.flags import parse_checked
    parser = build_parser(cls, description, prog)
    made = []

    def build(args):
        vals = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items() if k != "config"}
        made.append(cls(**vals))

    parse_checked(parser, argv, build, config=True)
    return made[0]


def config_dict(cfg) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def format_config(cfg) -> str:
    d = config_dict(cfg)
    w = max(len(k) for k in d)
    return "\n".join(f"  {k:<{w}} = {v!r}" for k, v in d.items())


# ------------------------------------------------------------------------------------------
# Optimiser
# ------------------------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's recipe), or AdamW (betas 0.9/0.999): in runs of a few
    hundred steps (the CPU demo) AdamW gets out of the initial plateau far sooner."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


# ------------------------------------------------------------------------------------------
# Distributed / device
# ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False     # True when this process called init_process_group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> Dist:
    """Init the process group from torchrun's env; a plain ``python`` run is world size 1.

    nccl needs one GPU per process (cuda:LOCAL_RANK); gloo is the CPU backend (tests)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda requested but CUDA is not available")
        dev = torch.device("cuda", local if world > 1 else (torch.device(device).index or 0))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    d = Dist(rank, world, local, dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30), **kw)
        d.initialized = True
    return d


def teardown_distributed(d: Dist, ok: bool = True) -> None:
    """Leave the process group; after an error skip the barrier (the other ranks may be gone)."""
    if d.initialized and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.distributed:
        dist.barrier()


def configure_backends(d: Dist, deterministic: bool = False) -> None:
    """CUDA: TF32 for the fp32 leftovers, cuDNN autotuning (input shapes are fixed) unless
    deterministic kernels are asked for (warn_only: a few ops, e.g. adaptive pooling backward,
    have no deterministic CUDA kernel)."""
    if d.device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def persistent_compile_cache(cache_dir: str | os.PathLike) -> Path:
    """torch.compile's caches (inductor's FX graph and kernel caches) under the data cache
    instead of /tmp, so a rerun, a resumed run or the next stage skips most compilation; the
    first step's time (compilation included) is logged as ``kind: "first_step"``. An existing
    TORCHINDUCTOR_CACHE_DIR wins."""
    path = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir) / ".torchinductor")))
    path.mkdir(parents=True, exist_ok=True)
    return path


def autocast(d: Dist, enabled: bool):
    """bf16 autocast on CUDA only. bf16 has fp32's exponent range, so no GradScaler is needed
    (the scaler slot in checkpoints stays None; kept for fp16 forks)."""
    if enabled and d.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_channels_last(d: Dist, enabled: bool) -> bool:
    return enabled and d.device.type == "cuda"


def maybe_sync_bn(model: nn.Module, d: Dist, enabled: bool) -> nn.Module:
    if not enabled or not d.distributed:
        return model
    if d.device.type != "cuda":
        raise SystemExit("--sync-bn needs CUDA (SyncBatchNorm has no CPU kernel)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model: nn.Module, d: Dist) -> nn.Module:
    if not d.distributed:
        return model
    ids = [d.device.index] if d.device.type == "cuda" else None
    # DDP's default buffer sync (rank 0's BN running stats at each forward) stays on, so the saved
    # rank-0 model is the model every rank used
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """all_gather along dim 0 (no gradient), identity on one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.contiguous()      # standard layout for input AND outputs (empty_like would keep a
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]   # channels_last layout)
    dist.all_gather(out, x)
    return torch.cat(out, 0)


def gather_objects(obj, d: Dist) -> list:
    """Every rank's picklable ``obj``, rank-indexed (collective under DDP)."""
    if not d.distributed:
        return [obj]
    out: list = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_unique(keys: list, values: list, d: Dist) -> tuple[list, list]:
    """Gather (key, value) pairs of all ranks and keep one per key: DistributedSampler pads the
    last round with repeated items, which must not count twice in an evaluation."""
    seen: dict = {}
    for ks, vs in gather_objects((list(keys), list(values)), d):
        for k, v in zip(ks, vs):
            seen.setdefault(k, v)
    return list(seen), list(seen.values())


@torch.no_grad()
def broadcast_buffers(model: nn.Module, d: Dist) -> None:
    """Copy rank 0's buffers (BN running stats) to every rank. DDP broadcasts them at the start
    of each forward, but the last forward leaves each rank with its own update; call this before
    evaluating or saving so every rank holds the model rank 0 saves."""
    if d.distributed:
        for b in unwrap(model).buffers():
            dist.broadcast(b, 0)


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64,
                     device=d.device if d.device.type == "cuda" else "cpu")
    if d.distributed:
        dist.all_reduce(t)
    return t.tolist()


# ------------------------------------------------------------------------------------------
# Seeding / RNG state
# ------------------------------------------------------------------------------------------

def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, rank, ...) via numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)   # also seeds every CUDA device


def rng_state() -> dict:
    """Global RNG states as tensors and plain python values only, so that checkpoints load with
    ``torch.load(weights_only=True)`` (no numpy objects to unpickle)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"python": random.getstate(),
          "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Mapping) -> None:
    version, internal, gauss = st["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(st["torch"].cpu())
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])


def gather_rng_states(d: Dist) -> list[dict]:
    """Every rank's RNG state (rank-indexed); collective under DDP."""
    mine = rng_state()
    if not d.distributed:
        return [mine]
    out: list = [None] * d.world_size
    dist.all_gather_object(out, mine)
    return out


def restore_rng_states(states: list[dict] | None, d: Dist) -> None:
    if states and len(states) == d.world_size:
        set_rng_state(states[d.rank])
    elif states:
        print(f"[resume] checkpoint has RNG states of {len(states)} ranks, this run has "
              f"{d.world_size}: RNG states not restored (per-epoch reseeding still applies)")


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------
# Run directory, metrics, guards
# ------------------------------------------------------------------------------------------

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
    A resumed run rewrites it; the previous one is kept as config.prev.json."""
    run_dir = Path(run_dir)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
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
    a killed run keeps everything it logged."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

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


class NonFiniteLossError(RuntimeError):
    pass


def check_finite(terms: Mapping[str, torch.Tensor | float], epoch: int, step: int,
                 d: Dist | None = None) -> None:
    """Stop at the first NaN/inf, naming the step and every loss term (a diverged run should
    fail loudly, not write garbage checkpoints). Under DDP the verdict is all-reduced so every
    rank stops at the same step instead of the healthy ones hanging in the next collective.
    One device sync per call: cheap next to a 3D-CNN step."""
    ts = [v.detach().float().reshape(()) if torch.is_tensor(v) else torch.tensor(float(v))
          for v in terms.values()]
    vals = dict(zip(terms, torch.stack([t.to(ts[0].device) for t in ts]).tolist()))   # one sync
    bad = not all(math.isfinite(v) for v in vals.values())
    if d is not None and d.distributed:
        flag_t = torch.tensor([float(bad)], device=d.device if d.device.type == "cuda" else "cpu")
        dist.all_reduce(flag_t)
        if flag_t.item() and not bad:
            raise NonFiniteLossError(f"non-finite loss on another rank at epoch {epoch} step {step} "
                                     f"(this rank {d.rank}: " + ", ".join(f"{k}={v:.6g}" for k, v in vals.items()) + ")")
    if bad:
        desc = ", ".join(f"{k}={v:.6g}" for k, v in vals.items())
        raise NonFiniteLossError(
            f"non-finite loss or gradient at epoch {epoch} step {step}: {desc}. Lower --lr, check the "
            f"inputs, or resume from the last good checkpoint with --resume.")


def param_hash(model: nn.Module, buffers: tuple[str, ...] = ("queue",)) -> str:
    """sha1 of the parameters (and the named buffers, e.g. the MoCo queue): what DDP must keep
    identical on every rank. BN running stats are excluded: each rank updates its own copy in
    the last forward (``broadcast_buffers`` realigns them)."""
    import hashlib
    h = hashlib.sha1()
    m = unwrap(model)
    tensors = list(m.named_parameters()) + [(n, b) for n, b in m.named_buffers()
                                            if any(x in n for x in buffers)]
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
