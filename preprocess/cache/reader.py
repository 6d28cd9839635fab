"""Reading the cache: `open_cache` checks a frame set and the mask sets asked for against their
manifests and builds the `CacheIndex` the trainer uses (or raises CacheError with the exact command
that builds what is missing); `ClipReader` reads the frames and masks of clips from the shards,
checking every record it returns.

The reader never writes, never rebuilds and never judges a shard's sources: a missing, stale,
incomplete or damaged cache is an error whose message names the file and the command to run
(extract_masks.py, import_masks.py). docs/cache.md states what it checks.
"""
from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from preprocess.cache.codecs import LEGACY_MASK_CODEC, MASK_CODECS, RecordError, decode_frame, decode_masks
from preprocess.cache.format import (DEFAULT_STRIDES, FORMAT_VERSION, NAMED_KIND, CacheError, DecodeParams,
                                     MaskParams, MaskSet, NamedMaskSet, extract_command, frame_set_dir,
                                     import_command, mask_set_dir, named_mask_sets, old_mask_sets, shard_name)
from preprocess.cache.integrity import BLOBS, check_index
from preprocess.cache.manifest import parse_manifest


# --------------------------------------------------------------------------------------------
# Reading: the index the trainer builds once, and the lazily opened clip reader.

@dataclass(frozen=True)
class CacheIndex:
    """Everything the trainer needs to know about the cached videos, as numpy arrays.

    Built once in the main process, cheap to pickle into workers; holds no open file.
    """

    dataset: str
    root: Path
    classes: tuple[str, ...]
    names: np.ndarray
    labels: np.ndarray
    n_frames: np.ndarray
    fps: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    splits: np.ndarray
    shard: np.ndarray
    first_frame: np.ndarray
    decode: DecodeParams
    masks: MaskParams | None
    manifest_hash: str
    strides: tuple[int, ...] = ()     # the cached mask sets' strides (masks is not None)
    mask_set_name: str = ""           # the named (imported) mask set opened with it, if any
    mask_set_fix: str = ""            # the import_masks.py command that rebuilds it

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, split: int, part: str) -> np.ndarray:
        """Video indices of `part` ("train", "test" or "all") of split 1..3."""
        if part == "all":
            return np.arange(len(self.names))
        if split not in (1, 2, 3) or part not in ("train", "test"):
            raise ValueError(f"split must be 1..3 and part train/test/all, got {split}, {part!r}")
        return np.flatnonzero(self.splits[:, split - 1] == (1 if part == "train" else 2))

    def frames_path(self, shard: int) -> Path:
        return self.root / "frames" / shard_name(shard)

    def mask_set(self, stride: int) -> MaskSet:
        if self.masks is None:
            raise CacheError("this CacheIndex was opened without mask sets (open_cache(..., masks=MaskParams(...)))")
        if int(stride) not in self.strides:
            raise CacheError(f"stride {stride} is not among the mask sets opened ({self.strides}); open the "
                             f"cache with strides including it, after building it with:\n  "
                             f"{extract_command(self.dataset, self.root.parent.parent, self.decode, self.masks, (int(stride),))}")
        return self.masks.at(stride)

    def masks_path(self, shard: int, stride: int) -> Path:
        return mask_set_dir(self.root, self.mask_set(stride)) / shard_name(shard)

    def named_masks_path(self, shard: int) -> Path:
        if not self.mask_set_name:
            raise CacheError("this CacheIndex was opened without a named mask set (open_cache(..., mask_set=NAME))")
        return mask_set_dir(self.root, NamedMaskSet(self.mask_set_name)) / shard_name(shard)


