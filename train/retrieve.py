"""Nearest-neighbour video retrieval with a backbone's pooled features (docs/method.md section 5).

    python train/retrieve.py --checkpoint runs/ucf101/<run-id>/pretrain/last.pt
    python train/retrieve.py --checkpoint r2plus1d_18-91a641e6.pth --dataset ucf101   # torchvision weights
    python train/retrieve.py --init random --backbone r2plus1d_18 --dataset ucf101     # baseline

Each video's feature is the backbone's pooled feature (``forward_features``) averaged over
``--num-clips`` uniformly spaced clips (the test clips of train/evaluate.py) and L2-normalised.
The test videos of the split are the queries, its train videos the gallery; a query is a hit at
k when one of its k nearest gallery videos (cosine similarity) has its class. Reports
R@1/5/10/20/50 in percent.

Accepts pretraining and finetuning checkpoints of this project (the backbone, classifier
dropped), torchvision-format state dicts (``--backbone`` or inferred from the keys), or
``--init random`` (seeded). Writes ``metrics.json`` and ``neighbours.npz`` (per query its 50
nearest gallery videos) to ``--out-dir`` (default: ``retrieve_<stage>`` beside the checkpoint's
stage directory).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

if __package__ in (None, ""):   # run as `python train/retrieve.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.checks import check_file
from core.errors import UsageError, exit_with
from core.flags import CONFIG_HELP, flag, parse, redefault
from train.options import EvalClipFlags

DEFAULT_KS = (1, 5, 10, 20, 50)


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def nearest_neighbours(query_feats: np.ndarray, gallery_feats: np.ndarray, k: int,
                       chunk: int = 1024) -> np.ndarray:
    """[Q, min(k, G)] gallery indices by decreasing cosine similarity (ties: lower index first)."""
    q = l2_normalise(query_feats)
    g = l2_normalise(gallery_feats)
    k = min(int(k), len(g))
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ g.T
        out[s:s + chunk] = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return out


def recall_at_k(query_feats: np.ndarray, query_labels: np.ndarray, gallery_feats: np.ndarray,
                gallery_labels: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """{"R@k": percent of queries with a same-class video among their k nearest gallery videos}.

    Cosine similarity on L2-normalised features; k larger than the gallery uses the whole
    gallery."""
    query_labels = np.asarray(query_labels)
    gallery_labels = np.asarray(gallery_labels)
    if len(query_feats) != len(query_labels) or len(gallery_feats) != len(gallery_labels):
        raise ValueError("features and labels differ in length")
    if len(gallery_labels) == 0:
        raise ValueError("empty gallery")
    ks = sorted(int(k) for k in ks)
    nn = nearest_neighbours(query_feats, gallery_feats, max(ks))
    hits = gallery_labels[nn] == query_labels[:, None]              # [Q, K]
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), np.iinfo(np.int64).max)
    n = max(len(query_labels), 1)
    return {f"R@{k}": 100.0 * float((first_hit < k).sum()) / n for k in ks}


# --------------------------------------------------------------------------------------------
# Backbones from any checkpoint
# --------------------------------------------------------------------------------------------


def load_feature_backbone(checkpoint: Path | None, init: str = "checkpoint", backbone: str | None = None,
                          seed: int = 0, trust: bool = False):
    """(model, ckpt dict, description). The model has the checkpoint's backbone weights (its
    classifier is irrelevant: only forward_features is used)."""
    import torch

    from train.models import BACKBONES, BackboneLoadError, build_backbone, load_backbone

    if init == "random":
        torch.manual_seed(seed)
        name = backbone or BACKBONES[0]
        return build_backbone(name), {}, f"random init {name} (seed {seed})"
    if checkpoint is None:
        raise UsageError("--checkpoint", "(none)", "pass a checkpoint, or --init random")
    check_file("--checkpoint", checkpoint)
    from train.inference import backbone_weights, load_checkpoint

    obj = load_checkpoint(checkpoint, trust=trust)    # data only, unless --trust-checkpoint
    sd, info = backbone_weights(obj, checkpoint)
    ckpt = info.get("checkpoint", {})
    names = [ckpt.get("backbone_name") or backbone] if (ckpt.get("backbone_name") or backbone) else list(BACKBONES)
    errors = []
    for name in names:
        model = build_backbone(name)
        try:
            report = load_backbone(model, sd, strict=True)
        except BackboneLoadError as e:
            errors.append(f"{name}: {str(e).splitlines()[1] if len(str(e).splitlines()) > 1 else e}")
            continue
        kind = ckpt.get("kind", "state dict")
        return model, ckpt, f"{kind} checkpoint {checkpoint} ({name}, {len(report.loaded)} tensors)"
    raise SystemExit(f"{checkpoint} does not match any backbone ({'; '.join(errors)})")


def video_features(model, loader, device, norm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [V, 512] averaged over clips and L2-normalised, video ids, labels)."""
    from train.inference import run_clips

    feats, videos, labels = run_clips(model, loader, device, norm,
                                      fn=lambda m, x: m.forward_features(x), progress="features")
    return l2_normalise(feats.mean(axis=1)).astype(np.float32), videos, labels


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


