"""Import masks produced elsewhere as a named mask set of the cache (Table 3: external mask sources).

    python preprocess/import_masks.py --dataset demo --name gt --boxes data/demo/boxes.csv --source-size 320x240
    python preprocess/import_masks.py --dataset ucf101 --name persons --boxes dets.csv --source-size 320x240 --min-score 0.5
    python preprocess/import_masks.py --dataset ucf101 --name seg --arrays masks/
    python preprocess/import_masks.py --dataset ucf101 --name det --mask-fn mydetector:masks
    python train/pretrain.py --dataset demo --mask-set gt ...          # pretrain with the imported masks

The set is written beside the frame set of the cache (data_cache/<dataset>/<decode key>/
masks-ext-<NAME>/, one shard per frame shard, manifest.json) with the cache's record format
(zlib records with a CRC32 each, index checksum, atomic writes; docs/cache.md). It holds
FINAL masks, uint8 0..255 per cached frame, used as stored: the trainer crops, resizes and flips
them with the clip's frames (no stretch, no dilation, no first-mask rule), at any stride.

Sources (exactly one):

--boxes FILE.csv | FILE.json
    Per-frame boxes. CSV with a header row, columns video, frame, x1, y1, x2, y2 and optionally
    score, source_width, source_height (other columns are ignored); JSON: a list of objects with
    those keys (or {"boxes": [...]}). `video` names a cached video: its cache name
    (Class/v_Class_g01_c01.avi), that without the extension, or the file's stem (v_Class_g01_c01)
    when unique. `frame` is the 0-based index of the decoded frame. Coordinates are pixels of the
    source video (x right, y down; a box covers x1 <= x < x2, y1 <= y < y2), at the resolution
    given by --source-size WxH or by the source_width/source_height columns (one or the other).
    They are scaled to the cached frame size (per axis: cached/source) and rasterised: every
    cached pixel the scaled box overlaps is 255, boxes of a frame are united, a frame without a
    box is all zero. --min-score drops boxes scored below it.
--arrays DIR
    Per video DIR/<cache name without extension>.npz (or .npy), DIR/<stem>.npz, or a folder
    DIR/<cache name without extension>/ (or DIR/<stem>/) of per-frame PNG masks, in natural order
    of their names. An .npz holds one array, or several of which one is named "masks": [T, H, W]
    (or [T, H, W, 1]). Values: bool, or integers all 0/1 (binary: 1 -> 255), or integers 0..255
    (as they are), or floats in [0, 1] (x 255, rounded).
--mask-fn module:function
    Masks computed here: function(frames uint8 [T, H, W, 3] RGB, the cached frames of a video,
    video name) -> masks [T, H, W] (values as for --arrays); `module` is imported with the
    current folder first on sys.path (e.g. a detector you have).

Checks, per video, against the cache: the masks must have exactly the video's cached frame count
and (arrays, --mask-fn) the cached frame size; boxes must lie on frames that exist, have x2 > x1
and y2 > y1, not lie entirely outside the source frame, and the source size must have the
cached frames' aspect ratio (else boxes would be stretched). A video that fails a check is left
out, never stretched or padded: it is listed with the reason on stderr, in the set's
failures.txt and manifest.json, and the set is incomplete (the trainer refuses it) until the
import is rerun with fixed masks. A cached video absent from the source fails too, unless
--allow-missing imports it as all-zero masks. Source videos that match no cached video are
reported and ignored.

Every run rewrites the whole set (one shard at a time, each written to a temporary file and
renamed). Exit status: 0 every video imported, 1 some videos failed (the others are imported),
2 a usage or environment error (a bad flag, a missing cache or source, an unreadable box file).
"""
from __future__ import annotations

import csv
import hashlib
import importlib
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):   # run as `python preprocess/import_masks.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from core import atomic
from preprocess.cache import (NAME_PATTERN, CacheIndex, ClipReader, DecodeParams, NamedMaskSet, ShardWriter,
                              VideoRecord, encode_mask, frame_set_dir, import_command, mask_set_dir, open_cache,
                              read_manifest, shard_name, valid_mask_set_name, write_named_manifest)
