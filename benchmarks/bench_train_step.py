#!/usr/bin/env python
"""Train-step throughput: the product's MAC pretraining step beside torchvision's r2plus1d_18.

Measures clips/s and peak GPU memory of one optimisation step, for

  tasks
    mac_s     MAC-S-2 as `train/pretrain.py --method mac-s` trains it: `MACModel` (train.mac_model),
              `MACTransform` on the batch, `compute_losses`, backward, gradient clipping, the
              non-finite guard and the optimiser step of `train.loop.fit`, all built from a
              `PretrainConfig` exactly as `pretrain.train()` builds them (`mac_config(cfg)`,
              channels_last_3d / bf16 autocast through `train.utils.distributed`'s
              `use_channels_last` / `autocast`, `--compile` compiling the encoders' forward_features only)
    mac_sc    the same with --method mac-sc: + the momentum key encoder with shuffle-BN
              sub-batches, projection, 65,536-key queue and InfoNCE (`MACModel.forward`)
    tv_cls    torchvision's r2plus1d_18 + fc-400, cross-entropy, SGD (lr 0.01, momentum 0.9,
              wd 1e-4) on a random float clip: the anchor (skipped when torchvision won't import)
    ours_cls  our r2plus1d_18 (train.models) in the same plain supervised step
  variants
    fp32               plain fp32
    bf16               bf16 autocast
    bf16_cl3d          bf16 + channels_last_3d (model and input): pretrain.py's default on CUDA
    bf16_cl3d_compile  bf16 + channels_last_3d + torch.compile (MAC: pretrain.py --compile;
                       the anchors: the whole module)

The MAC steps run on one real training batch: a small cache of synthetic moving-object videos is
generated in a temporary folder (benchmarks/bench_pretrain.py's generator) and read once through
`PretrainClips` + `make_loader` (the loader pretrain.py uses, pinned on CUDA). Every timed step
then feeds that same uint8 CPU batch through `train.loop.PrefetchLoader` (host-side mask
statistics, host-to-device copy and the MAC transform on a side stream, as in training), so a
step is everything pretrain.py does per batch except the DataLoader itself
(`benchmarks/bench_pretrain.py` measures that too, end to end). pretrain.py keeps bf16 and
channels_last for CUDA: on CPU the MAC variants all run fp32 (noted).

With torchvision importable it also checks that torchvision's r2plus1d_18 / r3d_18 state dicts
load into ours with strict=True and ours into theirs, and that both then compute the same
outputs (PASS/FAIL lines, "interop" in the JSON).

Run from the repository root (``pip install -e .`` not needed).

GPU (defaults: B=64, 3x16x112x112, warmup 5, 20 timed steps, every variant for the anchors,
bf16_cl3d for mac_s / mac_sc):

    python benchmarks/bench_train_step.py --out results.json
    python benchmarks/bench_train_step.py --mac-variants bf16_cl3d,bf16_cl3d_compile --out results.json

CPU smoke test (B=4, 3x4x32x32, fp32, 1 warmup + 2 timed steps; checks that every code path runs):

    python benchmarks/bench_train_step.py --smoke

Timings use torch.cuda.synchronize around the timed steps. Exit status 1 if any configuration
failed or an interop check failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):   # run as `python benchmarks/bench_train_step.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocess.cache import DecodeParams, MaskParams, open_cache
from core.errors import UsageError
from core.flags import Flags, config_dict, flag, parse, redefault
from train.utils.distributed import Dist, configure_backends, use_channels_last, wrap_ddp
from train.utils.guards import check_finite
from train.utils.optim import make_optimizer
from train.utils.random import derive_seed, seed_everything
from train.data import PretrainClips, make_loader, set_loader_epoch
from train.mac import MACTransform
from train.mac_model import MACModel
from train.models import BACKBONES, build_backbone, load_backbone
from train.pretrain import MaskStats, PretrainConfig, compile_encoders, mac_config, make_step

try:    # the shared training loop's prefetcher and window read (train/loop.py); inline without them
    from train.loop import PrefetchLoader, window_means
except ImportError:  # pragma: no cover
    PrefetchLoader = None
    window_means = lambda win, n: {k: float(v) / n for k, v in win.items()}   # noqa: E731

VARIANTS: dict[str, dict[str, bool]] = {
    "fp32": dict(bf16=False, cl3d=False, compile=False),
    "bf16": dict(bf16=True, cl3d=False, compile=False),
    "bf16_cl3d": dict(bf16=True, cl3d=True, compile=False),
    "bf16_cl3d_compile": dict(bf16=True, cl3d=True, compile=True),
}
TASKS = ("mac_s", "mac_sc", "tv_cls", "ours_cls")
MAC_TASKS = {"mac_s": "mac-s", "mac_sc": "mac-sc"}

LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4     # the anchors' SGD (pretrain.py's defaults too)


# --------------------------------------------------------------------------------------------
# the product's MAC step
# --------------------------------------------------------------------------------------------


def mac_pretrain_config(method: str, batch: int, frames: int, size: int, backbone: str = "r2plus1d_18",
                        n: int = 2, k: int = 4, queue: int = 65536, bf16: bool = True, cl3d: bool = True,
                        compile: bool = False, device: str = "auto", **overrides) -> PretrainConfig:
    """The PretrainConfig of `pretrain.py --method <method> --n <n> --k <k> --batch-size <batch>
    --frames <frames> --crop <size>` (scales 112/128/144 scaled with the crop), everything else
    pretrain.py's defaults."""
    scales = tuple(sorted({round(size * s / 112) for s in (112, 128, 144)}))
    dev = "cuda" if str(device).startswith("cuda") else str(device)
    return PretrainConfig(method=method, n=n, k=k, backbone=backbone, batch_size=batch, frames=frames, crop=size,
                          scales=scales, queue_size=queue, bf16=bf16, channels_last=cl3d, compile=compile,
                          device=dev, workers=0, eval_every=0, progress=False, **overrides)


