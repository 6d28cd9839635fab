"""The MAC model and its losses (docs/method.md section 3): the query encoder with the pretext head and,
for MAC-SC, MoCo v2's momentum key encoder, projection and queue; the alpha objective (CE over
the k^n tuples, or MSE on the n alphas) and InfoNCE. Kept apart from the training script
(train/pretrain.py), as MoCo keeps its builder.py apart from main_moco.py: the benchmarks time
exactly this model and these losses.

Shuffle BN (MoCo): under DDP the key clips of all ranks are gathered, randomly permuted, each
rank encodes its share, and the keys are gathered and un-permuted (MoCo's reference; the
permutation comes from a (seed, step) generator, identical on every rank, so nothing is
broadcast). On one process there is no other GPU to shuffle to: the key batch is permuted and
encoded in --shuffle-bn-groups (default 2) sub-batches, each with its own BN statistics, then
un-permuted. A key is thus normalised with the statistics of a random half of the batch, not the
full-batch statistics its query saw, so a positive pair no longer shares identical batch
statistics (the shortcut shuffle BN exists to remove), as on 2 GPUs. Queries keep full-batch BN:
splitting them too would change the statistics the pretext head trains on. Sub-batches never go
below 2 clips; --shuffle-bn-groups 1 turns it off.

No host-device synchronisation in a step (tests/test_gpu_path.py counts them): the permutations
are drawn on the host and copied asynchronously from pinned memory, the queue pointer has a host
mirror (``queue_ptr`` stays the checkpointed buffer, updated without a read-back), and the loss
constants live on the device. Under a bf16 autocast the key clips are all-gathered in bf16: the
key encoder's first op (the stem's Conv3d) casts them to bf16 anyway, so the keys are bit for bit
the same for half the bytes (1.2 -> 0.6 GB per rank and step at 8 x B64).
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from train.utils.distributed import autocast_bf16_active, concat_all_gather, to_device
from train.mac import alpha_table, alpha_values  # noqa: F401 (alpha_values re-exported)
from train.models import build_backbone


def projection(in_dim: int, hidden: int, dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


class MACModel(nn.Module):
    """``backbone`` (torchvision names; its ``fc`` is the pretext head: k^n logits or n alphas),
    and for MAC-SC ``proj``, a momentum copy ``backbone_k``/``proj_k`` and the key queue."""

    gather_bf16 = True      # bf16 all-gather of the key clips under a bf16 autocast (module docstring)

    def __init__(self, backbone: str, n_out: int, dropout: float = 0.5, contrastive: bool = False,
                 proj_hidden: int = 512, proj_dim: int = 128, queue_size: int = 65536,
                 momentum: float = 0.999, temperature: float = 0.2, shuffle_bn_groups: int = 2,
                 seed: int = 0):
        super().__init__()
        self.backbone = build_backbone(backbone, num_classes=n_out)
        self.dropout = nn.Dropout(dropout)
        self.contrastive = contrastive
        self.m, self.T, self.groups = momentum, temperature, max(1, shuffle_bn_groups)
        if contrastive:
            self.proj = projection(self.backbone.feature_dim, proj_hidden, proj_dim)
            self.backbone_k = copy.deepcopy(self.backbone)
            self.backbone_k.fc = nn.Identity()            # the key encoder needs no pretext head
            self.proj_k = copy.deepcopy(self.proj)
            for p in [*self.backbone_k.parameters(), *self.proj_k.parameters()]:
                p.requires_grad_(False)
            g = torch.Generator().manual_seed(seed)
            self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim, generator=g), dim=1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._ptr = 0       # host mirror of queue_ptr: reading the buffer would sync every step

    @property
    def queue_pointer(self) -> int:
        """The ring buffer's write position (no device read)."""
        return self._ptr

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.contrastive:
            self._ptr = int(self.queue_ptr)          # once per load, not per step

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        return self.backbone.fc(self.dropout(feat))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x))

    def _pairs(self):
        q = dict(self.backbone.named_parameters()) | {"p." + k: v for k, v in self.proj.named_parameters()}
        k = dict(self.backbone_k.named_parameters()) | {"p." + n: v for n, v in self.proj_k.named_parameters()}
        return [k[n] for n in k], [q[n] for n in k]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q (parameters only, as MoCo; BN buffers of the
        key encoder are its own running statistics)."""
        pk, pq = self._pairs()
        torch._foreach_mul_(pk, self.m)
        torch._foreach_add_(pk, [p.detach().to(k.dtype) for p, k in zip(pq, pk)], alpha=1 - self.m)

    @torch.no_grad()
    def encode_keys(self, x: torch.Tensor, shuffle_seed: int) -> torch.Tensor:
        """Key embeddings with shuffle BN (see the module docstring); same order as x."""
        fmt = (torch.channels_last_3d if x.dim() == 5 and not x.is_contiguous()
               and x.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format)
        # gathers and gathers-by-index return standard layout: restore the input's layout
        enc = lambda t: F.normalize(self.proj_k(self.backbone_k.forward_features(
            t.contiguous(memory_format=fmt))).float(), dim=1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world, rank, b = dist.get_world_size(), dist.get_rank(), x.shape[0]
            if self.gather_bf16 and x.dtype == torch.float32 and autocast_bf16_active(x.device.type):
                x = x.to(torch.bfloat16)                        # what the stem's conv casts it to
            xs = concat_all_gather(x)
            perm, inv = _permutation(xs.shape[0], shuffle_seed, x.device)
            k = enc(xs[perm.view(world, b)[rank]])              # this rank's share of shuffled keys
            return concat_all_gather(k)[inv.view(world, b)[rank]]
        groups = min(self.groups, x.shape[0] // 2)             # >= 2 clips per BN sub-batch
        if groups <= 1:
            return enc(x)
        perm, inv = _permutation(x.shape[0], shuffle_seed, x.device)
        k = torch.cat([enc(c) for c in x[perm].tensor_split(groups)])
        return k[inv]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Push the keys of ALL ranks (gathered) into the ring buffer; the pointer wraps."""
        keys = concat_all_gather(keys)
        n, size = keys.shape[0], self.queue.shape[0]
        if size % n:
            raise RuntimeError(f"queue size {size} is not divisible by the {n} keys per step")
        ptr = self._ptr
        self.queue[ptr:ptr + n] = keys.to(self.queue.dtype)
        self._ptr = (ptr + n) % size
        self.queue_ptr.fill_(self._ptr)                        # a device fill: no read-back

    def _infonce(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        with torch.autocast(q.device.type, enabled=False):     # logits / 0.2 over 65k keys: fp32
            q = F.normalize(q.float(), dim=1)
            l_pos = (q * k).sum(1, keepdim=True)
            l_neg = q @ self.queue.clone().detach().T          # clone: the queue changes below
            return torch.cat([l_pos, l_neg], 1) / self.T        # the positive is class 0

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor | None = None, shuffle_seed: int = 0,
                symmetric: bool = False) -> dict:
        feat = self.backbone.forward_features(x_q)
        out = {"head": self.head(feat)}
        if self.contrastive and x_k is not None:
            self.momentum_update()
            k = self.encode_keys(x_k, shuffle_seed)
            out["con_logits"] = [self._infonce(self.proj(feat), k)]
            keys = [k]
            if symmetric:   # the unblended view as query against the blended view's key
                q2 = self.proj(self.backbone.forward_features(x_k))
                k2 = self.encode_keys(x_q, shuffle_seed + 1)
                out["con_logits"].append(self._infonce(q2, k2))
                keys.append(k2)
            self.enqueue(torch.cat(keys))
        return out