from core.checks import check_range
from core.errors import UsageError
from core.flags import Flags, flag, parse
BOX_COLUMNS = ("video", "frame", "x1", "y1", "x2", "y2")
SIZE_COLUMNS = ("source_width", "source_height")
ASPECT_TOLERANCE = 0.02      # |source aspect / cached aspect - 1| beyond this: the boxes would be stretched
EDGE_EPS = 1e-6              # a scaled box edge on a pixel boundary does not reach into the next pixel


class VideoProblem(Exception):
    """One video's masks cannot be imported; the message is the reason (recorded per video)."""


# --------------------------------------------------------------------------------------------
# Command line

def parse_size(text: str) -> tuple[int, int]:
    """'320x240' -> (320, 240): width x height in pixels."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise UsageError("--source-size", text, "must be WIDTHxHEIGHT in pixels, e.g. 320x240")
    return int(m[1]), int(m[2])


@dataclass
class MaskSourceFlags(Flags):
    """source (exactly one)"""

    boxes: Path = flag(None, "per-frame boxes, .csv or .json", type=Path)
    arrays: Path = flag(None, "folder of per-video .npz/.npy arrays or PNG folders", type=Path)
    mask_fn: str = flag(None, "module:function computing masks from a video's cached frames")


@dataclass
class ImportFlags(MaskSourceFlags):
    """The flags of import_masks.py."""

    dataset: str = flag("ucf101", "dataset name in the cache")
    cache_dir: Path = flag(Path("data_cache"), "cache root")
    short_side: int = flag(128, "frame set: cached short side", lo=16, hi=4096)
    jpeg_quality: int = flag(90, "frame set: JPEG quality", lo=1, hi=100)
    name: str = flag(None, "the mask set's name (the trainer's --mask-set NAME); letters, digits, '_', '-', '.'",
                     required=True)
    source_size: str = flag(None, "WIDTHxHEIGHT of the box coordinates (the video the boxes were found on), unless "
                                  "the box file has source_width/source_height")
    min_score: float = flag(None, "drop boxes scored below this (needs a score column)", type=float)
    allow_missing: bool = flag(False, "import cached videos absent from the source as all-zero masks (otherwise "
                                      "they fail)")

    def check(self) -> None:
        """The name, exactly one source, and the flags that apply to --boxes only."""
        if not valid_mask_set_name(self.name):
            raise UsageError("--name", self.name, f"must match {NAME_PATTERN} (letters, digits, '_', '-', '.', "
                                                  f"starting with a letter or digit)")
        given = [f for f, v in (("--boxes", self.boxes), ("--arrays", self.arrays), ("--mask-fn", self.mask_fn))
                 if v is not None]
        if len(given) != 1:
            raise UsageError("source:", " ".join(given) or "none given",
                             "give exactly one of --boxes FILE, --arrays DIR, --mask-fn module:function")
        if self.boxes is not None:
            if not self.boxes.is_file():
                raise UsageError("--boxes", self.boxes, "no such file")
            if self.boxes.suffix.lower() not in (".csv", ".json"):
                raise UsageError("--boxes", self.boxes, "must be a .csv or .json file")
        elif self.source_size is not None:
            raise UsageError("--source-size", self.source_size, "applies to --boxes only (arrays and --mask-fn "
                                                                "masks must already have the cached frame size)")
        if self.source_size is not None:
            parse_size(self.source_size)
        if self.min_score is not None:
            if self.boxes is None:
                raise UsageError("--min-score", self.min_score, "applies to --boxes only")
            check_range("--min-score", self.min_score)
        if self.arrays is not None and not self.arrays.is_dir():
            raise UsageError("--arrays", self.arrays, "no such folder")
        if self.mask_fn is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.mask_fn):
            raise UsageError("--mask-fn", self.mask_fn, "must be module:function, e.g. mydetector:masks")


def parse_args(argv: list[str] | None) -> ImportFlags:
    return parse(ImportFlags, argv, description=__doc__, prog="import_masks.py")


# --------------------------------------------------------------------------------------------
# Matching source video names to cached videos

class VideoNames:
    """Cached video of a source name: the cache name (Class/v_x.avi), it without its extension,
    or the file's stem (v_x) when no other cached video has the same stem."""

    def __init__(self, names):
        self.names = [str(n) for n in names]
        self.alias: dict[str, int] = {}
        stems: dict[str, list[int]] = {}
        for i, n in enumerate(self.names):
            self.alias[n] = i
            self.alias[_strip_ext(n)] = i
            stems.setdefault(Path(n).stem, []).append(i)
        for stem, ids in stems.items():
            if len(ids) == 1:
                self.alias.setdefault(stem, ids[0])

    def find(self, key: str) -> int | None:
        key = str(key).strip().replace("\\", "/")
        for k in (key, _strip_ext(key), Path(key).stem):
            if k in self.alias:
                return self.alias[k]
        return None


