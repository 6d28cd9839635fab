"""Test-time evaluation of a finetuned checkpoint (docs/method.md section 5).

    python train/evaluate.py --checkpoint runs/ucf101/<run-id>/finetune/best.pt [--split N] [--num-clips 10]

Every test video is cut into ``--num-clips`` uniformly spaced 16-frame clips (short side 128, centre
crop 112, the clip geometry of the finetuning config), the softmax of each clip is averaged per
video, and the script reports clip top-1/top-5, video top-1/top-5 and mean class accuracy.

Written to ``--out-dir`` (default: the stage directory beside the checkpoint's, ``finetune`` ->
``evaluate``, ``finetune_random`` -> ``evaluate_random``):
  metrics.json        the metrics, per-class accuracy, the confusion counts and their provenance
                      (checkpoint, dataset, split, clips)
  scores.npz          per video: name, label, averaged probabilities, top-5 predictions
  predictions.csv     the same, readable: video, label, top-5 classes and their probabilities
  confusion.png       confusion matrix (rows: true class, columns: predicted), row-normalised

``--reverse-time`` plays every clip backwards: a model that learnt motion swaps the classes that
are each other's reverse (the demo's MoveUp and MoveDown), one that learnt appearance does not.

The checkpoint records the dataset, split and training videos; evaluating on any video it was
trained on is refused (``SplitLeakError``).

The metric functions at the top of the file are pure (numpy in, numbers out) so that tests can
check them on known arrays.
"""
from __future__ import annotations

import csv
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):   # run as `python train/evaluate.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.checks import check_file
from core.errors import ToolError, exit_with
from core.flags import CONFIG_HELP, flag, parse
from train.inference import (checkpoint_config, clip_geometry, default_out_dir, default_short_side,  # noqa: F401
                             eval_batches, load_checkpoint, open_checkpoint_cache, resolve_device, run_clips,
                             write_json)
from train.options import EvalClipFlags