def first_batch(cfg: PretrainConfig) -> dict:
    """The first training batch pretrain.py would draw with `cfg` (epoch 0, its seed), on the host:
    the cache at cfg.cache_dir, `PretrainClips`, `make_loader` (pinned when CUDA is there)."""
    strides = tuple(sorted(set(cfg.strides))) if cfg.mask_source == "cache" else ()
    index = open_cache(cfg.cache_dir, cfg.dataset, DecodeParams(cfg.short_side, cfg.jpeg_quality),
                       MaskParams(cfg.lam, cfg.m), strides)
    loader = make_loader(PretrainClips(index, cfg.split, cfg.part, mac_config(cfg)), cfg.batch_size, 0,
                         shuffle=True, seed=cfg.seed)
    set_loader_epoch(loader, 0)
    return next(iter(loader))


def synthetic_cache_batch(cfg: PretrainConfig, folder: Path, jobs: int = 1) -> dict:
    """Generate a cache of cfg.batch_size synthetic videos (frames of short side 128 scaled with
    the crop, long enough for the largest stride) in `folder`, then `first_batch` from it."""
    from benchmarks.bench_pretrain import build_synthetic_cache

    h = round(128 * cfg.crop / 112)
    n_frames = (cfg.frames - 1) * max(cfg.strides) + 4
    build_synthetic_cache(folder, cfg.batch_size, n_frames, h, round(h * 4 / 3), jobs=jobs, log=lambda *a: None)
    return first_batch(dataclasses.replace(cfg, cache_dir=str(folder)))


