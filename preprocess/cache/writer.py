"""Writing shards: `ShardWriter` writes one frame shard and, beside it, one shard per mask set
(per-stride or named), each to a temporary file renamed into place when complete, so a file named
shard-*.h5 is always whole; and the encoding of decoded frames into the records it takes
(`encode_video`, `mask_chunk`, `diff_streams`), shared by the ffmpeg pipeline
(preprocess/build.py) and by `write_cache_from_arrays` (arrays.py).

Masks are always computed from the cached JPEG frames decoded with the cache's own decoder
(libjpeg-turbo through simplejpeg, accurate integer IDCT), both in the first run (which decodes
the JPEG it has just encoded: `encode_video`) and in later runs that add a mask set from cached
frames without running ffmpeg (preprocess/build.py). So the same parameters give byte-identical
masks whichever run computed them, and the masks are those of the exact pixels the trainer reads.

The writer decides nothing: which shards to (re)build is planned by extract_masks.py from
manifest.py's validity rules, and it never writes a manifest. docs/cache.md states the datasets
and attributes of each shard file.
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import simplejpeg

from preprocess.cache.codecs import MASK_CODEC, decode_frame, encode_frame, encode_mask
from preprocess.cache.format import (BLOB_CHUNK_BYTES, FORMAT_VERSION, MASK_FORMAT, MASK_STATS_EVERY, NAMED_KIND,
                                     NAMED_MASK_FORMAT, DecodeParams, MaskSet, NamedMaskSet)
from preprocess.cache.integrity import BLOBS, INDEX_CRC_ATTR, index_checksum


# --------------------------------------------------------------------------------------------
# Writing shards.

def _tmp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def software_versions() -> dict[str, str]:
    import numba

    return {"format": str(FORMAT_VERSION), "mask_format": str(MASK_FORMAT), "numpy": np.__version__,
            "h5py": h5py.__version__,
            "hdf5": h5py.version.hdf5_version, "numba": numba.__version__,
            "simplejpeg": simplejpeg.__version__}


class _BlobWriter:
    """Appends variable-size records to a flat, chunked uint8 dataset and tracks their offsets
    and CRC32s (of the bytes as they are in memory, before HDF5 sees them). Records are written in
    batches of about FLUSH_BYTES (one resize and one write each: HDF5 costs ~1 ms a call, as much as
    a 16-frame chunk's JPEGs), and always before the index is written (`flush`)."""

    FLUSH_BYTES = 4 << 20

    def __init__(self, h5: h5py.File, name: str):
        self.data = h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.uint8,
                                      chunks=(BLOB_CHUNK_BYTES,))
        self.offsets = [0]
        self.crcs: list[int] = []
        self._pending: list[bytes] = []
        self._written = 0                   # bytes in the dataset; the rest of offsets[-1] is pending

    def append(self, records: Sequence[bytes]) -> None:
        for r in records:
            self.offsets.append(self.offsets[-1] + len(r))
            self.crcs.append(zlib.crc32(r))
        self._pending.extend(records)
        if self.offsets[-1] - self._written >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        buf = np.frombuffer(b"".join(self._pending), dtype=np.uint8)
        self.data.resize((self._written + buf.size,))
        self.data[self._written:] = buf
        self._written += buf.size
        self._pending = []

    def truncate(self, n_records: int) -> None:
        """Drop every record after the first `n_records` (a failed video's)."""
        del self.offsets[n_records + 1:]
        del self.crcs[n_records:]
        end = self.offsets[-1]
        if end <= self._written:
            self._pending = []
            self.data.resize((end,))
            self._written = end
        else:                               # the kept records end inside the pending batch
            kept = b"".join(self._pending)[:end - self._written]
            self._pending = [kept]

    @property
    def n_records(self) -> int:
        return len(self.offsets) - 1


@dataclass
class VideoRecord:
    """Per-video index row of a frame shard."""

    name: str
    label: int
    splits: tuple[int, int, int]
    n_frames: int
    fps: float
    height: int
    width: int
    source_size: int
    source_mtime_ns: int