# --------------------------------------------------------------------------------------------
# Pure metric functions
# --------------------------------------------------------------------------------------------


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def topk_predictions(scores: np.ndarray, k: int) -> np.ndarray:
    """[N, C] scores -> [N, min(k, C)] class indices, best first (ties: lower class index first)."""
    scores = np.asarray(scores)
    k = min(int(k), scores.shape[1])
    # stable argsort of the negated scores keeps ties in class order
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """[N] bool: is the label among the k best-scoring classes."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return np.zeros(0, dtype=bool)
    return (topk_predictions(scores, k) == labels[:, None]).any(axis=1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose label is among the top k (0.0 for no rows)."""
    hit = topk_correct(scores, labels, k)
    return float(hit.mean()) if len(hit) else 0.0


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] int64 counts; row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} differ in shape")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes
                        or preds.min() < 0 or preds.max() >= num_classes):
        raise ValueError(f"class index out of range 0..{num_classes - 1}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """[C] recall per class from a confusion matrix; NaN for classes with no samples."""
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def mean_class_accuracy(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """Mean over the classes present in ``labels`` of their top-1 recall."""
    acc = per_class_accuracy(confusion_matrix(labels, preds, num_classes))
    acc = acc[~np.isnan(acc)]
    return float(acc.mean()) if len(acc) else 0.0


def average_clip_probs(clip_probs: np.ndarray, clip_video: np.ndarray, n_videos: int) -> np.ndarray:
    """Average per-clip probabilities [M, C] into per-video probabilities [n_videos, C].

    ``clip_video[i]`` is the video (0..n_videos-1) that clip i belongs to. A video without clips
    is an error: it would silently count as a miss."""
    clip_probs = np.asarray(clip_probs, dtype=np.float64)
    clip_video = np.asarray(clip_video, dtype=np.int64)
    sums = np.zeros((n_videos, clip_probs.shape[1]), dtype=np.float64)
    np.add.at(sums, clip_video, clip_probs)
    counts = np.bincount(clip_video, minlength=n_videos)[:n_videos]
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        raise ValueError(f"{int((counts == 0).sum())} videos have no clips (e.g. {missing})")
    return sums / counts[:, None]


def compute_metrics(clip_logits: np.ndarray, clip_video: np.ndarray, video_labels: np.ndarray,
                    num_classes: int) -> tuple[dict, np.ndarray]:
    """All test metrics from raw clip logits.

    Returns (metrics, video_probs): metrics in percent (clip_top1, clip_top5, video_top1,
    video_top5, mean_class_acc) plus counts; video_probs [V, C] = softmax averaged over clips."""
    video_labels = np.asarray(video_labels, dtype=np.int64)
    clip_video = np.asarray(clip_video, dtype=np.int64)
    clip_probs = softmax(clip_logits, axis=1)
    clip_labels = video_labels[clip_video]
    video_probs = average_clip_probs(clip_probs, clip_video, len(video_labels))
    video_pred = video_probs.argmax(axis=1)
    metrics = {
        "clip_top1": 100.0 * topk_accuracy(clip_probs, clip_labels, 1),
        "clip_top5": 100.0 * topk_accuracy(clip_probs, clip_labels, 5),
        "video_top1": 100.0 * topk_accuracy(video_probs, video_labels, 1),
        "video_top5": 100.0 * topk_accuracy(video_probs, video_labels, 5),
        "mean_class_acc": 100.0 * mean_class_accuracy(video_labels, video_pred, num_classes),
        "num_videos": int(len(video_labels)),
        "num_clips": int(len(clip_video)),
        "num_classes": int(num_classes),
    }
    return metrics, video_probs


# --------------------------------------------------------------------------------------------
# Split guard
# --------------------------------------------------------------------------------------------


class SplitLeakError(ToolError, RuntimeError):
    """The evaluation set contains videos the checkpoint was trained on."""


def check_no_overlap(train_videos, eval_videos, checkpoint: str | os.PathLike, dataset: str,
                     split: int, part: str = "test") -> None:
    """Raise SplitLeakError when any evaluation video is among the checkpoint's training videos.

    A checkpoint that does not record its training videos cannot be checked: also refused, since
    the guard is the only thing standing between a leaked split and a too-good number."""
    if train_videos is None:
        raise SplitLeakError(
            f"checkpoint {checkpoint} does not record the videos it was trained on "
            f"('train_videos'), so evaluating it on {dataset} split {split} ({part}) cannot be "
            "checked for overlap; re-save it from train/finetune.py")
    overlap = sorted(set(map(str, train_videos)) & set(map(str, eval_videos)))
    if overlap:
        few = ", ".join(overlap[:5]) + (", ..." if len(overlap) > 5 else "")
        raise SplitLeakError(
            f"refusing to evaluate checkpoint {checkpoint} on {dataset} split {split} ({part}): "
            f"{len(overlap)} of its {len(list(eval_videos))} evaluation videos were used to train it "
            f"(e.g. {few}). Evaluate on the split the checkpoint was finetuned on (--split), or "
            "finetune on this split first.")


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def save_scores(out_dir: Path, names, labels, probs, classes) -> None:
    """scores.npz (arrays) and predictions.csv (video, label, top-5 with probabilities)."""
    names = np.asarray(names).astype(str)
    labels = np.asarray(labels, dtype=np.int64)
    top = topk_predictions(probs, 5)
    np.savez_compressed(out_dir / "scores.npz", names=names, labels=labels, probs=probs.astype(np.float32),
                        top5=top, classes=np.asarray(classes).astype(str))
    with open(out_dir / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        k = top.shape[1]
        w.writerow(["video", "label", "label_name", "correct"]
                   + [c for j in range(k) for c in (f"pred{j + 1}", f"prob{j + 1}")])
        for n, y, t, p in zip(names, labels, top, probs):
            row = [n, int(y), classes[y], int(t[0] == y)]
            for j in range(k):
                row += [classes[t[j]], f"{p[t[j]]:.6f}"]
            w.writerow(row)


def plot_confusion(cm: np.ndarray, classes, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    C = len(classes)
    support = cm.sum(axis=1, keepdims=True)
    norm = cm / np.maximum(support, 1)
    size = min(max(4.0, 0.16 * C + 2.5), 24.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if C <= 60:
        ax.set_xticks(range(C))
        ax.set_yticks(range(C))
        fs = 8 if C <= 20 else 5
        ax.set_xticklabels(classes, rotation=90, fontsize=fs)
        ax.set_yticklabels(classes, fontsize=fs)
    if C <= 12:
        for i in range(C):
            for j in range(C):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_title(title or "confusion matrix (row-normalised)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


PARTS = ("test", "train", "all")


@dataclass
class EvaluateFlags(EvalClipFlags):
    """The flags of evaluate.py: the checkpoint and the videos it is evaluated on (the clip
    geometry, batching and device: EvalClipFlags)."""

    checkpoint: Path = flag(None, "a finetuning checkpoint (best.pt / last.pt)", type=Path, required=True)
    split: int = flag(None, "split 1..3 (default: the checkpoint's)", type=int, lo=1, hi=3)
    part: str = flag("test", "which videos to evaluate", choices=PARTS)
    reverse_time: bool = flag(False, "play every clip backwards (a motion probe: classes that are each other's "
                              "reverse, e.g. MoveUp / MoveDown, should swap; default out dir: <stage>_reversed)")
    config: str = flag(None, CONFIG_HELP, metavar="FILE")

    def check(self) -> None:
        """The checkpoint must exist (before any file is read); then the clip checks of the group."""
        check_file("--checkpoint", self.checkpoint)
        super().check()


def parse_args(argv=None) -> EvaluateFlags:
    return parse(EvaluateFlags, argv, description=__doc__.split("\n\n")[0], prog="evaluate.py")


def main(argv=None) -> dict:
    args = parse_args(argv)

    from train.models import build_backbone

    t0 = time.time()
    ckpt = load_checkpoint(args.checkpoint, trust=args.trust_checkpoint)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "finetune" or not ckpt.get("classes"):
        kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
        raise SystemExit(f"{args.checkpoint} is a {kind or 'foreign'} checkpoint, not a finetuning "
                         "one (train/finetune.py): evaluate needs the classifier and the class names. "
                         "For pretrained backbones use train/retrieve.py.")
    cfg = checkpoint_config(ckpt)
    dataset = ckpt.get("dataset") or cfg.get("dataset")
    split = int(args.split or ckpt.get("split") or cfg.get("split") or 1)
    classes = list(ckpt["classes"])
    index = open_checkpoint_cache(ckpt, args.cache_dir)
    if list(index.classes) != classes:
        raise SystemExit(f"the classes of {args.checkpoint} ({len(classes)}) differ from those of the "
                         f"{dataset} cache ({len(index.classes)}) at {index.root}")

    eval_names = index.names[index.subset(split, args.part)].astype(str)
    check_no_overlap(ckpt.get("train_videos"), eval_names, args.checkpoint, dataset, split, args.part)

    geo = clip_geometry(cfg, args.frames, args.stride, args.crop, args.short_side)
    device = resolve_device(args.device)
    model = build_backbone(ckpt["backbone_name"], num_classes=len(classes))
    model.load_state_dict(ckpt["model"])
    model.to(device)
    norm = cfg.get("norm", "kinetics")
    ds, loader = eval_batches(index, split, args.part, geo, args.num_clips, args.batch_size, args.workers,
                              args.limit)
    print(f"[evaluate] {args.checkpoint} (epoch {ckpt.get('epoch')}): {dataset} split {split} {args.part}, "
          f"{len(loader.dataset)} videos x {args.num_clips} clips of {geo['frames']}x{geo['crop']}^2 "
          f"(stride {geo['stride']}, short side {geo['short_side']}) on {device}", flush=True)
    t1 = time.time()
    # clips [b, 3, T, S, S]: --reverse-time flips the time axis, nothing else
    fn = (lambda m, x: m(x.flip(2))) if args.reverse_time else None
    logits, videos, labels = run_clips(model, loader, device, norm, fn=fn, progress="evaluate")
    V, N, C = logits.shape
    clip_video = np.repeat(np.arange(V), N)
    metrics, probs = compute_metrics(logits.reshape(V * N, C), clip_video, labels, C)
    metrics["eval_seconds"] = round(time.time() - t1, 2)

    out_dir = args.out_dir or default_out_dir(args.checkpoint, "evaluate")
    if args.reverse_time and args.out_dir is None:
        out_dir = out_dir.with_name(out_dir.name + "_reversed")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = index.names[videos].astype(str)
    save_scores(out_dir, names, labels, probs, classes)
    cm = confusion_matrix(labels, probs.argmax(axis=1), C)
    np.save(out_dir / "confusion.npy", cm)
    per_class = {c: (None if np.isnan(a) else round(100 * float(a), 2)) for c, a in zip(classes, per_class_accuracy(cm))}
    plot_confusion(cm, classes, out_dir / "confusion.png",
                   f"{dataset} split {split} {args.part}{' reversed' if args.reverse_time else ''}: "
                   f"video top-1 {metrics['video_top1']:.1f}%")
    record = {"metrics": metrics, "checkpoint": str(args.checkpoint), "checkpoint_epoch": ckpt.get("epoch"),
              "backbone": ckpt["backbone_name"], "dataset": dataset, "split": split, "part": args.part,
              "num_clips": args.num_clips, "reverse_time": args.reverse_time, **geo, "norm": norm,
              "device": str(device), "per_class_acc": per_class,
              "confusion": {"classes": classes, "counts": cm.tolist()},
              "cache": {"root": str(index.root), "manifest_hash": index.manifest_hash},
              "limit": args.limit, "config_file": args.config, "wall_seconds": round(time.time() - t0, 2)}
    write_json(out_dir / "metrics.json", record)
    print(f"[evaluate] clip top-1 {metrics['clip_top1']:.2f}  video top-1 {metrics['video_top1']:.2f}  "
          f"top-5 {metrics['video_top5']:.2f}  mean class acc {metrics['mean_class_acc']:.2f}  "
          f"({V} videos) -> {out_dir}", flush=True)
    return metrics


def console() -> None:
    """The ``mac-evaluate`` console command (pyproject.toml): the same as ``python train/evaluate.py``."""
    exit_with(main, "evaluate.py")


if __name__ == "__main__":
    console()