def _permutation(n: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm, inverse) of n from a (seed) CPU generator: the same on every rank and device type;
    copied to `device` without a sync."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return to_device(perm, device), to_device(torch.argsort(perm), device)


def pretext_loss(head: torch.Tensor, b: dict, loss: str, k: int, n: int, reduction: str = "mean"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, per-clip correct [B], per-segment correct [B, n]) of the alpha objective
    (reduction "none": the loss per clip [B]).
    ce: cross-entropy over the k^n tuple classes; a segment is correct when the predicted
    tuple's alpha for it is the true one. mse / mse-n: sigmoid of n outputs vs the alphas, MSE;
    a segment is correct when its prediction is within half the preset spacing of its alpha
    (mse: the nearest preset alpha is the true one). A clip is correct when all its segments are."""
    head = head.float()
    if loss == "ce":
        pred = head.argmax(1)
        place = k ** torch.arange(n - 1, -1, -1, device=head.device)          # first segment most significant
        seg = (pred[:, None] // place) % k == (b["label"][:, None] // place) % k
        return F.cross_entropy(head, b["label"], reduction=reduction), pred == b["label"], seg
    pred, target = torch.sigmoid(head), b["alpha_target"].float()
    if loss == "mse":
        presets = alpha_table(k, head.device)                  # made once per device
        seg = (pred[..., None] - presets).abs().argmin(-1) == b["alpha_idx"]
    else:
        seg = (pred - target).abs() < 0.5 / (k - 1)
    per = F.mse_loss(pred, target, reduction="none").mean(1) if reduction == "none" else F.mse_loss(pred, target)
    return per, seg.all(1), seg


def pretext_chance(cfg) -> tuple[float | None, float | None]:
    """(clip, segment) accuracy of guessing: 1 / k^n and 1 / k for ce and mse; for mse-n (targets
    uniform in (0, 1]) a guess is within half the spacing, 1 / (2 (k - 1)) either side, with
    probability about 1 / (k - 1) per segment."""
    if cfg.loss == "mse-n":
        seg = min(1.0, 1.0 / (cfg.k - 1))
        return seg ** cfg.n, seg
    return 1.0 / cfg.k ** cfg.n, 1.0 / cfg.k


def compute_losses(out: dict, b: dict, cfg) -> dict[str, torch.Tensor]:
    """The weighted pretext (+ contrastive) loss and the accuracies logged with it; `cfg` has
    loss, k, n, cls_weight and con_weight (a PretrainConfig)."""
    cls, correct, seg = pretext_loss(out["head"], b, cfg.loss, cfg.k, cfg.n)
    terms = {"loss_cls": cls, "acc": correct.float().mean()}
    for j in range(cfg.n):
        terms[f"acc_seg{j}"] = seg[:, j].float().mean()
    total = cfg.cls_weight * cls
    if "con_logits" in out:
        con = [F.cross_entropy(lg, torch.zeros(lg.shape[0], dtype=torch.long, device=lg.device))
               for lg in out["con_logits"]]
        terms["loss_con"] = sum(con) / len(con)
        terms["acc_con"] = (out["con_logits"][0].argmax(1) == 0).float().mean()
        total = total + cfg.con_weight * terms["loss_con"]
    terms["loss"] = total
    return terms
