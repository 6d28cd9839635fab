"""Mask statistics of a frame set, per (lambda, m): what the default training's masks look like,
measured while the frames are cached, without storing any mask set.

The default training computes each clip's masks from its own frames (``--mask-source clip``), so
the cache needs no mask set for it. What a user still needs before training is whether lambda and
m give masks at all on this footage (``extract_masks.py --list``, the extraction's summary, the
pretraining's chance warning). That is measured here on clips like those the trainer draws: every
STATS_WINDOW_EVERY frames of a shard (its videos' frames in order), one 16-frame clip per stride
1-4 starting there, clamped to its video's last frame as the reference clamps a clip, its masks
computed exactly as the trainer's clip mode computes them (Algorithm 1 per clip: the background
starts at the clip's first frame, soft, dilated, the first mask replaced by the second) on the
cached JPEG pixels, at cached resolution (no crop).

Per stride it keeps MaskStats sums (sampled frames, pixels, sum of mask values / 255, non-zero
pixels): the mean mask value and the coverage. Each frame shard has one JSON file in
``stats-lam<L>_m<M>/`` (with the uid of the frames it was computed from, so rebuilt frames make it
stale) and the folder's manifest.json sums the current ones.

Cost: the JPEG decode of the frames those clips read (38 of every 256) and 64 mask frames per
256 frames per (lambda, m), ~2 % of decoding the video (benchmarks/bench_preprocess.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from core import atomic
from preprocess.cache.format import (DEFAULT_STRIDES, FORMAT_VERSION, STATS_CLIP_LEN, STATS_FORMAT,
                                     STATS_WINDOW_EVERY, CacheError, MaskParams, stats_dir, stats_shard_name)
from preprocess.cache.writer import MaskStats

STATS_HOW = (f"per-clip soft dilated masks (Algorithm 1 per clip, as --mask-source clip computes them) of one "
             f"{STATS_CLIP_LEN}-frame clip per stride every {STATS_WINDOW_EVERY} frames of a shard (clamped to the "
             f"video's end), on the cached frames at cached resolution")


def clip_indices(t0: int, stride: int, n_frames: int, clip_len: int = STATS_CLIP_LEN) -> np.ndarray:
    """A clip's frames t0, t0 + s, ..., clamped to the last frame as the reference samples a clip
    that runs past the end of its video."""
    return np.minimum(t0 + stride * np.arange(clip_len), n_frames - 1)


class ClipStatsSampler:
    """Per-clip mask statistics of one video, fed the decoded frames it asks for.

    The sampled clips start every `every` frames of the shard's frames in order (video after video:
    the video's frame t is the shard's frame `first` + t), one clip per stride at each start that
    falls in this video, clamped past its end as the reference clamps a clip: like the trainer's
    clips, whose starts are uniform, a long video gets several and a short one none or one.

    ``wanted(lo, hi)`` are the frame indices in [lo, hi) (a chunk of the video; the last chunk
    ends at its last frame) that a sampled clip reads; ``add(idx, rgb)`` takes those frames (uint8
    [t, H, W, 3], the cached JPEG pixels) in increasing order and computes every clip whose frames
    are all in; ``finish(n_frames)`` computes the clips the end of the video cuts and returns
    {MaskParams: {stride: MaskStats}}. Memory: one window's grey frames (38 at most)."""

    def __init__(self, params: Sequence[MaskParams], first: int = 0, strides: Sequence[int] = DEFAULT_STRIDES,
                 every: int = STATS_WINDOW_EVERY, clip_len: int = STATS_CLIP_LEN):
        self.params = tuple(dict.fromkeys(params))
        self.first = int(first)
        self.strides = tuple(sorted(set(int(s) for s in strides)))
        self.every, self.clip_len = int(every), int(clip_len)
        self.span = (self.clip_len - 1) * max(self.strides, default=1) + 1
        if self.span > self.every:
            raise ValueError(f"a sampling window ({self.span} frames) must fit in {self.every} frames")
        self.stats = {p: {s: MaskStats() for s in self.strides} for p in self.params}
        # the frames of a window its clips read (offsets i * s from its start): 38 of the 61
        self._offsets = np.unique([i * s for s in self.strides for i in range(self.clip_len)])
        self._grey: dict[int, np.ndarray] = {}
        self._next = -(-self.first // self.every) * self.every - self.first   # the next window's start (local)

    def _in_window(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(offset of each frame t in its window, whether that window starts in this video)."""
        g = t + self.first
        return g % self.every, g - g % self.every >= self.first

    def wanted(self, lo: int, hi: int) -> np.ndarray:
        """The frames in [lo, hi) that a sampled clip reads (nothing without params); the chunk's
        last frame too when it lies inside a window, for a clip that the video's end will cut."""
        if not self.params or hi <= lo:
            return np.empty(0, np.int64)
        t = np.arange(lo, hi, dtype=np.int64)
        offset, ours = self._in_window(t)
        keep = np.isin(offset, self._offsets) & ours
        keep[-1] |= bool(ours[-1] and offset[-1] < self.span)
        return t[keep]

    def add(self, indices: np.ndarray, rgb: np.ndarray) -> None:
        if not self.params or len(indices) == 0:
            return
        from preprocess.masks import grey_opencv

        for t, g in zip(np.asarray(indices).tolist(), grey_opencv(rgb)):
            self._grey[t] = g
        while self._next + self.span - 1 <= int(indices[-1]):     # a whole window: [start, start + span)
            self._compute(self._next, self._next + self.span)
            self._next += self.every

    def finish(self, n_frames: int) -> dict[MaskParams, dict[int, MaskStats]]:
        """The statistics of the whole video (`n_frames` long), with the clips of a window the end
        cuts (clamped to the last frame)."""
        if self.params and n_frames >= 2 and self._next < n_frames:
            self._compute(self._next, n_frames)
        self._grey.clear()
        return self.stats

    def _compute(self, t0: int, stop: int) -> None:
        """The clips of the window at t0 of a video whose frames end at `stop` (clamped there)."""
        from preprocess.masks import foreground_masks_grey

        for p in self.params:
            for s in self.strides:
                idx = clip_indices(t0, s, stop, self.clip_len)
                masks = foreground_masks_grey(np.stack([self._grey[int(t)] for t in idx]), p.lam, p.m, "soft", True)
                self.stats[p][s].add_masks(masks, every=1)
        for t in [t for t in self._grey if t < t0 + self.span]:
            del self._grey[t]


def merge_stats(into: dict[MaskParams, dict[int, MaskStats]], other: dict[MaskParams, dict[int, MaskStats]]) -> None:
    for p, per_stride in other.items():
        for s, st in per_stride.items():
            into.setdefault(p, {}).setdefault(s, MaskStats()).merge(st)


# --------------------------------------------------------------------------------------------
# Files: one per frame shard, a manifest per (lambda, m).

def write_shard_stats(frame_set: Path, params: MaskParams, shard_id: int, frames_uid: str,
                      per_stride: dict[int, MaskStats], videos: int) -> None:
    """The statistics of one frame shard (atomic)."""
    body = {"format_version": FORMAT_VERSION, "stats_format": STATS_FORMAT, "masks": {"lam": params.lam, "m": params.m},
            "frames_uid": frames_uid, "videos": int(videos),
            "strides": {str(s): st.to_dict() for s, st in sorted(per_stride.items())}}
    atomic.write_text(stats_dir(frame_set, params) / stats_shard_name(shard_id), json.dumps(body, indent=0))


def read_shard_stats(path: Path) -> dict:
    """A shard's statistics file; CacheError naming it when unreadable or of another format."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if body.get("stats_format") != STATS_FORMAT or not isinstance(body.get("strides"), dict):
            raise ValueError(f"stats format {body.get('stats_format')!r}, expected {STATS_FORMAT}")
        for st in body["strides"].values():
            MaskStats(**st)
        return body
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise CacheError(f"{path}: unreadable mask statistics ({e}); rerun extract_masks.py (it recomputes them "
                         f"from the cached frames)") from e


def shard_stats_stale(path: Path, frames_uid: str) -> str | None:
    """None when the statistics file at `path` belongs to the frame shard `frames_uid`; else why not."""
    if not path.exists():
        return "not computed"
    try:
        body = read_shard_stats(path)
    except CacheError as e:
        return f"damaged ({str(e).splitlines()[0]})"
    if body.get("frames_uid") != frames_uid:
        return "computed from other frames (the frame shard was rebuilt)"
    return None


def write_stats_manifest(frame_set: Path, params: MaskParams, frames_manifest: dict) -> dict:
    """Sum the current shard files of (lambda, m) into stats-.../manifest.json (atomic, unchanged
    content not rewritten); returns it."""
    from preprocess.cache.manifest import _write_manifest

    folder = stats_dir(frame_set, params)
    total: dict[int, MaskStats] = {}
    present, stale, videos = [], [], 0
    for shard_id in frames_manifest["shards_present"]:
        path = folder / stats_shard_name(shard_id)
        if shard_stats_stale(path, frames_manifest["shard_uids"][str(shard_id)]) is not None:
            if path.exists():
                stale.append(shard_id)
            continue
        body = read_shard_stats(path)
        present.append(shard_id)
        videos += int(body.get("videos", 0))
        for s, st in body["strides"].items():
            total.setdefault(int(s), MaskStats()).merge(MaskStats(**st))
    manifest = {"format_version": FORMAT_VERSION, "stats_format": STATS_FORMAT, "kind": "mask-stats",
                "masks": {"lam": params.lam, "m": params.m}, "how": STATS_HOW, "videos": videos,
                "strides": {str(s): {**st.to_dict(), "mean": st.mean if st.pixels else None,
                                     "coverage": st.coverage if st.pixels else None}
                            for s, st in sorted(total.items())},
                "shards_present": present, "stale": stale,
                "complete": frames_manifest["complete"] and len(present) == frames_manifest["n_shards"]}
    folder.mkdir(parents=True, exist_ok=True)
    return _write_manifest(folder / "manifest.json", manifest)


def read_stats(frame_set: Path, params: MaskParams) -> dict | None:
    """The stats manifest of (lambda, m) in `frame_set`, or None when there is none (or it is damaged)."""
    from preprocess.cache.manifest import read_manifest

    path = stats_dir(frame_set, params) / "manifest.json"
    if not path.exists():
        return None
    try:
        return read_manifest(path)
    except (CacheError, OSError):
        return None


def cached_stats_params(frame_set: Path) -> list[MaskParams]:
    """The (lambda, m) with a statistics folder in `frame_set` (recognised by the folder's name)."""
    import re

    out = []
    for folder in sorted(frame_set.glob("stats-lam*_m*")):
        match = re.fullmatch(r"stats-lam(\d+)_m([0-9.e+-]+)", folder.name)
        if match and folder.is_dir():
            out.append(MaskParams(int(match[1]), float(match[2])))
    return out


def stats_text(manifest: dict | None) -> str:
    """'per-clip masks, stride 1: mean 0.031, coverage 0.10; ... (N sampled clips per stride)', or why none."""
    if not manifest or not manifest.get("strides"):
        return "mask statistics: not computed (rerun extract_masks.py with this --lambda and --m)"
    parts = []
    frames = 0
    for s, st in sorted(manifest["strides"].items(), key=lambda kv: int(kv[0])):
        if not st.get("pixels"):
            continue
        parts.append(f"stride {s}: mean {st['mask_sum'] / st['pixels']:.3f}, coverage {st['nonzero'] / st['pixels']:.2f}")
        frames = max(frames, int(st.get("frames", 0)))
    if not parts:
        return "mask statistics: none (no frames)"
    return (f"per-clip masks, {'; '.join(parts)} ({frames // STATS_CLIP_LEN:,} sampled clips per stride"
            + ("" if manifest.get("complete") else ", INCOMPLETE") + ")")


def stats_means(manifest: dict | None) -> dict[int, float]:
    """{stride: mean mask value} of a stats manifest ({} when none)."""
    out = {}
    for s, st in ((manifest or {}).get("strides") or {}).items():
        if st.get("pixels"):
            out[int(s)] = st["mask_sum"] / st["pixels"]
    return out
