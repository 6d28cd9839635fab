"""Floating-point operations of one training step, counted on the trainers' own modules: what a
"compute-matched" baseline matches (train/controls.py's scratch arms, benchmarks/bench_step_flops.py).

torch's ``FlopCounterMode`` counts the convolutions and matrix products of the forward and the
backward; elementwise work, the data pipeline and the optimiser are left out (a few percent of a
step for these networks, and the same for every arm). FLOPs depend on shapes only, so the input
is random, of the stage's batch size and clip shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


def _count(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def pretrain_step(cfg) -> int:
    """One step of train/pretrain.py with PretrainConfig ``cfg``: ``MACModel`` built as pretrain.py
    builds it, forward (with the key encoder, projection and InfoNCE for MAC-SC), backward."""
    from train.mac_model import MACModel

    n_out = cfg.k ** cfg.n if cfg.loss == "ce" else cfg.n
    model = MACModel(cfg.backbone, n_out, cfg.dropout, cfg.method == "mac-sc", cfg.proj_hidden, cfg.proj_dim,
                     cfg.queue_size, cfg.moco_momentum, cfg.temperature, cfg.shuffle_bn_groups, cfg.seed)
    x = torch.randn(cfg.batch_size, 3, cfg.frames, cfg.crop, cfg.crop)

    def step():
        out = model(x, x.clone() if cfg.method == "mac-sc" else None, shuffle_seed=0, symmetric=cfg.symmetric)
        loss = F.cross_entropy(out["head"].float(), torch.zeros(x.shape[0], dtype=torch.long))
        for lg in out.get("con_logits", []):
            loss = loss + F.cross_entropy(lg, torch.zeros(lg.shape[0], dtype=torch.long))
        loss.backward()
    return _count(step)


def supervised_step(backbone: str, batch: int, frames: int, crop: int, num_classes: int) -> int:
    """One step of train/finetune.py from random init: its model (``build_backbone`` + fc),
    forward, cross-entropy, backward."""
    from train.models import build_backbone

    model = build_backbone(backbone, num_classes=num_classes)
    x = torch.randn(batch, 3, frames, crop, crop)

    def step():
        F.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long)).backward()
    return _count(step)


def pretrain_step_ratio(pt_cfg, ft_cfg, num_classes: int) -> float:
    """A pretraining step's FLOPs over a finetuning step's: how many supervised steps one step of
    ``pt_cfg``'s pretraining is worth."""
    torch.manual_seed(0)
    return pretrain_step(pt_cfg) / supervised_step(ft_cfg.backbone, ft_cfg.batch_size, ft_cfg.frames, ft_cfg.crop,
                                                    num_classes)
