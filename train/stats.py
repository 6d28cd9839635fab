"""Statistics for comparing pretraining arms that a reviewer accepts: bootstrap intervals that
respect how the numbers were produced, paired differences, and the exact McNemar test.

The demo comparison (MAC against its controls: no mask, displaced masks, scratch, ...) has three
nested sources of variation: the **data instance** (an independently generated dataset), the
**training seed**, and the **test video**. Every arm is evaluated on the same test videos of an
instance, so each (arm, instance, seed) gives a per-video 0/1 correctness vector, and two arms
are *paired* video by video. ``mean +- std over seeds`` (train/sweep.py's ``mean_std``) ignores
the test-set sampling and the pairing; this module owns the numbers that do not:

  load_correct            scores.npz (train/evaluate.py's ``save_scores``) -> per-video correctness
  align_to                reorder one arm's per-video values to another's video order, by name
  bootstrap_ci            accuracy with a two-level (instances, then videos) percentile interval
  paired_bootstrap_diff   the difference of two arms, resampling the same instances and videos
  mcnemar                 exact two-sided McNemar test on pooled paired outcomes
  per_class_table         per-class accuracy averaged over runs (train/evaluate.py's functions)
  format_ci, format_p     the strings that go into tables

Per-instance inputs are mappings ``instance -> array [seeds, videos]`` (a 1-D array is one seed)
of booleans or 0/1. Accuracies and differences are in percent (points). Everything is numpy and
the standard library (no scipy: the binomial tail is summed exactly with ``math.comb``, or in log
space for large counts), so the functions are pure and cheap enough for tests.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np

# Above this many discordant pairs the exact integer binomial sum gets slow (big integers): the
# tail is summed in log space instead (relative error ~1e-12, far below anything reported).
_EXACT_MAX_N = 2000
# Bound on the number of int64 indices drawn at once by the bootstrap (memory ~32 MiB).
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def load_correct(scores_npz_path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(names [V] str, correct [V] bool, labels [V] int64, preds [V] int64) from a scores.npz.

    The prediction is the top-1 class. evaluate.py stores ``top5`` computed on the float64
    probabilities before they are saved as float32; its first column is the argmax that
    metrics.json's video_top1 counted (ties: lower class index), so it is used when present and
    ``argmax(probs)`` (same tie rule) otherwise: the correctness then reproduces the reported
    accuracy exactly rather than up to float32 near-ties."""
    path = Path(scores_npz_path)
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("names", "labels", "probs") if k not in z.files]
        if missing:
            raise ValueError(f"{path} lacks {missing} (has {sorted(z.files)}): not a scores.npz "
                             "written by train/evaluate.py")
        names = np.asarray(z["names"]).astype(str)
        labels = np.asarray(z["labels"], dtype=np.int64)
        probs = np.asarray(z["probs"])
        top5 = np.asarray(z["top5"]) if "top5" in z.files else None
    if probs.ndim != 2 or names.shape != labels.shape or labels.shape != probs.shape[:1]:
        raise ValueError(f"{path}: names {names.shape}, labels {labels.shape} and probs {probs.shape} "
                         "do not describe the same videos")
    if top5 is not None and top5.ndim == 2 and top5.shape[0] == len(labels) and top5.shape[1] >= 1:
        preds = top5[:, 0].astype(np.int64)
    else:
        preds = probs.argmax(axis=1).astype(np.int64) if len(labels) else np.zeros(0, dtype=np.int64)
    return names, preds == labels, labels, preds


def align_to(ref_names, names, values: np.ndarray) -> np.ndarray:
    """``values`` (last axis over ``names``) reordered to the order of ``ref_names``.

    Paired statistics compare arms video by video, so their vectors must list the same videos
    in the same order; evaluation order is not a promise. A video missing on either side is an
    error, not a silent drop, because dropping videos changes the test set."""
    ref = np.asarray(ref_names).astype(str)
    names = np.asarray(names).astype(str)
    values = np.asarray(values)
    if values.shape[-1:] != names.shape:
        raise ValueError(f"values {values.shape} do not end in the {names.shape} axis of names")
    if len(set(names.tolist())) != len(names) or len(set(ref.tolist())) != len(ref):
        raise ValueError("video names repeat: cannot pair by name")
    pos = {n: i for i, n in enumerate(names.tolist())}
    only_ref = [n for n in ref.tolist() if n not in pos]
    only_new = sorted(set(pos) - set(ref.tolist()))
    if only_ref or only_new:
        raise ValueError(f"the two video lists differ: {len(only_ref)} only in the reference "
                         f"(e.g. {only_ref[:3]}), {len(only_new)} only in the other (e.g. {only_new[:3]})")
    return values[..., [pos[n] for n in ref.tolist()]]