INITS = ("checkpoint", "random")


@dataclass
class RetrieveFlags(EvalClipFlags):
    """The flags of retrieve.py: where the backbone comes from, the videos and the k of R@k (the
    clip geometry, batching and device: EvalClipFlags)."""

    checkpoint: Path = flag(None, "pretraining / finetuning checkpoint, or a torchvision-format state dict",
                            type=Path)
    init: str = flag("checkpoint", "checkpoint | random", choices=INITS)
    backbone: str = flag(None, "backbone name (default: the checkpoint's, or inferred)")
    config_from: Path = flag(None, "take dataset, split and clip geometry from this checkpoint's config (e.g. the "
                                   "pretraining's, so that a --init random baseline sees the same clips)", type=Path)
    dataset: str = flag(None, "default: the checkpoint's")
    split: int = flag(None, "default: the checkpoint's, else 1", type=int, lo=1, hi=3)
    norm: str = flag(None, "mean/std constants (default: the checkpoint's, else kinetics)",
                     choices=("imagenet", "kinetics"))
    ks: list = flag(list(DEFAULT_KS), "the k of R@k", nargs="+", lo=1)
    seed: int = flag(0, "seed of --init random", lo=0)
    bn_estimate: int = flag(20, "--init random: estimate the BN statistics on this many batches of training-video "
                            "clips first (0 = keep the untrained mean 0 / variance 1)", lo=0)
    limit: int = redefault(EvalClipFlags, "limit", None, help="only the first N queries and N gallery videos")
    save_features: bool = flag(False, "also write features.npz")
    config: str = flag(None, CONFIG_HELP, metavar="FILE")

    def check(self) -> None:
        """The files must exist (before any is read); then the clip checks of the group."""
        if self.init != "random" and self.checkpoint is None:
            raise UsageError("--checkpoint", "(none)", "pass a checkpoint, or --init random")
        check_file("--checkpoint", self.checkpoint)
        check_file("--config-from", self.config_from)
        super().check()


def parse_args(argv=None) -> RetrieveFlags:
    return parse(RetrieveFlags, argv, description=__doc__.split("\n\n")[0], prog="retrieve.py")


