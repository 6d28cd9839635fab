#!/usr/bin/env python
"""Compute per training step, counted: what the controls' "same number of steps" matches.

The compute-matched scratch baseline of train/controls.py and run_all.sh gets as many steps as
MAC's pretraining and finetuning together. That matches compute only as far as a pretraining step
costs what a supervised step costs. This counts the floating-point operations (torch's
``FlopCounterMode``: convolutions and matrix products, forward and backward) of one step of each,
on the product's own modules built from a preset's stage files exactly as the trainers build them
(train/flops.py, the counting controls.py's scratch-sc arm uses):

  mac-s       ``MACModel`` (train.mac_model) forward on the blended clip, the pretext loss, backward
  mac-sc      the same with the momentum key encoder on the second view, the projection, the
              queue and InfoNCE (``MACModel.forward`` with ``x_k``), backward
  supervised  finetune.py's model (``build_backbone`` + fc) forward, cross-entropy, backward

and the totals of the demo's schedules (steps per epoch x epochs of each stage file). Random input
of the stage files' clip shape and batch size; FLOPs do not depend on the values.

    python benchmarks/bench_step_flops.py                  # the demo preset
    python benchmarks/bench_step_flops.py --preset ucf101 --out flops.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch                                     # noqa: E402

from core import presets                         # noqa: E402
from core.flags import parse                     # noqa: E402
from train import flops                          # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--classes", type=int, default=6, help="classes of the finetuning dataset (demo: 6)")
    ap.add_argument("--steps", default="1100,440", help="pretraining,finetuning steps of the schedule to total "
                    "(demo: 50 and 20 epochs of 22 steps)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from train.finetune import FinetuneConfig
    from train.pretrain import PretrainConfig

    torch.manual_seed(0)
    res: dict = {"preset": args.preset}
    ft = parse(FinetuneConfig, presets.config_flag(args.preset, "finetune"), prog="finetune.py")
    sup = flops.supervised_step(ft.backbone, ft.batch_size, ft.frames, ft.crop, args.classes)
    res["supervised"] = {"gflops_per_step": sup / 1e9, "batch": ft.batch_size, "clip": [ft.frames, ft.crop, ft.crop]}
    pt_steps, ft_steps = (int(s) for s in args.steps.split(","))
    for method in ("mac-s", "mac-sc"):
        pt = parse(PretrainConfig, [*presets.config_flag(args.preset, "pretrain"), "--method", method,
                                    *(["--queue-size", "1024"] if method == "mac-sc" else [])], prog="pretrain.py")
        f = flops.pretrain_step(pt)
        total = pt_steps * f + ft_steps * sup
        res[method] = {"gflops_per_step": f / 1e9, "ratio_to_supervised_step": f / sup, "batch": pt.batch_size,
                       "total_pflops": total / 1e15, "scratch_total_pflops": (pt_steps + ft_steps) * sup / 1e15,
                       "total_ratio_to_scratch": total / ((pt_steps + ft_steps) * sup)}
    for k in ("supervised", "mac-s", "mac-sc"):
        r = res[k]
        extra = (f"  x{r['ratio_to_supervised_step']:.3f} a supervised step; {pt_steps}+{ft_steps} steps = "
                 f"x{r['total_ratio_to_scratch']:.3f} scratch's {pt_steps + ft_steps}") if k != "supervised" else ""
        print(f"{k:>10}: {r['gflops_per_step']:.2f} GFLOP per step (batch {r['batch']}){extra}")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