class MacStep:
    """One training step of pretrain.py (train.pretrain.train + train.loop.fit) on a fixed CPU batch.

    Built from `cfg` as pretrain.train() builds it: MACModel with the same arguments after
    seed_everything(cfg.seed), channels_last_3d and bf16 autocast when train.utils.distributed allows them (CUDA),
    the optimiser of train.utils.optim.make_optimizer, the encoders' forward_features compiled with --compile,
    MACTransform(mac_config(cfg)) as the batch preparation and the loss of compute_losses. A call:
    the next prepared batch (host-side mask statistics, copy + transform on a side stream via
    train.loop.PrefetchLoader), forward, losses, zero_grad, backward, clip_grad_norm_,
    train.utils.guards.check_finite (one sync), optimiser step, the metric-window accumulation (one more sync
    every cfg.log_every steps). Returns the detached loss."""

    def __init__(self, cfg: PretrainConfig, device: torch.device | str, cpu_batch: dict):
        d = self.d = Dist(device=torch.device(device))
        self.cfg = cfg
        self.mcfg = mac_config(cfg)
        self.tf = MACTransform(self.mcfg, d.device)
        seed_everything(cfg.seed)
        self.n_out = self.mcfg.num_classes if cfg.loss == "ce" else cfg.n
        model = MACModel(cfg.backbone, self.n_out, cfg.dropout, cfg.method == "mac-sc", cfg.proj_hidden,
                         cfg.proj_dim, cfg.queue_size, cfg.moco_momentum, cfg.temperature,
                         cfg.shuffle_bn_groups if not d.distributed else 1, cfg.seed).to(d.device)
        self.cl = use_channels_last(d, cfg.channels_last)
        if self.cl:
            model = model.to(memory_format=torch.channels_last_3d)
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.params, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
        if cfg.compile:   # as pretrain.py: the encoders' bodies only, static shapes
            compile_encoders(model)
        self.ddp = wrap_ddp(model, d)
        self.stats = MaskStats()                   # pretrain.py's host-side mask statistics
        self.mask_sum, self.mask_n = self.stats.sum, self.stats.n
        self._step = make_step(self.ddp, cfg, d, self.cl)
        self.inspect_s = 0.0
        self.step_idx, self.win, self.win_n = 0, {}, 0
        self.batch = cpu_batch
        source = itertools.repeat(cpu_batch)
        if PrefetchLoader is not None:
            self.prefetch = "train.loop.PrefetchLoader"
            self._it = PrefetchLoader(source, d.device, self.tf, self.inspect).start()
        else:
            self.prefetch = "inline"
            self._it = (self.tf(b) for b in source if self.inspect(b)() is None)
        seed_everything(derive_seed(cfg.seed, 0, d.rank))     # fit: epoch 0's dropout stream
        model.train()

    def inspect(self, batch: dict):
        """pretrain.py's host-side per-stride mask statistics of each batch (``MaskStats.observe``:
        subsampled 1/16, as in training), timed; the update is applied when the batch is yielded."""
        t0 = time.perf_counter()
        commit = self.stats.observe(batch)
        self.inspect_s += time.perf_counter() - t0
        return commit

    def forward(self, b: dict, step_: int) -> dict:
        """pretrain.py's Task.step (``train.pretrain.make_step``): forward under autocast, fp32 losses."""
        return self._step(b, step_)

    def __call__(self) -> torch.Tensor:
        cfg = self.cfg
        terms = self.forward(next(self._it), self.step_idx)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad or float("inf"))
        check_finite({k: v for k, v in terms.items() if k.startswith(("loss", "grad"))}, 0, self.step_idx, self.d)
        self.opt.step()
        self.step_idx += 1
        self.win_n += 1
        for k, v in terms.items():
            self.win[k] = self.win.get(k, 0.0) + v.detach().float()
        if self.step_idx % cfg.log_every == 0:
            window_means(self.win, self.win_n)                            # the window's sync
            self.win, self.win_n = {}, 0
        return terms["loss"].detach()


# --------------------------------------------------------------------------------------------
# the anchors: a plain supervised step on a random float clip
# --------------------------------------------------------------------------------------------