def _strip_ext(name: str) -> str:
    p = Path(name)
    return str(p.with_suffix("")) if p.suffix else name


# --------------------------------------------------------------------------------------------
# Boxes

@dataclass
class Box:
    frame: int
    x1: float
    y1: float
    x2: float
    y2: float
    score: float | None
    source: tuple[int, int] | None      # (W, H) from the row, else None


@dataclass
class BoxTable:
    path: Path
    by_video: dict[int, list[Box]] = field(default_factory=dict)
    problems: dict[int, str] = field(default_factory=dict)   # video -> first bad row
    unmatched: list[str] = field(default_factory=list)
    has_score: bool = False
    has_size: bool = False
    rows: int = 0


def _read_rows(path: Path) -> tuple[list[dict], list[str]]:
    """The box file's rows as dicts of strings/numbers, and its column names."""
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data = data.get("boxes")
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise UsageError("--boxes", path, 'must hold a list of {"video", "frame", "x1", "y1", "x2", "y2"[, '
                                                  '"score"]} objects, or {"boxes": [...]}')
            rows = [{str(k).strip().lower(): v for k, v in r.items()} for r in data]
            cols = sorted({k for r in rows for k in r})
            return rows, cols
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [str(c).strip().lower() for c in (reader.fieldnames or [])]
            rows = [{str(k).strip().lower(): v for k, v in r.items() if k is not None} for r in reader]
            return rows, cols
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError("--boxes", path, f"cannot be read ({e})") from None


def _number(row: dict, col: str, n: int) -> float:
    v = row.get(col)
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise VideoProblem(f"box row {n}: {col} {v!r} is not a number") from None
    if not math.isfinite(x):
        raise VideoProblem(f"box row {n}: {col} {v!r} is not finite")
    return x


def load_boxes(path: Path, names: VideoNames, source_size: tuple[int, int] | None,
               min_score: float | None) -> BoxTable:
    rows, cols = _read_rows(path)
    missing = [c for c in BOX_COLUMNS if c not in cols]
    if missing:
        raise UsageError("--boxes", path, f"has no column(s) {', '.join(missing)} (columns: {', '.join(cols) or 'none'}; "
                                          f"needed: {', '.join(BOX_COLUMNS)}[, score][, source_width, source_height])")
    table = BoxTable(path, has_score="score" in cols, has_size=all(c in cols for c in SIZE_COLUMNS))
    if min_score is not None and not table.has_score:
        raise UsageError("--min-score", min_score, f"{path} has no score column")
    if table.has_size and source_size is not None:
        raise UsageError("--source-size", f"{source_size[0]}x{source_size[1]}",
                         f"{path} has source_width/source_height columns: give the source size one way only")
    if not table.has_size and source_size is None:
        raise UsageError("--source-size", "(missing)", f"needed for {path}: the WIDTHxHEIGHT of the video the box "
                                                       f"coordinates refer to, e.g. --source-size 320x240")
    unmatched = set()
    for n, row in enumerate(rows, start=2 if path.suffix.lower() == ".csv" else 0):
        key = str(row.get("video", "")).strip()
        v = names.find(key)
        if v is None:
            unmatched.add(key)
            continue
        boxes = table.by_video.setdefault(v, [])
        if v in table.problems:
            continue
        try:
            f = _number(row, "frame", n)
            if f != int(f):
                raise VideoProblem(f"box row {n}: frame {row.get('frame')!r} is not an integer")
            x1, y1, x2, y2 = (_number(row, c, n) for c in ("x1", "y1", "x2", "y2"))
            score = _number(row, "score", n) if table.has_score else None
            size = None
            if table.has_size:
                sw, sh = _number(row, "source_width", n), _number(row, "source_height", n)
                if sw < 1 or sh < 1 or sw != int(sw) or sh != int(sh):
                    raise VideoProblem(f"box row {n}: source size {sw:g}x{sh:g} is not a positive integer size")
                size = (int(sw), int(sh))
        except VideoProblem as e:
            table.problems[v] = str(e)
            continue
        table.rows += 1
        if min_score is not None and score is not None and score < min_score:
            continue            # dropped; the video still counts as present in the file
        boxes.append(Box(int(f), x1, y1, x2, y2, score, size))
    table.unmatched = sorted(unmatched)
    return table


