#!/usr/bin/env python
"""Train-step throughput benchmark for the MAC video backbones.

Measures clips/s and peak GPU memory of one optimisation step (forward, backward, SGD with
lr 0.01, momentum 0.9, weight decay 1e-4) on synthetic clips, for

  tasks
    ours_cls  our r2plus1d_18 (train.models) + fc-400, cross-entropy
    tv_cls    torchvision's r2plus1d_18, same settings (skipped when torchvision won't import)
    mac_s     MAC-S-2: our backbone -> dropout 0.5 -> linear head (16 = 4^2 alpha tuples), CE
    mac_sc    MAC-SC-2: MAC-S-2 on the query clip + MoCo-v2 term: momentum encoder (0.999)
              key forward under no_grad, 512-512-128 projection MLP, 65,536 x 128 queue,
              temperature 0.2, loss = 1.0 * CE + 0.5 * contrastive CE
  variants
    fp32               plain fp32 (cuDNN's TF32 setting is left at torch's default; printed)
    bf16               torch.autocast bf16
    bf16_cl3d          bf16 + memory_format=torch.channels_last_3d (model and input)
    bf16_cl3d_compile  bf16 + channels_last_3d + torch.compile(model)

With torchvision importable it also checks that torchvision's r2plus1d_18 / r3d_18 state dicts
load into ours with strict=True and ours into theirs, and that both then compute the same
outputs (PASS/FAIL lines, "interop" in the JSON).

Run from the repository root with the project importable (``pip install -e .``, as in the
project venv; otherwise prefix ``PYTHONPATH=.``).

GPU (defaults: B=64, 3x16x112x112, warmup 5, 20 timed steps, every variant for ours_cls and
tv_cls, bf16_cl3d for mac_s / mac_sc):

    python benchmarks/bench_train_step.py --out results.json

CPU smoke test (tiny sizes; checks that every code path runs):

    python benchmarks/bench_train_step.py --device cpu --batch 2 --frames 8 --size 64 --steps 3

The input batch is generated once on the device (no data loading); timings use
torch.cuda.synchronize around the timed steps. Exit status 1 if any configuration failed or an
interop check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import sys
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

from train.models import BACKBONES, build_backbone, load_backbone

VARIANTS: dict[str, dict[str, bool]] = {
    "fp32": dict(bf16=False, cl3d=False, compile=False),
    "bf16": dict(bf16=True, cl3d=False, compile=False),
    "bf16_cl3d": dict(bf16=True, cl3d=True, compile=False),
    "bf16_cl3d_compile": dict(bf16=True, cl3d=True, compile=True),
}
TASKS = ("ours_cls", "tv_cls", "mac_s", "mac_sc")

LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
MAC_CLASSES = 16  # k^n alpha tuples for MAC-*-2 (k = 4, n = 2)
MOCO_MOMENTUM, MOCO_T, PROJ_HIDDEN, PROJ_DIM = 0.999, 0.2, 512, 128
W_CLS, W_CON = 1.0, 0.5


# --------------------------------------------------------------------------------------------
# models for the MAC steps
# --------------------------------------------------------------------------------------------


class MacS(nn.Module):
    """Backbone -> dropout 0.5 -> linear head over the k^n alpha tuples."""

    def __init__(self, backbone: str, num_classes: int = MAC_CLASSES) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, num_classes=0)
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(self.backbone.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone.forward_features(x)))


def projection_mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, PROJ_HIDDEN), nn.ReLU(inplace=True), nn.Linear(PROJ_HIDDEN, PROJ_DIM)
    )


class MacSCQuery(nn.Module):
    """Query encoder: backbone + MAC-S head + MoCo projection."""

    def __init__(self, backbone: str, num_classes: int = MAC_CLASSES) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, num_classes=0)
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(self.backbone.feature_dim, num_classes)
        self.proj = projection_mlp(self.backbone.feature_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone.forward_features(x)
        return self.head(self.dropout(f)), self.proj(f)


class MacSCKey(nn.Module):
    """Momentum (key) encoder: backbone + projection, no gradients."""

    def __init__(self, query: MacSCQuery) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(query.backbone)
        self.proj = copy.deepcopy(query.proj)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone.forward_features(x))


# --------------------------------------------------------------------------------------------
# step builders: each returns (step() -> loss tensor, clips per step)
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
    queue: int
    backbone: str

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


def build_mac_s_step(s: Setup) -> Callable[[], torch.Tensor]:
    return build_cls_step(s, MacS(s.backbone), MAC_CLASSES)


def build_mac_sc_step(s: Setup) -> Callable[[], torch.Tensor]:
    query = s.prepare(MacSCQuery(s.backbone)).train()
    key = s.prepare(MacSCKey(query)).train()
    opt = sgd(query.parameters())
    q_fwd, k_fwd = s.maybe_compile(query), s.maybe_compile(key)
    q_params = list(query.backbone.parameters()) + list(query.proj.parameters())
    k_params = list(key.backbone.parameters()) + list(key.proj.parameters())
    queue = F.normalize(torch.randn(s.queue, PROJ_DIM, device=s.device), dim=1)
    state = {"ptr": 0}
    x_q, x_k = s.clip(0), s.clip(1)  # blended clip / second augmentation without blending
    y = torch.randint(0, MAC_CLASSES, (s.batch,), device=s.device)
    pos = torch.zeros(s.batch, dtype=torch.long, device=s.device)

    def step() -> torch.Tensor:
        with s.autocast():
            logits_cls, q = q_fwd(x_q)
        q = F.normalize(q.float(), dim=1)
        with torch.no_grad():
            torch._foreach_mul_(k_params, MOCO_MOMENTUM)
            torch._foreach_add_(k_params, q_params, alpha=1.0 - MOCO_MOMENTUM)
            with s.autocast():
                k = k_fwd(x_k)
            k = F.normalize(k.float(), dim=1)
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ queue.t()
        logits_con = torch.cat([l_pos, l_neg], dim=1) / MOCO_T
        loss = W_CLS * F.cross_entropy(logits_cls.float(), y) + W_CON * F.cross_entropy(
            logits_con, pos
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # enqueue / dequeue
            idx = (state["ptr"] + torch.arange(s.batch, device=s.device)) % s.queue
            queue[idx] = k
            state["ptr"] = (state["ptr"] + s.batch) % s.queue
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
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(task: str, variant: str, args, tv_video) -> Result:
    device = torch.device(args.device)
    v = VARIANTS[variant]
    s = Setup(
        device=device, batch=args.batch, frames=args.frames, size=args.size, bf16=v["bf16"],
        cl3d=v["cl3d"], compile=v["compile"], compile_mode=args.compile_mode, queue=args.queue,
        backbone=args.backbone,
    )
    model_name = {
        "ours_cls": f"ours/{args.backbone}",
        "tv_cls": f"torchvision/{args.backbone}",
        "mac_s": f"ours/{args.backbone}+MAC-S-2",
        "mac_sc": f"ours/{args.backbone}+MAC-SC-2",
    }[task]
    r = Result(task, model_name, variant, args.batch, args.frames, args.size, args.warmup, args.steps)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        if task == "ours_cls":
            step = build_cls_step(s, build_backbone(args.backbone, args.num_classes), args.num_classes)
        elif task == "tv_cls":
            step = build_cls_step(s, getattr(tv_video, args.backbone)(num_classes=args.num_classes),
                                  args.num_classes)
        elif task == "mac_s":
            step = build_mac_s_step(s)
        elif task == "mac_sc":
            step = build_mac_sc_step(s)
        else:
            raise ValueError(task)

        sync(device)
        t0 = time.perf_counter()
        first = step()
        for _ in range(args.warmup - 1):
            step()
        sync(device)
        r.warmup_s = time.perf_counter() - t0
        r.loss_first = float(first)

        t0 = time.perf_counter()
        for _ in range(args.steps):
            last = step()
        sync(device)
        dt = time.perf_counter() - t0
        r.loss_last = float(last)
        r.step_ms = 1000.0 * dt / args.steps
        r.clips_per_s = args.batch * args.steps / dt
        if not (math.isfinite(r.loss_first) and math.isfinite(r.loss_last)):
            r.notes.append("non-finite loss")
            if device.type == "cpu" and s.bf16:
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
        step = None  # noqa: F841  (free the model / optimizer before the next configuration)
        if s.compile:
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (>= 1)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--backbone", default="r2plus1d_18", choices=BACKBONES)
    p.add_argument("--num-classes", type=int, default=400, help="fc size for ours_cls / tv_cls")
    p.add_argument("--queue", type=int, default=65536, help="MoCo queue length (mac_sc)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {TASKS}")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"variants for ours_cls / tv_cls, comma list of {tuple(VARIANTS)}")
    p.add_argument("--mac-variants", default="bf16_cl3d", help="variants for mac_s / mac_sc")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (default, reduce-overhead, max-autotune, ...)")
    p.add_argument("--no-cudnn-benchmark", action="store_true")
    p.add_argument("--skip-interop", action="store_true")
    p.add_argument("--out", default=None, help="write results JSON here (after every config)")
    args = p.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.variants = [v for v in args.variants.split(",") if v]
    args.mac_variants = [v for v in args.mac_variants.split(",") if v]
    for t in args.tasks:
        if t not in TASKS:
            p.error(f"unknown task {t!r}; choose from {TASKS}")
    for v in args.variants + args.mac_variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {tuple(VARIANTS)}")
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be >= 1")
    if args.backbone == "r2plus1d_10" and "tv_cls" in args.tasks:
        args.tasks.remove("tv_cls")  # torchvision has no r2plus1d_10
    return args


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark

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
    for task in args.tasks:
        if task == "tv_cls" and tv_video is None:
            print("[bench] skipping tv_cls: torchvision not importable")
            continue
        for variant in args.variants if task in ("ours_cls", "tv_cls") else args.mac_variants:
            plan.append((task, variant))

    header = f"{'task':9s} {'model':32s} {'variant':18s} {'clips/s':>9s} {'step ms':>9s} " \
             f"{'warmup s':>9s} {'peak GiB':>9s} {'loss':>15s}"
    print(f"[bench] B={args.batch} 3x{args.frames}x{args.size}x{args.size} device={args.device} "
          f"warmup={args.warmup} steps={args.steps}")
    print(header)
    for task, variant in plan:
        r = run_config(task, variant, args, tv_video)
        out["results"].append(asdict(r))
        save()
        failed |= r.error is not None
        if r.clips_per_s is None:
            print(f"{task:9s} {r.model:32s} {variant:18s} ERROR {r.error[:200]}")
        else:
            loss = f"{r.loss_first:.3f}->{r.loss_last:.3f}"
            print(f"{task:9s} {r.model:32s} {variant:18s} {fmt(r.clips_per_s, '9.1f')} "
                  f"{fmt(r.step_ms, '9.1f')} {fmt(r.warmup_s, '9.1f')} "
                  f"{fmt(r.peak_mem_gib, '9.2f')} {loss:>15s}"
                  + (f"  ERROR: {r.error}" if r.error else "")
                  + (f"  {'; '.join(r.notes)}" if r.notes else ""))
        sys.stdout.flush()

    # speed-ups relative to fp32 of the same task
    base = {r["task"]: r["clips_per_s"] for r in out["results"]
            if r["variant"] == "fp32" and r["clips_per_s"]}
    for r in out["results"]:
        if r["clips_per_s"] and r["task"] in base and r["variant"] != "fp32":
            print(f"[speedup] {r['task']} {r['variant']}: {r['clips_per_s'] / base[r['task']]:.2f}x fp32")
    if args.out:
        print(f"[bench] wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