def open_cache(cache_dir: str | Path = "data_cache", dataset: str = "ucf101",
               decode: DecodeParams = DecodeParams(), masks: MaskParams | None = None,
               strides: Sequence[int] = DEFAULT_STRIDES, mask_set: str = "") -> CacheIndex:
    """Load the index of a frame set and check the mask sets of (masks, stride) for every
    stride in `strides` and, with `mask_set`, the named (imported) mask set of that name (it must
    exist, be complete and belong to the current frames), or explain exactly what to run."""
    root = frame_set_dir(cache_dir, dataset, decode)
    strides = tuple(int(x) for x in strides) if masks is not None else ()
    fix = extract_command(dataset, cache_dir, decode, masks, strides)
    manifest_path = root / "frames" / "manifest.json"
    if not manifest_path.exists():
        others = sorted(p.name for p in (Path(cache_dir) / dataset).glob("*/frames/manifest.json"))
        hint = f" (cached decode settings present: {', '.join(others)})" if others else ""
        raise CacheError(f"no cached frames for dataset '{dataset}' with {decode.key()} at {root}{hint}.\n"
                         f"Build them with:\n  {fix}")
    raw = manifest_path.read_bytes()
    manifest = parse_manifest(manifest_path, raw, fix)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"{manifest_path}: cache format {manifest.get('format_version')} != {FORMAT_VERSION}; "
                         f"rebuild with:\n  {fix} --force")
    if not manifest["complete"]:
        missing = sorted(set(range(manifest["n_shards"])) - set(manifest["shards_present"]))
        raise CacheError(f"{manifest_path}: frame cache incomplete, shards {missing[:10]} missing "
                         f"(an interrupted run, or parts of a --num-shards job not merged yet). Finish it with:\n  {fix}")
    digest = hashlib.sha256(raw)
    for stride in strides:
        mset = masks.at(stride)
        mpath = mask_set_dir(root, mset) / "manifest.json"
        if not mpath.exists():
            raise CacheError(_missing_mask_set_message(root, dataset, mset, mpath, fix))
        mraw = mpath.read_bytes()
        mman = parse_manifest(mpath, mraw, fix)
        if not mman["complete"] or mman["frames_shard_uids"] != {k: manifest["shard_uids"][k] for k in mman["frames_shard_uids"]}:
            raise CacheError(f"{mpath}: mask set {mset.key()} is incomplete or was computed from other frames "
                             f"(stale shards {mman.get('stale', [])}). Rebuild it with:\n  {fix}")
        digest.update(mraw)
    named_fix = ""
    if mask_set:
        named_fix = _check_named_set(root, dataset, cache_dir, decode, mask_set, manifest)
        digest.update((mask_set_dir(root, NamedMaskSet(mask_set)) / "manifest.json").read_bytes())
    v = manifest["videos"]
    return CacheIndex(
        dataset=dataset, root=root, classes=tuple(manifest["classes"]),
        names=np.array([x["name"] for x in v], dtype=object),
        labels=np.array([x["label"] for x in v], dtype=np.int64),
        n_frames=np.array([x["n_frames"] for x in v], dtype=np.int64),
        fps=np.array([x["fps"] for x in v], dtype=np.float64),
        heights=np.array([x["height"] for x in v], dtype=np.int32),
        widths=np.array([x["width"] for x in v], dtype=np.int32),
        splits=np.array([x["splits"] for x in v], dtype=np.int8).reshape(-1, 3),
        shard=np.array([x["shard"] for x in v], dtype=np.int32),
        first_frame=np.array([x["first_frame"] for x in v], dtype=np.int64),
        decode=decode, masks=masks, manifest_hash=digest.hexdigest()[:16], strides=strides,
        mask_set_name=str(mask_set or ""), mask_set_fix=named_fix)


def _check_named_set(root: Path, dataset: str, cache_dir, decode: DecodeParams, name: str,
                     frames_manifest: dict) -> str:
    """CacheError (naming the file and the import command) unless the named set `name` exists,
    is complete and was imported for the current frames; returns its import command."""
    try:
        nset = NamedMaskSet(name)
    except ValueError as e:
        raise CacheError(str(e)) from None
    placeholder = import_command(dataset, cache_dir, decode, name)
    npath = mask_set_dir(root, nset) / "manifest.json"
    if not npath.exists():
        have = named_mask_sets(root)
        raise CacheError(f"named mask set '{name}' is not in the cache for {dataset} ({npath} missing; named sets "
                         f"cached: {', '.join(have) or 'none'}). Import it (boxes, mask arrays or a mask function) "
                         f"with:\n  {placeholder}")
    nman = parse_manifest(npath, npath.read_bytes(), placeholder, tool="import_masks.py")
    fix = nman.get("command") or placeholder
    if nman.get("kind") != NAMED_KIND or nman.get("name") != name:
        raise CacheError(f"{npath}: not the manifest of the named mask set '{name}'. Import it again with:\n  {fix}")
    failed = nman.get("failed") or []
    if failed:
        listed = "\n".join(f"  {f['name']}: {f['reason']}" for f in failed[:10])
        more = f"\n  ... and {len(failed) - 10} more (all in {npath.parent / 'failures.txt'})" if len(failed) > 10 else ""
        raise CacheError(f"{npath}: named mask set '{name}' lacks {len(failed)} video(s) that could not be "
                         f"imported:\n{listed}{more}\nFix their masks (or pass --allow-missing to import videos "
                         f"without masks as empty) and import again with:\n  {fix}")
    uids = nman.get("frames_shard_uids") or {}
    if not nman.get("complete") or uids != {k: frames_manifest["shard_uids"].get(k) for k in uids}:
        raise CacheError(f"{npath}: named mask set '{name}' is incomplete or was imported for other frames "
                         f"(stale shards {nman.get('stale', [])}; the frames were rebuilt since, or an import was "
                         f"interrupted). Import it again with:\n  {fix}")
    return fix


