"""Optimisers of the recipes: SGD with momentum (the paper's) or AdamW.

Must not know about schedules' epochs or checkpoints (the loops own those).
"""
from __future__ import annotations

import torch

from train.options import OPTIMIZERS


def make_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's recipe), or AdamW (betas 0.9/0.999): in runs of a few
    hundred steps (the CPU demo) AdamW gets out of the initial plateau far sooner."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")

