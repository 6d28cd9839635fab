"""Processes and devices: torchrun's process group, DDP wrapping, collectives, and the device rule.

Owns: ``Dist`` (rank, world size, device; everything rank-aware takes one), ``setup_distributed``
/ ``teardown_distributed`` (nccl on CUDA, gloo on CPU: the tests), the CUDA backend switches, the
one device/autocast rule of the project (``resolve_device``, ``autocast``, ``autocast_for``: bf16
autocast and channels_last_3d on CUDA only, since CPU autocast would be slow and change the CPU
tests' numerics), and the gathers/broadcasts the loops and evaluations need. Must not read data,
write files or know about MAC.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


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
    return autocast_for(d.device, enabled)


def use_channels_last(d: Dist, enabled: bool) -> bool:
    return enabled and d.device.type == "cuda"


def maybe_sync_bn(model: nn.Module, d: Dist, enabled: bool) -> nn.Module:
    if not enabled or not d.distributed:
        return model
    if d.device.type != "cuda":
        raise SystemExit("--sync-bn needs CUDA (SyncBatchNorm has no CPU kernel)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model: nn.Module, d: Dist) -> nn.Module:
    """DDP without its per-forward buffer broadcast (``broadcast_buffers=False``). That broadcast
    sends every buffer of rank 0 at each forward: the 32 MiB MoCo queue and its pointer (identical
    on every rank by construction: every rank enqueues the same all-gathered keys) and both
    encoders' BN running statistics. Those statistics never enter a training forward (train-mode
    BN normalises with the batch's), rank 0's are the same with or without the broadcast (it is
    the source), and the loop realigns every rank to rank 0's (``broadcast_buffers``) before each
    evaluation and checkpoint, so evaluations, checkpoints and the rank-0 model are unchanged
    (tests/test_gpu_path.py compares both on gloo). Rank 0's parameters (DDP) and buffers (here)
    are still broadcast once, when the model is wrapped."""
    if not d.distributed:
        return model
    import inspect

    ids = [d.device.index] if d.device.type == "cuda" else None
    ddp_args = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    # torch >= 2.13 names the per-forward sync forward_sync_buffers (broadcast_buffers=False there
    # also skips the sync at construction); the explicit broadcast below covers both spellings
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in ddp_args else {"broadcast_buffers": False}
    wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids, **no_sync)
    broadcast_buffers(model, d)          # once: every rank starts from rank 0's buffers
    return wrapped


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor made during a step (a permutation, an index) on `device` without stalling the
    host: CUDA copies from pageable memory synchronise the stream, so the tensor is pinned first
    and copied asynchronously (the caching host allocator keeps the pinned block until the copy is
    done). Elsewhere a plain (non-blocking) ``.to``."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device, non_blocking=True)


def compile_static(fn):
    """torch.compile with static shapes (``dynamic=False``): every batch shape the run meets (the
    query encoder at B, the key encoder's shuffle-BN share, evaluation at B: its last batch is
    padded, train/inference.py ``pad_batch``) gets its own specialised graph instead of a
    recompile with a symbolic batch dimension, which is slower to run and to build. The query and
    key encoders are two bound methods of one code object and share its compile cache.
    A module is compiled in place (``Module.compile``: its state-dict names stay unprefixed).

    ``MAC_COMPILE_BACKEND`` (environment) names another torch.compile backend than inductor:
    benchmarks/gpu_smoke.py --dry-run uses "eager" (dynamo's graphs, guards and recompiles
    without inductor's minutes of C++ compilation on a CPU)."""
    kw = {"dynamic": False}
    if os.environ.get("MAC_COMPILE_BACKEND"):
        kw["backend"] = os.environ["MAC_COMPILE_BACKEND"]
    if isinstance(fn, nn.Module):
        fn.compile(**kw)
        return fn
    return torch.compile(fn, **kw)


def autocast_bf16_active(device_type: str) -> bool:
    """True inside a bf16 autocast region for `device_type` (the project's CUDA rule)."""
    try:
        return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16
    except (RuntimeError, TypeError):       # a device type autocast does not know
        return False


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



def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when present, else the CPU; anything else as given."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def autocast_for(device: torch.device, enabled: bool = True):
    """The device rule on a bare device (evaluation tools hold no ``Dist``): bf16 autocast on
    CUDA, nothing elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