@dataclass
class Setup:
    device: torch.device
    batch: int
    frames: int
    size: int
    bf16: bool
    cl3d: bool
    compile: bool
    compile_mode: str | None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last_3d if self.cl3d else torch.contiguous_format

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def clip(self, seed: int) -> torch.Tensor:
        g = torch.Generator(device="cpu").manual_seed(seed)
        x = torch.randn(self.batch, 3, self.frames, self.size, self.size, generator=g)
        return x.to(self.device).contiguous(memory_format=self.memory_format)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device, memory_format=self.memory_format)
        return model

    def maybe_compile(self, model: nn.Module) -> nn.Module:
        if not self.compile:
            return model
        return torch.compile(model, mode=self.compile_mode)


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        [p for p in params if p.requires_grad], lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )


def build_cls_step(s: Setup, model: nn.Module, num_classes: int) -> Callable[[], torch.Tensor]:
    model = s.prepare(model).train()
    opt = sgd(model.parameters())
    fwd = s.maybe_compile(model)
    x = s.clip(0)
    y = torch.randint(0, num_classes, (s.batch,), device=s.device)

    def step() -> torch.Tensor:
        with s.autocast():
            logits = fwd(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    task: str
    model: str
    variant: str
    batch: int
    frames: int
    size: int
    warmup: int
    steps: int
    clips_per_s: float | None = None
    step_ms: float | None = None
    warmup_s: float | None = None
    peak_mem_gib: float | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    params: int | None = None                  # trainable parameters
    host_inspect_ms: float | None = None       # MAC: pretrain.py's host-side mask statistics per step
    graphs_warmup: int | None = None           # compile variants: dynamo graphs built in the warmup steps
    graphs_timed: int | None = None            # ... and during the timed steps (0: no recompile)
    prefetch: str | None = None                # MAC: how batches were prepared
    pretrain_config: dict | None = None        # MAC: the PretrainConfig the step was built from
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def _dynamo_graphs() -> int:
    """Graphs torch.compile has built so far in this process (dynamo's counter)."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(task: str, variant: str, args, tv_video, mac_batches: dict) -> tuple[Callable[[], torch.Tensor], object]:
    """(step, the object that holds the model: a MacStep or the anchor's module)."""
    device = torch.device(args.device)
    v = VARIANTS[variant]
    if task in MAC_TASKS:
        cfg = mac_pretrain_config(MAC_TASKS[task], args.batch, args.frames, args.size, args.backbone, args.n,
                                  args.k, args.queue, v["bf16"], v["cl3d"], v["compile"], args.device)
        key = (cfg.method, cfg.seed)
        if key not in mac_batches:       # one real batch per method (MAC-SC's has the key view), reused
            with tempfile.TemporaryDirectory(prefix="bench_train_step_") as tmp:
                mac_batches[key] = synthetic_cache_batch(cfg, Path(tmp), jobs=args.jobs)
        step = MacStep(cfg, device, mac_batches[key])
        return step, step
    s = Setup(device=device, batch=args.batch, frames=args.frames, size=args.size, bf16=v["bf16"],
              cl3d=v["cl3d"], compile=v["compile"], compile_mode=args.compile_mode)
    if task == "ours_cls":
        model = build_backbone(args.backbone, args.num_classes)
    elif task == "tv_cls":
        model = getattr(tv_video, args.backbone)(num_classes=args.num_classes)
    else:
        raise ValueError(task)
    return build_cls_step(s, model, args.num_classes), model


def run_config(task: str, variant: str, args, tv_video, mac_batches: dict) -> Result:
    device = torch.device(args.device)
    v = VARIANTS[variant]
    model_name = {
        "ours_cls": f"ours/{args.backbone}",
        "tv_cls": f"torchvision/{args.backbone}",
        "mac_s": f"MACModel/{args.backbone} MAC-S-{args.n}",
        "mac_sc": f"MACModel/{args.backbone} MAC-SC-{args.n}",
    }[task]
    r = Result(task, model_name, variant, args.batch, args.frames, args.size, args.warmup, args.steps)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step = holder = None
    try:
        step, holder = build_step(task, variant, args, tv_video, mac_batches)
        model = holder.model if isinstance(holder, MacStep) else holder
        r.params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if isinstance(holder, MacStep):
            r.prefetch, r.pretrain_config = holder.prefetch, config_dict(holder.cfg)
            if device.type != "cuda" and (v["bf16"] or v["cl3d"]):
                r.notes.append("pretrain.py uses bf16/channels_last on CUDA only: ran fp32")
        if device.type == "cuda":   # the batch preparation and model build are not the step's memory
            torch.cuda.reset_peak_memory_stats(device)

        graphs = lambda: _dynamo_graphs() if v["compile"] else None   # noqa: E731
        g0 = graphs()
        sync(device)
        t0 = time.perf_counter()
        first = step()
        for _ in range(args.warmup - 1):
            step()
        sync(device)
        r.warmup_s = time.perf_counter() - t0
        r.loss_first = float(first)
        g1 = graphs()
        if isinstance(holder, MacStep):
            holder.inspect_s = 0.0

        t0 = time.perf_counter()
        for _ in range(args.steps):
            last = step()
        sync(device)
        dt = time.perf_counter() - t0
        r.loss_last = float(last)
        if g0 is not None:
            r.graphs_warmup, r.graphs_timed = g1 - g0, graphs() - g1
        r.step_ms = 1000.0 * dt / args.steps
        r.clips_per_s = args.batch * args.steps / dt
        if isinstance(holder, MacStep):
            r.host_inspect_ms = 1000.0 * holder.inspect_s / args.steps
        if not (math.isfinite(r.loss_first) and math.isfinite(r.loss_last)):
            r.notes.append("non-finite loss")
            if device.type == "cpu" and v["bf16"] and task not in MAC_TASKS:
                # oneDNN's CPU bf16 Conv3d weight grad is inf for the (3,1,1) temporal convs
                # at T == 2 (torch 2.13 / oneDNN 3.12, AVX-512); CUDA is unaffected.
                r.notes.append("expected on CPU: oneDNN bf16 conv3d weight-grad bug")
            else:
                r.error = "non-finite loss"
        if device.type == "cuda":
            r.peak_mem_gib = torch.cuda.max_memory_allocated(device) / 2**30
    except Exception as e:  # keep going: one failing configuration must not lose the others
        r.error = f"{type(e).__name__}: {e}".strip()[:2000]
        traceback.print_exc(limit=3)
    finally:
        step = holder = model = None  # noqa: F841  (free the model / optimizer before the next configuration)
        if v["compile"]:
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return r


# --------------------------------------------------------------------------------------------
# torchvision interop
# --------------------------------------------------------------------------------------------


def check_torchvision_interop(tv_video, names=("r2plus1d_18", "r3d_18")) -> list[dict]:
    """torchvision <-> ours state dicts, both directions, strict; same outputs after loading.

    ``tv_video`` is ``torchvision.models.video`` (anything with the same constructors works).
    Runs on CPU in fp32 with a small clip so the comparison is free of TF32/bf16 noise.
    """
    checks: list[dict] = []

    def record(name: str, check: str, fn: Callable[[], str | None]) -> None:
        try:
            detail = fn()
            ok = True
        except Exception as e:
            detail, ok = f"{type(e).__name__}: {e}"[:1000], False
        checks.append({"model": name, "check": check, "pass": ok, "detail": detail})
        print(f"[interop] {'PASS' if ok else 'FAIL'} {name}: {check}" + (f" ({detail})" if detail else ""))

    def same_output(a: nn.Module, b: nn.Module) -> str:
        x = torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ya, yb = a.eval()(x), b.eval()(x)
        err = ((ya - yb).abs().max() / yb.abs().max().clamp_min(1e-12)).item()
        if not err < 1e-5:
            raise AssertionError(f"outputs differ: max rel err {err:.3g}")
        return f"max rel err {err:.1e}"

    for name in names:
        torch.manual_seed(0)
        tv = getattr(tv_video, name)()
        ours = build_backbone(name)

        def names_shapes() -> str:
            a = [(k, tuple(v.shape)) for k, v in tv.state_dict().items()]
            b = [(k, tuple(v.shape)) for k, v in ours.state_dict().items()]
            if a != b:
                diff = [(x, y) for x, y in zip(a, b) if x != y][:5]
                only_tv = sorted(set(dict(a)) - set(dict(b)))[:5]
                only_ours = sorted(set(dict(b)) - set(dict(a)))[:5]
                raise AssertionError(
                    f"torchvision {len(a)} vs ours {len(b)} entries; only torchvision {only_tv}; "
                    f"only ours {only_ours}; first positional differences {diff}"
                )
            n = sum(p.numel() for p in ours.parameters())
            if n != sum(p.numel() for p in tv.parameters()):
                raise AssertionError("parameter counts differ")
            return f"{len(a)} entries, {n:,} parameters"

        def tv_into_ours() -> str:
            ours.load_state_dict(tv.state_dict(), strict=True)
            return same_output(ours, tv)

        def ours_into_tv() -> str:
            torch.manual_seed(1)
            src = build_backbone(name)
            dst = getattr(tv_video, name)()
            dst.load_state_dict(src.state_dict(), strict=True)
            return same_output(src, dst)

        def load_backbone_tv_fc101() -> str:
            tv101 = getattr(tv_video, name)(num_classes=101)
            dst = build_backbone(name, num_classes=16)
            report = load_backbone(dst, tv101.state_dict(), strict=True)
            if report.dropped != ["fc.weight", "fc.bias"]:
                raise AssertionError(f"dropped {report.dropped}")
            return f"{len(report.loaded)} tensors loaded, fc dropped"

        record(name, "state_dict names/shapes/order identical", names_shapes)
        record(name, "torchvision -> ours load_state_dict(strict=True), same outputs", tv_into_ours)
        record(name, "ours -> torchvision load_state_dict(strict=True), same outputs", ours_into_tv)
        record(name, "load_backbone(ours, torchvision fc-101 state_dict)", load_backbone_tv_fc101)
    return checks


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def environment(args, tv_version: str | None, tv_error: str | None) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": tv_version,
        "torchvision_error": tv_error,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.device(args.device).type == "cuda":
        env.update(
            gpu=torch.cuda.get_device_name(args.device),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )

        def setting(get: Callable[[], object]) -> object:
            try:
                return str(get())
            except Exception:  # attribute absent in this torch version
                return None

        env.update(
            cudnn_allow_tf32=setting(lambda: torch.backends.cudnn.allow_tf32),
            matmul_allow_tf32=setting(lambda: torch.backends.cuda.matmul.allow_tf32),
            cudnn_conv_fp32_precision=setting(lambda: torch.backends.cudnn.conv.fp32_precision),
        )
    return env


def _comma_list(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


@dataclass
class TrainStepFlags(Flags):
    """The flags of bench_train_step.py. A flag whose default is None takes its value from the
    setting: the GPU default (B=64, 3x16x112x112, warmup 5, 20 steps, every variant for the
    anchors, bf16_cl3d for the MAC steps) or --smoke's; a flag given explicitly wins over both."""

    config_file = False
    smoke: bool = flag(False, "CPU check of every code path: --device cpu --batch 4 --frames 4 --size 32 --warmup 1 "
                              "--steps 2 --variants fp32 --mac-variants fp32 (flags given explicitly still win)")
    device: str = flag(None, "torch device (none: cuda when available, else cpu)")
    batch: int = flag(None, "clips per step (default setting 64)", type=int, lo=1, aliases=("--batch-size",))
    frames: int = flag(None, "clip frames (default setting 16)", type=int, lo=1)
    size: int = flag(None, "crop (default setting 112)", type=int, lo=8, aliases=("--crop",))
    warmup: int = flag(None, "untimed steps first (default setting 5)", type=int, lo=1)
    steps: int = flag(None, "timed steps (default setting 20)", type=int, lo=1, aliases=("--iters",))
    backbone: str = flag("r2plus1d_18", "backbone of every task", choices=BACKBONES)
    n: int = redefault(PretrainConfig, "n", 2, help="MAC temporal segments")
    k: int = redefault(PretrainConfig, "k", 4, help="MAC alphas per segment")
    num_classes: int = flag(400, "fc size for ours_cls / tv_cls", lo=1)
    queue: int = flag(65536, "MoCo queue length (mac_sc)", lo=1)
    tasks: str = flag(",".join(TASKS), f"comma list of {', '.join(TASKS)}")
    variants: str = flag(None, f"variants for ours_cls / tv_cls, comma list of {', '.join(VARIANTS)} (default "
                               f"setting: all)")
    mac_variants: str = flag(None, "variants for mac_s / mac_sc (default setting bf16_cl3d: pretrain.py's defaults "
                                   "on CUDA)")
    compile_mode: str = flag(None, "torch.compile mode of the anchors (default, reduce-overhead, max-autotune, ...); "
                                   "the MAC steps compile as pretrain.py does")
    jobs: int = flag(4, "processes generating the MAC batch's cache", lo=1)
    cudnn_benchmark: bool = flag(True, "cuDNN autotuning on CUDA (pretrain.py's)")
    skip_interop: bool = flag(False, "skip the torchvision state-dict interop checks")
    out: str = flag(None, "write results JSON here (after every config)", aliases=("--json",))

    def __post_init__(self):
        full = dict(device="cuda" if torch.cuda.is_available() else "cpu", batch=64, frames=16, size=112, warmup=5,
                    steps=20, variants=",".join(VARIANTS), mac_variants="bf16_cl3d")
        smoke = dict(full, device="cpu", batch=4, frames=4, size=32, warmup=1, steps=2, variants="fp32",
                     mac_variants="fp32")
        for k, v in (smoke if self.smoke else full).items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        super().__post_init__()

    @property
    def task_list(self) -> list[str]:
        """--tasks as a list (less tv_cls for r2plus1d_10: torchvision has none)."""
        return [t for t in _comma_list(self.tasks) if not (t == "tv_cls" and self.backbone == "r2plus1d_10")]

    @property
    def variant_list(self) -> list[str]:
        return _comma_list(self.variants)

    @property
    def mac_variant_list(self) -> list[str]:
        return _comma_list(self.mac_variants)

    def check(self) -> None:
        for t in _comma_list(self.tasks):
            if t not in TASKS:
                raise UsageError("--tasks", self.tasks, f"unknown task {t!r}; choose from {', '.join(TASKS)}")
        for name, value in (("--variants", self.variants), ("--mac-variants", self.mac_variants)):
            for v in _comma_list(value):
                if v not in VARIANTS:
                    raise UsageError(name, value, f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
        if any(t in MAC_TASKS for t in self.task_list):
            try:    # pretrain.py's own checks (frames a multiple of n, queue a multiple of the batch, ...)
                mac_pretrain_config("mac-sc", self.batch, self.frames, self.size, self.backbone, self.n, self.k,
                                    self.queue, device=self.device)
            except UsageError as e:     # named with this benchmark's spelling of the flag
                name = {"--queue-size": "--queue", "--batch-size": "--batch", "--crop": "--size"}.get(e.flag, e.flag)
                raise UsageError(name, e.value, f"{e.allowed} (not a pretrain.py configuration)") from None
            except Exception as e:
                raise UsageError("pretrain.py configuration:", "refused", f"{type(e).__name__}: {e}") from None


def parse_args(argv=None) -> TrainStepFlags:
    return parse(TrainStepFlags, argv, description=__doc__, prog="bench_train_step.py")


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        configure_backends(Dist(device=device))      # pretrain.py's: TF32, cuDNN autotuning
        torch.backends.cudnn.benchmark = args.cudnn_benchmark

    tv_video, tv_version, tv_error = None, None, None
    try:
        import torchvision
        from torchvision.models import video as tv_video  # noqa: F811

        tv_version = torchvision.__version__
    except Exception as e:  # not installed, or built against another torch
        tv_error = f"{type(e).__name__}: {e}"[:500]
        tv_video = None

    out = {"env": environment(args, tv_version, tv_error),
           "config": {k: v for k, v in vars(args).items() if k != "out"},
           "interop": [], "results": []}
    print("[env] " + json.dumps(out["env"]))

    def save() -> None:
        if args.out:
            with open(args.out, "w") as f:
                json.dump(out, f, indent=2)

    failed = False
    if tv_video is None:
        print(f"[interop] SKIP: torchvision not importable ({tv_error})")
    elif not args.skip_interop:
        out["interop"] = check_torchvision_interop(tv_video)
        failed |= not all(c["pass"] for c in out["interop"])
        save()

    plan = []
    for task in args.task_list:
        if task == "tv_cls" and tv_video is None:
            print("[bench] skipping tv_cls: torchvision not importable")
            continue
        for variant in args.mac_variant_list if task in MAC_TASKS else args.variant_list:
            plan.append((task, variant))

    header = f"{'task':9s} {'model':32s} {'variant':18s} {'clips/s':>9s} {'step ms':>9s} " \
             f"{'warmup s':>9s} {'peak GiB':>9s} {'params':>11s} {'loss':>15s}"
    print(f"[bench] B={args.batch} 3x{args.frames}x{args.size}x{args.size} device={args.device} "
          f"warmup={args.warmup} steps={args.steps}")
    print(header)
    mac_batches: dict = {}
    for task, variant in plan:
        r = run_config(task, variant, args, tv_video, mac_batches)
        out["results"].append(asdict(r))
        save()
        failed |= r.error is not None
        if r.clips_per_s is None:
            print(f"{task:9s} {r.model:32s} {variant:18s} ERROR {(r.error or '')[:200]}")
        else:
            loss = f"{r.loss_first:.3f}->{r.loss_last:.3f}"
            extra = [] if r.host_inspect_ms is None else [f"host mask stats {r.host_inspect_ms:.1f} ms/step"]
            if r.graphs_warmup is not None:
                extra.append(f"compiled graphs: {r.graphs_warmup} in warmup, {r.graphs_timed} while timed")
            print(f"{task:9s} {r.model:32s} {variant:18s} {fmt(r.clips_per_s, '9.1f')} "
                  f"{fmt(r.step_ms, '9.1f')} {fmt(r.warmup_s, '9.1f')} "
                  f"{fmt(r.peak_mem_gib, '9.2f')} {fmt(r.params, '11,d')} {loss:>15s}"
                  + (f"  ERROR: {r.error}" if r.error else "")
                  + (f"  {'; '.join(extra + r.notes)}" if extra or r.notes else ""))
        sys.stdout.flush()

    # speed-ups relative to fp32 of the same task, and the MAC steps against the anchor
    base = {r["task"]: r["clips_per_s"] for r in out["results"]
            if r["variant"] == "fp32" and r["clips_per_s"]}
    for r in out["results"]:
        if r["clips_per_s"] and r["task"] in base and r["variant"] != "fp32":
            print(f"[speedup] {r['task']} {r['variant']}: {r['clips_per_s'] / base[r['task']]:.2f}x fp32")
    anchor = {r["variant"]: r["clips_per_s"] for r in out["results"] if r["task"] == "tv_cls" and r["clips_per_s"]}
    for r in out["results"]:
        if r["task"] in MAC_TASKS and r["clips_per_s"] and anchor.get(r["variant"]):
            print(f"[vs torchvision] {r['task']} {r['variant']}: {r['clips_per_s'] / anchor[r['variant']]:.2f}x "
                  f"the clips/s of torchvision r2plus1d_18's supervised step")
    if args.out:
        print(f"[bench] wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