def _missing_mask_set_message(root: Path, dataset: str, mset: MaskSet, mpath: Path, fix: str) -> str:
    have = sorted(p.parent.name for p in root.glob("masks-*/manifest.json"))
    old = old_mask_sets(root)
    msg = (f"mask set {mset.key()} is not cached for {dataset} ({mpath} missing; cached: "
           f"{', '.join(have) or 'none'}).\n")
    if old:
        msg += (f"This cache holds mask sets of an older format ({', '.join(p.name for p in old)}): soft masks "
                f"computed once per video over consecutive frames, much weaker than the reference's for "
                f"strides 2-4, and no longer read. Add the per-stride sets from the cached frames (no video is "
                f"decoded again; the frames stay as they are) with:\n  {fix}\n"
                f"then delete the old folders: rm -r {' '.join(str(p) for p in old)}")
    else:
        msg += f"Build it with:\n  {fix}"
    return msg


def clip_stride(indices: np.ndarray) -> tuple[int, bool]:
    """(stride s, regular) of a clip's frame indices t0, t0 + s, t0 + 2s, ...; regular is False
    when the clip runs past the end of its video, as the reference samples it: the indices are
    clamped to the last frame (a last step shorter than s, then repeats). ValueError for
    anything else."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"clip indices must be a non-empty 1-D array, got shape {idx.shape}")
    steps = np.diff(idx)
    if steps.size == 0:
        return 1, True
    s = int(steps[0])
    if s >= 1 and (steps == s).all():
        return s, True
    k = int(np.flatnonzero(steps != s)[0])                     # first step that is not s
    tail = steps[k + 1:] if 0 < steps[k] < s else steps[k:]    # one shorter step is allowed
    if s < 1 or (tail != 0).any():
        raise ValueError(f"clip indices must step by a constant stride >= 1 (a clip past the end of its video "
                         f"then repeats the last index), got {idx.tolist()}")
    return s, False


class ClipReader:
    """Reads frames and masks of clips from the shards, opening each HDF5 file on first use.

    Never opens a file in __init__ and drops its handles when pickled, so one reader can be
    handed to DataLoader workers under fork or spawn (h5py handles do not survive either).

    With `verify` (the default) a shard's index is checked against its checksum when the shard is
    opened, and every record returned against its CRC32: a damaged shard raises CacheError naming
    the file, the video and frame, and the command that repairs it. `verify=False` exists to
    measure what this costs (benchmarks/bench_loader.py).

    A mask shard's records are decoded with the codec its `codec` attribute names (codecs.py:
    "zrun", or "zlib-rle" in shards written before zrun and in those without the attribute); a
    clip's mask records, one contiguous span of the blob, are decoded in one call.
    """

    def __init__(self, index: CacheIndex, verify: bool = True):
        self.index = index
        self.verify = bool(verify)
        # (kind, shard) -> (file, blob, offsets, record CRC32s or None when not checked, mask codec
        # or None for frames)
        self._files: dict[tuple[object, int], tuple[h5py.File, h5py.Dataset, np.ndarray, list | None, str | None]] = {}

    def __getstate__(self) -> dict:
        return {"index": self.index, "verify": self.verify, "_files": {}}

    def _path(self, kind: object, shard: int) -> Path:
        """kind: "frames", "named" (the index's named mask set), or a stride (int) for that stride's mask set."""
        if kind == "frames":
            return self.index.frames_path(shard)
        if kind == "named":
            return self.index.named_masks_path(shard)
        return self.index.masks_path(shard, int(kind))

    def _fix(self, kind: object = None) -> str:
        """The command that checks the whole cache and rebuilds what is damaged (a named set:
        the command that imports it again)."""
        idx = self.index
        if kind == "named":
            return idx.mask_set_fix or import_command(idx.dataset, idx.root.parent.parent, idx.decode,
                                                      idx.mask_set_name)
        return extract_command(idx.dataset, idx.root.parent.parent, idx.decode, idx.masks,
                               idx.strides) + " --verify"

    def _open(self, kind: object, shard: int) -> tuple[h5py.File, h5py.Dataset, np.ndarray, list | None, str | None]:
        key = (kind, shard)
        if key not in self._files:
            path = self._path(kind, shard)
            blob_name, offsets_name, crc_name = BLOBS["frames" if kind == "frames" else "masks"]
            fix = (f"Import it again with:\n  {self._fix(kind)}" if kind == "named" else
                   f"Check the whole cache and rebuild what is damaged with:\n  {self._fix()}")
            f = None
            try:
                f = h5py.File(path, "r")
                if kind == "named" and str(f.attrs.get("mask_kind", "")) != NAMED_KIND:
                    raise CacheError(f"{path}: not a shard of a named mask set (mask_kind "
                                     f"{f.attrs.get('mask_kind')!r}). {fix}")
                codec = None if kind == "frames" else str(f.attrs.get("codec", LEGACY_MASK_CODEC))
                if codec is not None and codec not in MASK_CODECS:
                    raise CacheError(f"{path}: unknown mask codec {codec!r} (this version reads "
                                     f"{', '.join(MASK_CODECS)}): the shard was written by a newer version of "
                                     f"the pipeline, or is damaged. {fix}")
                crcs = f[crc_name][()].tolist() if self.verify and check_index(f, path, fix) else None
                blob = f[blob_name]
                offsets = f[offsets_name][()]
            except (OSError, KeyError, ValueError, RuntimeError, CacheError) as e:
                if f is not None:
                    f.close()
                if isinstance(e, CacheError):
                    raise
                raise CacheError(f"{path}: cannot read cache shard ({e}): the shard is damaged or unreadable. "
                                 f"{fix}") from e
            self._files[key] = (f, blob, offsets, crcs, codec)
        return self._files[key]

    def _damaged(self, kind: object, shard: int, video: int, record: int,
                 problem: str = "checksum mismatch") -> CacheError:
        t = record - int(self.index.first_frame[video])
        if kind == "named":
            return CacheError(f"{self._path(kind, shard)}: the shard is damaged: {problem} in record {record} "
                              f"({self.index.names[video]}, frame {t}, named mask set {self.index.mask_set_name}). "
                              f"Import the set again with:\n  {self._fix(kind)}")
        what = f"frame {t}" if kind == "frames" else f"frame {t}, mask set stride {kind}"
        return CacheError(f"{self._path(kind, shard)}: the shard is damaged: {problem} in record {record} "
                          f"({self.index.names[video]}, {what}). Check the whole cache and rebuild what is "
                          f"damaged with:\n  {self._fix()}")

    def _span(self, kind: object, video: int, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(span, starts, stops): one contiguous read of the blob covering the records of frames
        `indices` of `video`, record i being span[starts[i]:stops[i]], each checked against its
        CRC32 when verifying."""
        indices = np.asarray(indices, dtype=np.int64)
        n = int(self.index.n_frames[video])
        if indices.size == 0 or indices.min() < 0 or indices.max() >= n:
            raise IndexError(f"frame indices out of range for {self.index.names[video]} ({n} frames)")
        shard = int(self.index.shard[video])
        _, blob, offsets, crcs, _ = self._open(kind, shard)
        global_idx = indices + self.index.first_frame[video]
        lo, hi = int(global_idx.min()), int(global_idx.max())
        start, stop = int(offsets[lo]), int(offsets[hi + 1])
        try:
            span = blob[start:stop]  # one contiguous read covering the whole clip
        except OSError as e:
            path = self._path(kind, shard)
            raise CacheError(f"{path}: read failed ({e}): the shard is damaged. Check the whole cache and "
                             f"rebuild what is damaged with:\n  {self._fix(kind)}") from e
        starts, stops = offsets[global_idx] - start, offsets[global_idx + 1] - start
        if crcs is not None:      # only the records returned: ~2 us per 6.5 KB frame
            for g, a, b in zip(global_idx.tolist(), starts.tolist(), stops.tolist()):
                if zlib.crc32(span[a:b]) != crcs[g]:
                    raise self._damaged(kind, shard, video, g)
        return span, starts, stops

    def _records(self, kind: object, video: int, indices: np.ndarray) -> list[np.ndarray]:
        span, starts, stops = self._span(kind, video, indices)
        return [span[a:b] for a, b in zip(starts.tolist(), stops.tolist())]

    def _mask_records(self, kind: object, video: int, indices: np.ndarray) -> np.ndarray:
        """uint8 [T,H,W]: the mask records of frames `indices` of `video` in the mask shard of
        `kind` (a stride, or "named"), decoded with the shard's codec in one call."""
        shard = int(self.index.shard[video])
        span, starts, stops = self._span(kind, video, indices)
        codec = self._open(kind, shard)[4]
        out = np.empty((len(starts), int(self.index.heights[video]), int(self.index.widths[video])), np.uint8)
        try:
            return decode_masks(span, starts, stops, out, codec)
        except RecordError as e:      # bytes that passed their CRC32 (or were not checked) but do not decode
            g = int(np.asarray(indices, dtype=np.int64)[e.record] + self.index.first_frame[video])
            raise self._damaged(kind, shard, video, g, f"not a valid {codec} mask record ({e.reason})") from None

    def frames(self, video: int, indices: np.ndarray) -> np.ndarray:
        """uint8 [T,H,W,3] RGB frames `indices` of video `video`."""
        recs = self._records("frames", video, indices)
        out = np.empty((len(recs), int(self.index.heights[video]), int(self.index.widths[video]), 3), np.uint8)
        for record, frame in zip(recs, out):
            decode_frame(record, frame)  # straight into the clip array, no stacking copy
        return out

    def diffs(self, video: int, indices: np.ndarray, stride: int) -> np.ndarray:
        """uint8 [T,H,W]: the stored thresholded differences D of frames `indices` in the mask set
        of `stride` (frame t against the background of its phase t mod stride)."""
        self.index.mask_set(stride)          # a clear error if that stride was not opened
        return self._mask_records(int(stride), video, indices)

    def named_masks(self, video: int, indices: np.ndarray) -> np.ndarray:
        """uint8 [T,H,W]: the masks of frames `indices` (any indices, a clip of any stride, repeats
        allowed) of video `video` in the named mask set the index was opened with, as stored:
        final masks at cached resolution, no stretch, dilation or first-mask rule."""
        if not self.index.mask_set_name:
            raise CacheError("this CacheIndex was opened without a named mask set (open_cache(..., mask_set=NAME))")
        return self._mask_records("named", video, indices)

    def clip_diffs(self, video: int, indices: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
        """uint8 [T,H,W]: the thresholded differences D of the clip `indices` (t0, t0 + s, ...),
        with the clip's first-mask rule applied (D[0] = D[1]). A regular clip reads them from the
        mask set of stride s. A clip past the end of its video (clamped indices: only videos
        shorter than the clip's span) is computed from its own frames with Algorithm 1 (exact;
        pass `frames`, the clip's decoded frames, to avoid decoding them again)."""
        from preprocess.masks import stride_diffs

        indices = np.asarray(indices, dtype=np.int64)
        stride, regular = clip_stride(indices)
        if regular:
            d = self.diffs(video, indices, stride)
        else:
            if self.index.masks is None:
                raise CacheError("this CacheIndex was opened without mask sets (open_cache(..., masks=MaskParams(...)))")
            if frames is None:
                frames = self.frames(video, indices)
            d = stride_diffs(frames, self.index.masks.lam, self.index.masks.m, 1)
        if len(d) >= 2:
            d[0] = d[1]        # the first mask is replaced by the second (on D: the same thing)
        return d

    def masks(self, video: int, indices: np.ndarray, mode: str = "soft", dilate: bool = True) -> np.ndarray:
        """uint8 [T,H,W]: the masks of the clip `indices` of video `video` at cached resolution,
        before any spatial augmentation, as a stride-s clip gets them from the cache.

        `indices` are a clip's frames: t0, t0 + s, t0 + 2s, ... (a constant step s >= 1, which
        selects the mask set of stride s; clamped to the last frame past the end of the video,
        as `train.mac.sample_clip_indices` and the reference sample them). Per frame the D is
        stretched over the whole frame (soft) or thresholded (hard) and dilated, and the clip's
        first mask is replaced by its second, as Algorithm 1 does for a clip. For a clip that
        starts at its phase's first frame (t0 < s) or runs past the video's end, the result is
        bit-exact to Algorithm 1 run on `frames(video, indices)`; for later starts the
        background carries the phase's earlier frames (docs/method.md section 1 gives the agreement)."""
        from preprocess.masks import masks_from_diffs

        return masks_from_diffs(self.clip_diffs(video, indices), mode, dilate)

    def close(self) -> None:
        for f, *_ in self._files.values():
            f.close()
        self._files.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