def rasterise_boxes(boxes, source: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w]: 255 on every pixel of the h x w frame that a box (x1, y1, x2, y2 in the
    W x H source's pixel coordinates; x1 <= x < x2) overlaps once scaled by (w / W, h / H); the
    union of the boxes; 0 elsewhere."""
    (sw, sh), (h, w) = source, size
    sx, sy = w / sw, h / sh
    out = np.zeros((h, w), np.uint8)
    for x1, y1, x2, y2 in boxes:
        c0 = max(0, math.floor(x1 * sx + EDGE_EPS))
        c1 = min(w, math.ceil(x2 * sx - EDGE_EPS))
        r0 = max(0, math.floor(y1 * sy + EDGE_EPS))
        r1 = min(h, math.ceil(y2 * sy - EDGE_EPS))
        if c1 > c0 and r1 > r0:
            out[r0:r1, c0:c1] = 255
    return out


def box_masks(table: BoxTable, video: int, n_frames: int, size: tuple[int, int],
              source_size: tuple[int, int] | None) -> np.ndarray:
    """The masks of one video from its boxes, or VideoProblem."""
    if video in table.problems:
        raise VideoProblem(table.problems[video])
    h, w = size
    per_frame: dict[int, list] = {}
    for b in table.by_video.get(video, []):
        src = b.source or source_size
        if not 0 <= b.frame < n_frames:
            raise VideoProblem(f"a box on frame {b.frame}, but the cache has {n_frames} frames (0..{n_frames - 1}): "
                               f"the frame counts differ (boxes are never moved to other frames)")
        if not (b.x2 > b.x1 and b.y2 > b.y1):
            raise VideoProblem(f"frame {b.frame}: box ({b.x1:g}, {b.y1:g}, {b.x2:g}, {b.y2:g}) is empty or inverted "
                               f"(need x2 > x1 and y2 > y1)")
        sw, sh = src
        if b.x1 >= sw or b.y1 >= sh or b.x2 <= 0 or b.y2 <= 0:
            raise VideoProblem(f"frame {b.frame}: box ({b.x1:g}, {b.y1:g}, {b.x2:g}, {b.y2:g}) lies outside the "
                               f"{sw}x{sh} source frame: is the source size right?")
        ratio = (sw / sh) / (w / h)
        if abs(ratio - 1) > ASPECT_TOLERANCE:
            raise VideoProblem(f"source size {sw}x{sh} (aspect {sw / sh:.3f}) does not have the aspect of the cached "
                               f"{w}x{h} frames ({w / h:.3f}): scaling the boxes would stretch them; is the source "
                               f"size right?")
        per_frame.setdefault(b.frame, []).append((b.x1, b.y1, b.x2, b.y2, src))
    out = np.zeros((n_frames, h, w), np.uint8)
    for t, boxes in per_frame.items():
        by_src: dict = {}
        for x1, y1, x2, y2, src in boxes:
            by_src.setdefault(src, []).append((x1, y1, x2, y2))
        for src, bs in by_src.items():
            np.maximum(out[t], rasterise_boxes(bs, src, (h, w)), out=out[t])
    return out


# --------------------------------------------------------------------------------------------
# Arrays and mask functions

def to_uint8_masks(a: np.ndarray) -> np.ndarray:
    """Masks of any accepted dtype -> uint8 0..255: bool and integers all 0/1 are binary (255);
    other integers 0..255 as they are; floats in [0, 1] scaled by 255 and rounded."""
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8) * np.uint8(255)
    if a.dtype.kind in "ui":
        if a.size == 0:
            return a.astype(np.uint8)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise VideoProblem(f"integer mask values {lo}..{hi} outside 0..255")
        return a.astype(np.uint8) * np.uint8(255) if hi <= 1 else a.astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise VideoProblem("mask values are not all finite")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 1:
            raise VideoProblem(f"float mask values {lo:g}..{hi:g} outside [0, 1]")
        return np.rint(a * 255.0).astype(np.uint8)
    raise VideoProblem(f"mask dtype {a.dtype} is not bool, integer or float")


def check_masks(a, n_frames: int, size: tuple[int, int], what: str) -> np.ndarray:
    """Frame count and size checked against the cache (never stretched), values converted."""
    a = np.asarray(a)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 3:
        raise VideoProblem(f"{what}: masks of shape {tuple(a.shape)}, need [T, H, W]")
    if a.shape[0] != n_frames:
        raise VideoProblem(f"{what}: {a.shape[0]} masks, but the cache has {n_frames} frames of this video: the frame "
                           f"counts differ (masks are never stretched in time)")
    if tuple(a.shape[1:]) != tuple(size):
        raise VideoProblem(f"{what}: masks are {a.shape[2]}x{a.shape[1]} (WxH), the cached frames {size[1]}x{size[0]}: "
                           f"the sizes differ (masks are never resized; make them at the cached size, or import "
                           f"boxes with --source-size)")
    return np.ascontiguousarray(to_uint8_masks(a))


def _natural_key(p: Path):
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)]


def find_array_source(root: Path, name: str) -> Path | None:
    """The file or PNG folder of cached video `name` under `root` (see --arrays)."""
    bases = [_strip_ext(name), Path(name).stem]
    for base in dict.fromkeys(bases):
        for ext in (".npz", ".npy"):
            if (root / (base + ext)).is_file():
                return root / (base + ext)
        if (root / base).is_dir():
            return root / base
    return None


def read_array_source(path: Path) -> np.ndarray:
    """The raw masks of an .npz/.npy file or a folder of PNGs (VideoProblem when unreadable)."""
    try:
        if path.is_dir():
            files = sorted((p for p in path.iterdir() if p.suffix.lower() == ".png"), key=_natural_key)
            if not files:
                raise VideoProblem(f"{path}: no .png masks in the folder")
            from PIL import Image

            planes = []
            for f in files:
                with Image.open(f) as im:
                    a = np.asarray(im)
                if a.ndim == 3:
                    if not (a[..., :3] == a[..., :1]).all():
                        raise VideoProblem(f"{f}: a colour image; masks must be grey (one channel, or equal channels)")
                    a = a[..., 0]
                if planes and a.shape != planes[0].shape:
                    raise VideoProblem(f"{f}: {a.shape[1]}x{a.shape[0]}, the folder's first mask "
                                       f"{planes[0].shape[1]}x{planes[0].shape[0]}")
                planes.append(a)
            return np.stack(planes)
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if len(keys) == 1:
                return z[keys[0]]
            if "masks" in keys:
                return z["masks"]
            raise VideoProblem(f"{path}: several arrays ({', '.join(keys)}) and none named 'masks'")
    except VideoProblem:
        raise
    except Exception as e:      # a damaged or foreign file is this video's problem, not the run's
        raise VideoProblem(f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def load_mask_fn(spec: str) -> Callable:
    """module:function, the module imported with the current folder first on sys.path."""
    module, func = spec.split(":", 1)
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        mod = importlib.import_module(module)
    except Exception as e:
        raise UsageError("--mask-fn", spec, f"cannot import {module} ({type(e).__name__}: {e})") from None
    fn = getattr(mod, func, None)
    if not callable(fn):
        raise UsageError("--mask-fn", spec, f"{module} has no function {func}")
    return fn


# --------------------------------------------------------------------------------------------
# The writer: one named shard per frame shard

@dataclass
class ImportResult:
    imported: int
    failed: list[tuple[str, str]]        # (video, reason)
    unmatched: list[str]
    manifest: dict
    seconds: float


def shard_videos(index: CacheIndex, shard: int) -> list[int]:
    """The index's videos of frame shard `shard`, in the shard's record order."""
    vids = np.flatnonzero(index.shard == shard)
    return [int(v) for v in vids[np.argsort(index.first_frame[vids], kind="stable")]]


def write_named_set(index: CacheIndex, name: str, produce: Callable[[int], np.ndarray], source: dict,
                    command: str, unmatched=(), log: Callable[[str], None] = print) -> ImportResult:
    """Write the named mask set `name` of the cache `index` (opened without it): for every video,
    `produce(video)` returns its masks (uint8 [n_frames, H, W] at cached size, or anything
    `check_masks` accepts) or raises VideoProblem; a video whose masks fail the checks is left
    out with the reason. Every shard is written whole (temporary file + rename), then the
    manifest; the failures go to the set's failures.txt (removed when there are none)."""
    t0 = time.perf_counter()
    nset = NamedMaskSet(name)
    root = index.root
    frames_manifest = read_manifest(root / "frames" / "manifest.json")
    mdir = mask_set_dir(root, nset)
    mdir.mkdir(parents=True, exist_ok=True)
    for stale in mdir.glob(".shard-*.h5.tmp-*"):
        stale.unlink(missing_ok=True)       # left by a killed run; never mistaken for a shard
    imported, failed = 0, []
    for shard_id in frames_manifest["shards_present"]:
        writer = ShardWriter(None, {nset: mdir / shard_name(shard_id)}, dataset=index.dataset, shard_id=shard_id,
                             decode=index.decode, frames_uid=frames_manifest["shard_uids"][str(shard_id)],
                             source=source)
        try:
            for v in shard_videos(index, shard_id):
                vname, n = str(index.names[v]), int(index.n_frames[v])
                size = (int(index.heights[v]), int(index.widths[v]))
                try:
                    masks = check_masks(produce(v), n, size, "masks")
                except VideoProblem as e:
                    writer.fail(vname, str(e), 0, 0)
                    failed.append((vname, str(e)))
                    continue
                writer.add_frames(None, {nset: [encode_mask(m) for m in masks]}, {nset: masks})
                writer.end_video(VideoRecord(vname, int(index.labels[v]), tuple(int(x) for x in index.splits[v]), n,
                                             float(index.fps[v]), size[0], size[1], 0, 0))
                imported += 1
        except BaseException:
            writer.abort()
            raise
        writer.commit()
    manifest = write_named_manifest(root, nset, frames_manifest, source, command, unmatched)
    report = mdir / "failures.txt"
    if failed:
        atomic.write_text(report, "".join(f"{v}\t{r}\n" for v, r in failed))
    elif report.exists():
        report.unlink()
    return ImportResult(imported, failed, list(unmatched), manifest, time.perf_counter() - t0)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    decode = DecodeParams(args.short_side, args.jpeg_quality)
    index = open_cache(args.cache_dir, args.dataset, decode)      # CacheError: status 2, with the fix
    names = VideoNames(index.names)
    source_size = parse_size(args.source_size) if args.source_size else None
    flags: list[str] = []
    unmatched: list[str] = []
    present: Callable[[int], bool]

    if args.boxes is not None:
        table = load_boxes(args.boxes, names, source_size, args.min_score)
        unmatched = table.unmatched
        source = {"kind": "boxes", "file": str(args.boxes), "sha256": _sha256(args.boxes),
                  "source_size": list(source_size) if source_size else "per row (source_width, source_height)",
                  "min_score": args.min_score, "rows": table.rows}
        flags = [f"--boxes {args.boxes}"] + ([f"--source-size {args.source_size}"] if source_size else [])
        flags += [f"--min-score {args.min_score:g}"] if args.min_score is not None else []

        def present(v: int) -> bool:
            return v in table.by_video

        def from_source(v: int) -> np.ndarray:
            return box_masks(table, v, int(index.n_frames[v]), (int(index.heights[v]), int(index.widths[v])),
                             source_size)
        what = f"boxes from {args.boxes}"
    elif args.arrays is not None:
        located = {v: find_array_source(args.arrays, str(index.names[v])) for v in range(len(index))}
        claimed = {p.resolve() for p in located.values() if p is not None}
        unmatched = sorted(str(p.relative_to(args.arrays)) for p in _array_candidates(args.arrays)
                           if p.resolve() not in claimed)
        source = {"kind": "arrays", "dir": str(args.arrays)}
        flags = [f"--arrays {args.arrays}"]

        def present(v: int) -> bool:
            return located[v] is not None

        def from_source(v: int) -> np.ndarray:
            return read_array_source(located[v])
        what = f"arrays from {args.arrays}"
    else:
        fn = load_mask_fn(args.mask_fn)
        reader = ClipReader(index)
        source = {"kind": "fn", "fn": args.mask_fn}
        flags = [f"--mask-fn {args.mask_fn}"]

        def present(v: int) -> bool:
            return True

        def from_source(v: int) -> np.ndarray:
            frames = reader.frames(v, np.arange(int(index.n_frames[v])))
            try:
                return fn(frames, str(index.names[v]))
            except Exception as e:      # the user's function: its failure is this video's
                raise VideoProblem(f"--mask-fn {args.mask_fn} raised {type(e).__name__}: {e}") from None
        what = f"masks computed by {args.mask_fn}"
    source["allow_missing"] = bool(args.allow_missing)
    flags += ["--allow-missing"] if args.allow_missing else []
    command = import_command(args.dataset, args.cache_dir, decode, args.name, " ".join(flags))

    def produce(v: int) -> np.ndarray:
        if not present(v):
            if args.allow_missing:
                return np.zeros((int(index.n_frames[v]), int(index.heights[v]), int(index.widths[v])), np.uint8)
            raise VideoProblem(f"not in the source ({what}); pass --allow-missing to import it as all-zero masks")
        return from_source(v)

    print(f"[import] {len(index)} cached videos of {args.dataset} ({decode.key()}): mask set '{args.name}' from {what}")
    res = write_named_set(index, args.name, produce, source, command, unmatched)
    folder = mask_set_dir(frame_set_dir(args.cache_dir, args.dataset, decode), NamedMaskSet(args.name))
    for v, reason in res.failed:
        print(f"[import] FAILED {v}: {reason}", file=sys.stderr)
    if res.unmatched:
        shown = ", ".join(res.unmatched[:10]) + (f" (+{len(res.unmatched) - 10} more)" if len(res.unmatched) > 10 else "")
        print(f"[import] note: {len(res.unmatched)} source video(s) match no cached video and were ignored: {shown}",
              file=sys.stderr)
    st = res.manifest["stats"]
    cover = (f"mean mask {st['mean']:.3f}, coverage {st['coverage']:.3f} ({st['frames']:,} sampled frames)"
             if st.get("pixels") else "no frames")
    print(f"[import] done in {res.seconds:.1f}s: imported {res.imported}, failed {len(res.failed)}; {cover}; "
          f"written to {folder}" + (f"; failures listed in {folder / 'failures.txt'}" if res.failed else ""))
    if res.failed:
        print(f"[import] the set is incomplete: the trainer refuses it until every video imports. Fix the masks of "
              f"the videos above and rerun:\n  {command}", file=sys.stderr)
        return 1
    print(f"[import] train with it: python train/pretrain.py --dataset {args.dataset} --mask-set {args.name} ...")
    return 0


def _array_candidates(root: Path) -> list[Path]:
    """Every .npz/.npy file and every folder holding PNGs under `root` (for the unmatched report)."""
    out = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".npz", ".npy")]
    out += sorted({p.parent for p in root.rglob("*.png")})
    return sorted(out)


def console() -> None:
    """The ``mac-import-masks`` console command (pyproject.toml): the same as ``python preprocess/import_masks.py``."""
    from core.errors import exit_with

    exit_with(main, "import_masks.py")


if __name__ == "__main__":
    console()