def main(argv=None) -> dict:
    args = parse_args(argv)
    from train.inference import (checkpoint_config, clip_geometry, default_out_dir, eval_batches,
                                open_checkpoint_cache, resolve_device, write_json)

    t0 = time.time()
    model, ckpt, desc = load_feature_backbone(args.checkpoint, args.init, args.backbone, args.seed,
                                              args.trust_checkpoint)
    if args.config_from is not None:
        from train.utils.checkpoint import load_checkpoint

        ref = load_checkpoint(args.config_from, trust=args.trust_checkpoint)
        ckpt = {k: ref.get(k) for k in ("config", "dataset", "split", "cache")}
    cfg = checkpoint_config(ckpt)
    dataset = args.dataset or ckpt.get("dataset") or cfg.get("dataset")
    if not dataset:
        raise SystemExit("which dataset? pass --dataset (the checkpoint does not name one)")
    split = int(args.split or (ckpt.get("split") if dataset == ckpt.get("dataset") else None)
                or cfg.get("split") or 1)
    index = open_checkpoint_cache(ckpt, args.cache_dir or cfg.get("cache_dir"), dataset)
    geo = clip_geometry(cfg, args.frames, args.stride, args.crop, args.short_side)
    device = resolve_device(args.device)
    model.to(device)
    norm = args.norm or cfg.get("norm", "kinetics")
    print(f"[retrieve] {desc}: {dataset} split {split}, {args.num_clips} clips of {geo['frames']}x{geo['crop']}^2 "
          f"per video (stride {geo['stride']}) on {device}", flush=True)

    bn_batches = 0
    if args.init == "random" and args.bn_estimate:
        # the gallery's (training videos') clips, never the queries': no test video is seen
        from train.inference import estimate_bn_statistics
        from train.mac import eval_transform

        _, bn_loader = eval_batches(index, split, "train", geo, 1, max(args.batch_size, 8), args.workers, None,
                                    what="retrieval")
        clips = (eval_transform(b, norm=norm, device=device)["clips"].flatten(0, 1) for b in bn_loader)
        bn_batches = estimate_bn_statistics(model, clips, args.bn_estimate)
        print(f"[retrieve] BN statistics of the random init estimated on {bn_batches} batches of training clips",
              flush=True)
    feats = {}
    for part in ("train", "test"):
        _, loader = eval_batches(index, split, part, geo, args.num_clips, args.batch_size, args.workers, args.limit,
                                 what="retrieval")
        feats[part] = video_features(model, loader, device, norm)
    (gf, gv, gl), (qf, qv, ql) = feats["train"], feats["test"]
    metrics = recall_at_k(qf, ql, gf, gl, args.ks)
    metrics.update(num_queries=int(len(ql)), num_gallery=int(len(gl)))

    if args.out_dir:
        out_dir = args.out_dir
    elif args.checkpoint is not None and args.init != "random":
        out_dir = default_out_dir(args.checkpoint, "retrieve")
        if args.checkpoint.resolve().parent.name.startswith("finetune"):
            out_dir = out_dir.with_name(out_dir.name + "_finetuned")
    else:
        out_dir = Path("runs") / dataset / f"retrieve_random_{args.backbone or 'r2plus1d_18'}"
    out_dir.mkdir(parents=True, exist_ok=True)
    nn = nearest_neighbours(qf, gf, 50)
    np.savez_compressed(out_dir / "neighbours.npz", query_names=index.names[qv].astype(str), query_labels=ql,
                        gallery_names=index.names[gv].astype(str), gallery_labels=gl, neighbours=nn)
    if args.save_features:
        np.savez_compressed(out_dir / "features.npz", query=qf, query_video=qv, gallery=gf, gallery_video=gv)
    record = {"metrics": metrics, "source": desc, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
              "init": args.init, "seed": args.seed if args.init == "random" else None, "bn_estimate_batches": bn_batches,
              "dataset": dataset,
              "split": split, "num_clips": args.num_clips, **geo,
              "norm": norm, "device": str(device), "limit": args.limit, "config_file": args.config,
              "cache": {"root": str(index.root), "manifest_hash": index.manifest_hash},
              "wall_seconds": round(time.time() - t0, 2)}
    write_json(out_dir / "metrics.json", record)
    print("[retrieve] " + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k.startswith("R@"))
          + f"  ({len(ql)} queries, {len(gl)} gallery) -> {out_dir}", flush=True)
    return metrics


def console() -> None:
    """The ``mac-retrieve`` console command (pyproject.toml): the same as ``python train/retrieve.py``."""
    exit_with(main, "retrieve.py")


if __name__ == "__main__":
    console()