@dataclass
class MaskStats:
    """Sums over sampled frames of a mask set: the mean soft mask value (dilated, the reference's
    default mask, stretched over the whole frame) and the coverage (share of non-zero pixels)."""

    frames: int = 0
    pixels: int = 0
    mask_sum: float = 0.0     # sum of mask values / 255
    nonzero: int = 0

    def add_diffs(self, diffs: np.ndarray) -> None:
        """Account for sampled frames of D uint8 [t, H, W] (every MASK_STATS_EVERY-th one)."""
        from preprocess.masks import masks_from_diffs

        sample = diffs[::MASK_STATS_EVERY]
        if len(sample) == 0:
            return
        masks = masks_from_diffs(sample, "soft", True)
        self.frames += len(sample)
        self.pixels += masks.size
        self.mask_sum += float(masks.sum(dtype=np.int64)) / 255.0
        self.nonzero += int(np.count_nonzero(masks))

    def add_masks(self, masks: np.ndarray, every: int = MASK_STATS_EVERY) -> None:
        """Account for every `every`-th frame of final masks uint8 [t, H, W] (a named set: as
        stored; stats.py: a sampled clip's masks, every frame)."""
        sample = masks[::every]
        if len(sample) == 0:
            return
        self.frames += len(sample)
        self.pixels += sample.size
        self.mask_sum += float(sample.sum(dtype=np.int64)) / 255.0
        self.nonzero += int(np.count_nonzero(sample))

    def merge(self, other: "MaskStats") -> None:
        self.frames += other.frames
        self.pixels += other.pixels
        self.mask_sum += other.mask_sum
        self.nonzero += other.nonzero

    @property
    def mean(self) -> float:
        return self.mask_sum / self.pixels if self.pixels else float("nan")

    @property
    def coverage(self) -> float:
        return self.nonzero / self.pixels if self.pixels else float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