def _as_runs(x, what: str) -> np.ndarray:
    """One instance's correctness as a float64 [seeds, videos] array, checked."""
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{what}: expected [seeds, videos] (or [videos]) with at least one of each, "
                         f"got shape {np.shape(x)}")
    if a.dtype != bool and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{what}: expected per-video correctness (bool or 0/1)")
    return a.astype(np.float64)


def _instances(per_instance: Mapping[Hashable, np.ndarray], what: str = "per_instance") -> dict:
    if not isinstance(per_instance, Mapping):
        raise TypeError(f"{what} must map instance -> [seeds, videos] array (one instance: {{0: arr}}), "
                        f"got {type(per_instance).__name__}")
    if not per_instance:
        raise ValueError(f"{what} has no instances")
    return {k: _as_runs(v, f"{what}[{k!r}]") for k, v in per_instance.items()}


def _shape_summary(runs: Sequence[np.ndarray]) -> tuple[int | list[int], int | list[int]]:
    """(seeds, videos) per instance: an int when every instance has the same, else a list."""
    s = [int(r.shape[0]) for r in runs]
    v = [int(r.shape[1]) for r in runs]
    return (s[0] if len(set(s)) == 1 else s), (v[0] if len(set(v)) == 1 else v)


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


def _check_boot(n_boot: int, level: float) -> None:
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _boot_means(per_video: list[np.ndarray], n_boot: int, rng: np.random.Generator,
                resample_instances: bool) -> np.ndarray:
    """[n_boot] resampled means of the instance means.

    ``per_video[i]`` is instance i's per-video value already averaged over its seeds: drawing
    videos of that vector is drawing the same videos for every seed, which keeps the seed
    average (and, for a difference, the arms) paired. Each of the K slots of a resample draws an
    instance and then, independently, its videos with replacement (an instance drawn twice gets
    two video draws); without ``resample_instances`` the slots are the instances themselves
    (the video-only, stratified bootstrap; also what one instance reduces to, drawn identically).
    Vectorised per instance, in bounded chunks."""
    K = len(per_video)
    if resample_instances and K > 1:
        inst = rng.integers(0, K, size=(n_boot, K))
    else:
        inst = np.broadcast_to(np.arange(K), (n_boot, K))
    slot = np.empty((n_boot, K), dtype=np.float64)
    for i, v in enumerate(per_video):
        where = np.nonzero(inst == i)
        m, V = len(where[0]), len(v)
        if m == 0:
            continue
        means = np.empty(m, dtype=np.float64)
        step = max(1, _CHUNK_ELEMENTS // V)
        for s in range(0, m, step):
            e = min(m, s + step)
            means[s:e] = v[rng.integers(0, V, size=(e - s, V))].mean(axis=1)
        slot[where] = means
    return slot.mean(axis=1)


def _interval(point: float, boots: np.ndarray, level: float) -> tuple[float, float, float]:
    alpha = (1.0 - float(level)) / 2.0
    lo, hi = np.quantile(boots, [alpha, 1.0 - alpha])
    return 100.0 * point, 100.0 * float(lo), 100.0 * float(hi)


def bootstrap_ci(per_instance: Mapping[Hashable, np.ndarray], n_boot: int = 10000, level: float = 0.95,
                 seed: int = 0, resample_instances: bool = True) -> dict:
    """Accuracy (percent) with a hierarchical percentile bootstrap interval.

    ``mean``: per instance the accuracy over its seeds and videos, then the mean over instances,
    so every instance weighs the same whatever its number of test videos (the instance, not the
    video, is the unit that was replicated). With equal video counts this is the plain mean of
    all entries.

    Interval: resample the instances with replacement, then within each drawn instance its videos
    with replacement, one video draw shared by all seeds of that instance (seed-to-seed variation
    on a fixed video stays inside the seed average, as in the point estimate); ``lo``/``hi`` are
    the (1-level)/2 and 1-(1-level)/2 quantiles of the resampled means. With one instance (or
    ``resample_instances=False``, instances held fixed) it is the plain video bootstrap of the
    test-set sampling only. With few instances (the demo has 3) the instance level rests on that
    many numbers: the interval is the best the design allows, and tends to be narrow, so report
    ``n_instances`` beside it.

    Returns dict(mean, lo, hi, n_instances, n_seeds, n_videos, level, n_boot); n_seeds and
    n_videos are per instance (an int when equal across instances, else a list in mapping
    order). Reproducible for a ``seed``."""
    _check_boot(n_boot, level)
    runs = list(_instances(per_instance).values())
    per_video = [r.mean(axis=0) for r in runs]
    point = float(np.mean([v.mean() for v in per_video]))
    boots = _boot_means(per_video, int(n_boot), np.random.default_rng(seed), resample_instances)
    mean, lo, hi = _interval(point, boots, level)
    n_seeds, n_videos = _shape_summary(runs)
    return {"mean": mean, "lo": lo, "hi": hi, "n_instances": len(runs), "n_seeds": n_seeds,
            "n_videos": n_videos, "level": float(level), "n_boot": int(n_boot)}


def paired_bootstrap_diff(a: Mapping[Hashable, np.ndarray], b: Mapping[Hashable, np.ndarray],
                          n_boot: int = 10000, level: float = 0.95, seed: int = 0,
                          resample_instances: bool = True) -> dict:
    """Accuracy of arm ``a`` minus arm ``b`` (points) with a paired hierarchical bootstrap interval.

    Both arms must cover the same instances, each with the same [seeds, videos] shape (the same
    test videos, in the same order: see ``align_to``). Every resample draws the same instances
    and the same videos for both arms, so what is shared (an easy instance, a hard video) cancels
    and the interval measures the difference only: far narrower than comparing two separate
    intervals. Identical arms give exactly 0 with a zero-width interval. Same weighting,
    one-instance behaviour and return keys as ``bootstrap_ci``; an interval that excludes 0 is
    the bootstrap's evidence of a difference at that level."""
    _check_boot(n_boot, level)
    ra, rb = _instances(a, "a"), _instances(b, "b")
    if set(ra) != set(rb):
        raise ValueError(f"arms cover different instances: only in a {sorted(map(repr, set(ra) - set(rb)))}, "
                         f"only in b {sorted(map(repr, set(rb) - set(ra)))}")
    for k in ra:
        if ra[k].shape != rb[k].shape:
            raise ValueError(f"instance {k!r}: arm a has shape {ra[k].shape} [seeds, videos], arm b "
                             f"{rb[k].shape}: a paired comparison needs the same seeds and videos")
    keys = list(ra)
    per_video = [ra[k].mean(axis=0) - rb[k].mean(axis=0) for k in keys]
    point = float(np.mean([v.mean() for v in per_video]))
    boots = _boot_means(per_video, int(n_boot), np.random.default_rng(seed), resample_instances)
    mean, lo, hi = _interval(point, boots, level)
    n_seeds, n_videos = _shape_summary([ra[k] for k in keys])
    return {"mean": mean, "lo": lo, "hi": hi, "n_instances": len(keys), "n_seeds": n_seeds,
            "n_videos": n_videos, "level": float(level), "n_boot": int(n_boot)}


# --------------------------------------------------------------------------------------------
# McNemar
# --------------------------------------------------------------------------------------------


def _tail_exact(k: int, n: int) -> float:
    """P[X <= k] for X ~ Bin(n, 1/2), summed in exact integers (one rounding, at the end)."""
    total, c = 0, 1
    for j in range(k + 1):
        total += c
        c = c * (n - j) // (j + 1)
    return total / (1 << n)


def _tail_log(k: int, n: int) -> float:
    """P[X <= k] for X ~ Bin(n, 1/2), summed in log space (for large n)."""
    j = np.arange(k, dtype=np.float64)
    logc = np.concatenate([[0.0], np.cumsum(np.log(n - j) - np.log(j + 1.0))])
    top = logc.max()
    return float(math.exp(top + math.log(np.exp(logc - top).sum()) - n * math.log(2.0)))


def _binom_half_lower_tail(k: int, n: int) -> float:
    if n == 0:
        return 1.0
    return _tail_exact(k, n) if n <= _EXACT_MAX_N else _tail_log(k, n)


def _pooled(x, what: str) -> np.ndarray:
    if isinstance(x, Mapping):
        if not x:
            raise ValueError(f"{what} has no instances")
        return np.concatenate([np.asarray(x[k]).ravel() for k in x])
    return np.asarray(x).ravel()


def mcnemar(a_correct, b_correct) -> dict:
    """Exact two-sided McNemar test of arms ``a`` and ``b`` on paired correctness.

    Inputs: aligned arrays of any (equal) shape, e.g. [instances, seeds, videos], or mappings
    instance -> [seeds, videos] with the same keys and shapes; all pairs are pooled. Counts:
    ``b01`` = a wrong and b right, ``b10`` = a right and b wrong, ``n`` = all pairs. Under the
    null (the arms err equally often) the discordant pairs split as Bin(b01 + b10, 1/2), so
    p = min(1, 2 P[X <= min(b01, b10)]); p = 1 with no discordant pairs.

    Pooling over seeds counts a test video once per seed: those pairs are not independent (the
    same video is easy or hard for every seed), so the pooled p-value is anti-conservative when
    seeds agree. It answers "did these runs differ", not "does the method differ across seeds
    and datasets"; for the latter use ``paired_bootstrap_diff``, or test one seed at a time."""
    if isinstance(a_correct, Mapping) or isinstance(b_correct, Mapping):
        if not (isinstance(a_correct, Mapping) and isinstance(b_correct, Mapping)):
            raise TypeError("a_correct and b_correct must both be arrays or both be mappings")
        if set(a_correct) != set(b_correct):
            raise ValueError("a_correct and b_correct cover different instances")
        for k in a_correct:
            if np.shape(a_correct[k]) != np.shape(b_correct[k]):
                raise ValueError(f"instance {k!r}: a has shape {np.shape(a_correct[k])}, "
                                 f"b {np.shape(b_correct[k])}")
        b_correct = {k: b_correct[k] for k in a_correct}       # same pooling order as a
    elif np.shape(a_correct) != np.shape(b_correct):
        raise ValueError(f"a_correct has shape {np.shape(a_correct)} and b_correct "
                         f"{np.shape(b_correct)}: McNemar needs aligned pairs")
    a, b = _pooled(a_correct, "a_correct"), _pooled(b_correct, "b_correct")
    for name, x in (("a_correct", a), ("b_correct", b)):
        if x.dtype != bool and not np.isin(x, (0, 1)).all():
            raise ValueError(f"{name}: expected per-video correctness (bool or 0/1)")
    a, b = a.astype(bool), b.astype(bool)
    b01 = int((~a & b).sum())
    b10 = int((a & ~b).sum())
    nd = b01 + b10
    p = 1.0 if nd == 0 else min(1.0, 2.0 * _binom_half_lower_tail(min(b01, b10), nd))
    return {"b01": b01, "b10": b10, "n": int(a.size), "p": p}


# --------------------------------------------------------------------------------------------
# Per-class table
# --------------------------------------------------------------------------------------------


def per_class_table(runs: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int) -> np.ndarray:
    """[C] per-class accuracy in percent, averaged over runs (each (labels, preds) pair is one
    instance x seed evaluation, weighted equally).

    Uses train/evaluate.py's ``confusion_matrix`` and ``per_class_accuracy`` so the per-run
    numbers are exactly those evaluate reports; a class absent from a run's test set is left out
    of that run's average, and is NaN when absent from every run. (Imported on call: evaluate.py
    pulls in torch, which the rest of this module does not need.)"""
    from train.evaluate import confusion_matrix, per_class_accuracy

    if not runs:
        raise ValueError("per_class_table needs at least one (labels, preds) run")
    accs = np.stack([per_class_accuracy(confusion_matrix(y, p, num_classes)) for y, p in runs])
    present = ~np.isnan(accs)
    count = present.sum(axis=0)
    total = np.where(present, accs, 0.0).sum(axis=0)
    return np.where(count > 0, 100.0 * total / np.maximum(count, 1), np.nan)


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def format_ci(d: Mapping, digits: int = 1, signed: bool = False) -> str:
    """``"92.6 [88.0, 96.3]"`` from a bootstrap result; ``signed`` writes ``+`` on differences."""
    f = f"{{:{'+' if signed else ''}.{int(digits)}f}}"
    return f"{f.format(d['mean'])} [{f.format(d['lo'])}, {f.format(d['hi'])}]"


def format_p(p: float) -> str:
    """``"p = 0.031"``, or ``"p < 0.001"`` below that: three decimals claim no more precision
    than a test on ~100 videos has."""
    p = float(p)
    if not 0.0 <= p <= 1.0:                                   # also NaN
        raise ValueError(f"not a p-value: {p}")
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