class ShardWriter:
    """Writes one frame shard and, alongside, one shard per mask set (lambda, m, stride) or
    named set (a NamedMaskSet key: final masks, `frames_path` None, `frames_uid` the frame shard's,
    `source` its provenance).

    Usage: `add_frames(records, masks_by_set, diffs_by_set)` per decoded chunk, `end_video(row)`
    per video, `fail(...)` for a video that could not be processed, then `commit()` (atomic rename
    of every file) or `abort()`. Either all files of the shard appear complete, or none changes.
    """

    def __init__(self, frames_path: Path | None, mask_paths: dict[MaskSet, Path], *,
                 dataset: str, shard_id: int, decode: DecodeParams, frames_uid: str | None,
                 extra_attrs: dict | None = None, source: dict | None = None):
        self.frames_path, self.mask_paths = frames_path, dict(mask_paths)
        self.shard_id = shard_id
        self.uid = frames_uid or os.urandom(8).hex()  # frames uid: new when frames are written
        self.rows: list[VideoRecord] = []
        self.failures: list[dict] = []
        self._frames_in_video = 0
        self._masks_in_video = {p: 0 for p in self.mask_paths}
        self._stats = {p: MaskStats() for p in self.mask_paths}
        self._stats_video = {p: MaskStats() for p in self.mask_paths}
        common = {"format_version": FORMAT_VERSION, "dataset": dataset, "shard_id": shard_id,
                  "decode": json.dumps(asdict(decode)), "versions": json.dumps(software_versions()),
                  **(extra_attrs or {})}
        self._files: dict[object, h5py.File] = {}
        self._blobs: dict[object, _BlobWriter] = {}
        try:
            if frames_path is not None:
                f = self._open(frames_path, "frames")
                f.attrs.update({**common, "kind": "frames", "uid": self.uid})
                self._blobs["frames"] = _BlobWriter(f, "jpeg")
            for params, path in self.mask_paths.items():
                f = self._open(path, params)
                if isinstance(params, NamedMaskSet):
                    f.attrs.update({**common, "kind": "masks", "uid": os.urandom(8).hex(), "frames_uid": self.uid,
                                    "mask_kind": NAMED_KIND, "mask_set": params.name,
                                    "mask_format": NAMED_MASK_FORMAT, "codec": MASK_CODEC,
                                    "source": json.dumps(source or {}, sort_keys=True),
                                    "content": "final masks (uint8 0..255) per frame, imported: used as stored "
                                               "(no stretch, no dilation, no first-mask rule)"})
                    self._blobs[params] = _BlobWriter(f, "data")
                    continue
                f.attrs.update({**common, "kind": "masks", "uid": os.urandom(8).hex(),
                                "frames_uid": self.uid, "masks": json.dumps(asdict(params)),
                                "mask_format": MASK_FORMAT, "codec": MASK_CODEC,
                                "content": "Algorithm 1 thresholded difference D per frame, against the "
                                           "background of the frame's phase (t mod stride); not stretched, "
                                           "not dilated"})
                self._blobs[params] = _BlobWriter(f, "data")
        except BaseException:
            self.abort()
            raise

    @property
    def frames_in_shard(self) -> int:
        """Frame records of the videos ended so far: the next video's first frame in the shard."""
        return self._blobs["frames"].n_records - self._frames_in_video

    def _open(self, final: Path, key: object) -> h5py.File:
        final.parent.mkdir(parents=True, exist_ok=True)
        self._files[key] = h5py.File(_tmp_path(final), "w")
        return self._files[key]

    def add_frames(self, jpegs: Sequence[bytes] | None, masks: dict[MaskSet, Sequence[bytes]],
                   diffs: dict[MaskSet, np.ndarray] | None = None) -> None:
        """Append a chunk: JPEG records, mask records per set, and (for the statistics) the
        chunk's D arrays per set (a named set: its final masks)."""
        if jpegs is not None:
            self._blobs["frames"].append(jpegs)
            self._frames_in_video += len(jpegs)
        for params, recs in masks.items():
            self._blobs[params].append(recs)
            self._masks_in_video[params] += len(recs)
        for params, d in (diffs or {}).items():
            if isinstance(params, NamedMaskSet):
                self._stats_video[params].add_masks(d)
            else:
                self._stats_video[params].add_diffs(d)

    def end_video(self, row: VideoRecord) -> None:
        counts = set(self._masks_in_video.values())
        if self.frames_path is not None:
            counts.add(self._frames_in_video)
        if counts != {row.n_frames}:
            raise AssertionError(f"{row.name}: record counts {counts} != n_frames {row.n_frames}")
        self.rows.append(row)
        self._frames_in_video = 0
        self._masks_in_video = {p: 0 for p in self._masks_in_video}
        for p, st in self._stats_video.items():
            self._stats[p].merge(st)
        self._stats_video = {p: MaskStats() for p in self._stats_video}

    def fail(self, name: str, reason: str, source_size: int, source_mtime_ns: int) -> None:
        """Drop the partial records of the current video and remember why it failed."""
        for key, blob in self._blobs.items():
            blob.truncate(blob.n_records - (self._frames_in_video if key == "frames" else self._masks_in_video[key]))
        self._frames_in_video = 0
        self._masks_in_video = {p: 0 for p in self._masks_in_video}
        self._stats_video = {p: MaskStats() for p in self._stats_video}
        self.failures.append({"name": name, "reason": reason, "source_size": source_size,
                              "source_mtime_ns": source_mtime_ns})

    def _write_index(self, f: h5py.File, key: object) -> None:
        rows = self.rows
        self._blobs[key].flush()
        _, offsets_name, crc_name = BLOBS["frames" if key == "frames" else "masks"]
        n = np.array([r.n_frames for r in rows], dtype=np.int64)
        f.create_dataset("names", data=np.array([r.name for r in rows], dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("n_frames", data=n)
        f.create_dataset("first_frame", data=np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64))
        f.create_dataset(offsets_name, data=np.asarray(self._blobs[key].offsets, dtype=np.int64))
        f.create_dataset(crc_name, data=np.asarray(self._blobs[key].crcs, dtype=np.uint32))
        f.attrs["failed"] = json.dumps(self.failures)
        f.attrs["n_videos"] = len(rows)
        if key != "frames":
            f.attrs["stats"] = json.dumps(self._stats[key].to_dict())
        if key == "frames":
            f.create_dataset("labels", data=np.array([r.label for r in rows], dtype=np.int32))
            f.create_dataset("splits", data=np.array([r.splits for r in rows], dtype=np.int8).reshape(-1, 3))
            f.create_dataset("fps", data=np.array([r.fps for r in rows], dtype=np.float64))
            f.create_dataset("height", data=np.array([r.height for r in rows], dtype=np.int32))
            f.create_dataset("width", data=np.array([r.width for r in rows], dtype=np.int32))
            f.create_dataset("source_size", data=np.array([r.source_size for r in rows], dtype=np.int64))
            f.create_dataset("source_mtime_ns", data=np.array([r.source_mtime_ns for r in rows], dtype=np.int64))
        f.attrs[INDEX_CRC_ATTR] = np.uint32(index_checksum(f))  # last: it covers everything above

    def commit(self) -> int:
        """Finish every file and rename it into place; returns the bytes written."""
        total = 0
        try:
            for key, f in self._files.items():
                self._write_index(f, key)
                f.close()
            for key in self._files:
                final = self.frames_path if key == "frames" else self.mask_paths[key]
                tmp = _tmp_path(final)
                total += tmp.stat().st_size
                os.replace(tmp, final)
        except BaseException:
            self.abort()
            raise
        return total

    def abort(self) -> None:
        for key, f in self._files.items():
            try:
                f.close()
            except Exception:
                pass
            final = self.frames_path if key == "frames" else self.mask_paths[key]
            _tmp_path(final).unlink(missing_ok=True)



# --------------------------------------------------------------------------------------------
# Encoding decoded frames into the writer's records: shared by the ffmpeg pipeline
# (preprocess/build.py) and by `write_cache_from_arrays` (preprocess/cache/arrays.py).

def diff_streams(mask_sets: Sequence[MaskSet]) -> dict:
    """One DiffStream per (lambda, m) of `mask_sets`, computing exactly the strides asked of it
    (one grey conversion per frame serves them all)."""
    from preprocess.masks import DiffStream

    strides: dict = {}
    for ms in mask_sets:
        strides.setdefault(ms.params, []).append(ms.stride)
    return {p: DiffStream(p.lam, p.m, tuple(sorted(set(s)))) for p, s in strides.items()}


def mask_chunk(decoded: np.ndarray, streams: dict, only: Sequence[MaskSet] | None = None
               ) -> tuple[dict[MaskSet, list[bytes]], dict[MaskSet, np.ndarray]]:
    """Feed decoded frames [t,H,W,3] to the streams: (records, D arrays) per mask set (restricted
    to `only` when given)."""
    from preprocess.masks import grey_opencv

    grey = grey_opencv(decoded)
    records, diffs = {}, {}
    for p, stream in streams.items():
        for stride, d in stream.push_grey(grey).items():
            ms = p.at(stride)
            if only is None or ms in only:
                records[ms] = [encode_mask(x) for x in d]
                diffs[ms] = d
    return records, diffs


def _feed(jpegs: list[bytes], streams: dict, sampler, first: int) -> tuple[dict, dict]:
    """Decode what the diff streams and the sampler need of a chunk's JPEG records and feed it:
    every frame for mask sets, else only the frames the sampler wants (none when neither)."""
    want = sampler.wanted(first, first + len(jpegs)) if sampler is not None else np.empty(0, np.int64)
    if streams:
        decoded = np.stack([decode_frame(j) for j in jpegs])
        records, diffs = mask_chunk(decoded, streams)
        if len(want):
            sampler.add(want, decoded[want - first])
        return records, diffs
    if len(want):
        sampler.add(want, np.stack([decode_frame(jpegs[t - first]) for t in want.tolist()]))
    return {}, {}


def encode_video(frames_chunk: np.ndarray, decode: DecodeParams, streams: dict, sampler=None, first: int = 0
                 ) -> tuple[list[bytes], dict[MaskSet, list[bytes]], dict[MaskSet, np.ndarray]]:
    """JPEG-encode a chunk of RGB frames (frames `first`, `first` + 1, ... of its video) and feed
    the decoded JPEG pixels to the diff streams and to `sampler` (a stats.ClipStatsSampler: the
    frames it wants). Only what is fed is decoded: with no mask set, the sampled windows' frames.

    Returns the JPEG records and, per mask set, the D records and arrays of the chunk.
    """
    jpegs = [encode_frame(f, decode) for f in frames_chunk]
    return (jpegs, *_feed(jpegs, streams, sampler, first))


def encode_yuv_video(yuv_chunk: np.ndarray, size: tuple[int, int], decode: DecodeParams, streams: dict,
                     sampler=None, first: int = 0
                     ) -> tuple[list[bytes], dict[MaskSet, list[bytes]], dict[MaskSet, np.ndarray]]:
    """As `encode_video`, for a chunk of full-range YUV 4:2:0 frames of `size` (W, H) (ffmpeg's
    ``yuv=True`` output, uint8 [t, frame bytes]): the JPEGs are encoded from the planes."""
    from preprocess.cache.codecs import encode_frame_yuv
    from preprocess.decode import yuv420_planes

    planes = yuv420_planes(yuv_chunk, *size)
    jpegs = [encode_frame_yuv(y, u, v, decode) for y, u, v in zip(*planes)]
    return (jpegs, *_feed(jpegs, streams, sampler, first))
