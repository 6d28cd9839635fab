"""The on-disk cache of decoded frames and foreground masks: format, validity rules and readers.

Layout (one frame set per dataset and decode parameters; mask sets live beside it, one folder
per parameter set, so adding a set never rewrites frames or other sets):

    data_cache/<dataset>/<decode key>/              e.g. data_cache/ucf101/s128_q90_420/
        frames/shard-00000.h5 ...                   JPEG frames of videos 0..S-1 (sorted by path)
        frames/manifest.json                        per-video index of the whole frame set
        masks-<lam/m>_stride<s>/shard-00000.h5 ...  e.g. masks-lam30_m0.5_stride2/: one mask set
        masks-<lam/m>_stride<s>/manifest.json       per (lambda, m) and temporal stride s
        masks-ext-<NAME>/shard-00000.h5 ...         a named mask set imported from elsewhere
        masks-ext-<NAME>/manifest.json              (preprocess/import_masks.py), e.g. masks-ext-gt/
        failures.txt                                the last run's failures, one line per video

A mask set (lambda, m, stride s) stores, for every frame t of every video, the thresholded
difference D(t) of Algorithm 1 (SPEC section 1: |I(t) - BG| where it exceeds lambda, else 0)
against a background that runs over every s-th frame of the video, one phase per start offset
t mod s: a stride-s training clip t0, t0+s, ... reads the differences of its own frame sequence,
as the reference computes them per clip, except that the background at the clip's first frame
carries the phase's history (the reference starts it at the clip). D is neither stretched nor
dilated: the loader applies the per-frame min-max stretch over the clip's crop (exactly as the
reference, which computes masks after cropping), the dilation and the first-mask rule, so the
mask mode (soft/hard) and the dilation are sample-time options, not cache keys.

A named mask set (`NamedMaskSet`, written by preprocess/import_masks.py from boxes, mask arrays or a
callable) stores FINAL masks instead: uint8 0..255 per frame (soft or binary as imported), one per
frame of every video, stride-independent (a clip of any stride reads the masks of its own frame
indices), never stretched, dilated or given the first-mask rule; the trainer (`--mask-set NAME`)
crops, resizes and flips them with the clip's frames. Its shards use the same record codec, CRCs,
index checksum and temp+rename writes as the other mask shards (attribute mask_kind = "named"), one
per frame shard, tied to it by frames_uid; its manifest records the source (file, kind
boxes/arrays/fn, source resolution) and every video that could not be imported, with the reason.
A named set is complete when every shard is current and no video failed: `open_cache(...,
mask_set=NAME)` refuses anything else with the import command to run.

Shard files (HDF5). Every frame of every video is stored as one independently decodable record in
a flat uint8 blob, with an int64 offsets table: a clip read is one contiguous HDF5 read of the
byte range spanning the clip plus one small decode per needed frame.

    frames shard: jpeg[bytes], jpeg_offsets[F+1], jpeg_crc32[F], and per video: names, labels,
                  splits[V,3], n_frames, first_frame, fps, height, width, source_size, source_mtime_ns
    mask shard:   data[bytes] (D, uint8 HxW per frame, deflated with zlib's run-length strategy), offsets[F+1],
                  crc32[F], names, n_frames; attrs frames_uid = the uid of the frame shard the masks were
                  computed from, masks = {lam, m, stride}, mask_format, stats (mean soft mask and coverage on
                  a sample of frames, for `extract_masks.py --list`)
    named shard:  as a mask shard, data = final masks; attrs mask_kind = "named", mask_set = NAME,
                  source (JSON), mask_format = NAMED_MASK_FORMAT, stats of the masks as stored
    both:         attr index_crc32 = CRC32 over every dataset but the blob and every other attribute

Each shard is written to a temporary file and renamed into place when complete, so a file named
shard-*.h5 is always whole. Validity: a frame shard is current when its decode parameters, video
list and each source file's size and mtime match; a mask shard when its parameters match and its
frames_uid equals the current frame shard's uid (so masks never outlive the frames they came from).

Integrity. HDF5 keeps no checksums for this layout (uncompressed chunks), and neither JPEG nor
every zlib stream notices a flipped byte: the damage would be decoded and trained on. So every
record carries a CRC32 (zlib.crc32, computed from the bytes in memory before they are written)
and the index one more (`index_crc32`). `ClipReader` checks a shard's index once when it opens
it and the CRC of every record it returns (about 1 % of a sample's time, see
benchmarks/bench_loader.py); `read_shard_info` checks the index, so planning rebuilds a shard
whose index is damaged; `verify_shard` (extract_masks.py --verify) checks every record of a
shard. manifest.json carries the sha256 of its own canonical JSON. Shards and manifests written
before checksums existed have none: they are read unverified, and --verify says so.

Masks are always computed from the cached JPEG frames decoded with the cache's own decoder
(libjpeg-turbo through simplejpeg, accurate integer IDCT), both in the first run (which decodes
the JPEG it has just encoded) and in later runs that add a mask set from cached frames without
running ffmpeg. So the same parameters give byte-identical masks whichever run computed them, and
the masks are those of the exact pixels the trainer reads.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np
import simplejpeg

from core import atomic
from core.errors import ToolError
FORMAT_VERSION = 1
# Mask sets: 2 = per-stride thresholded differences D with the reference's background arithmetic
# (w = 1 - m; BG = trunc(w I + (1 - w) BG)). Format 1 (one set of soft masks per video over
# consecutive frames, the update written (1 - m) I + m BG) is detected and never read.
MASK_FORMAT = 2
DEFAULT_STRIDES = (1, 2, 3, 4)
MASK_STATS_EVERY = 4  # one frame in 4 feeds the per-set statistics (mean mask value, coverage)
DEFAULT_VIDEOS_PER_SHARD = 32
BLOB_CHUNK_BYTES = 1 << 16  # small: the last, partly filled chunk of a shard is allocated whole
MASK_ZLIB_LEVEL = 1
# Named (imported) mask sets: final masks, uint8 0..255 per frame, stride-independent.
NAMED_MASK_FORMAT = 1
NAMED_KIND = "named"
NAMED_PREFIX = "ext-"          # folder masks-ext-<NAME>
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


class CacheError(ToolError):
    """The cache is missing, stale, incomplete or damaged. The message names the file and the fix."""


@dataclass(frozen=True)
class DecodeParams:
    """Everything that determines the cached frames' pixels."""

    short_side: int = 128
    jpeg_quality: int = 90
    subsampling: str = "420"

    def key(self) -> str:
        return f"s{self.short_side}_q{self.jpeg_quality}_{self.subsampling}"


@dataclass(frozen=True)
class MaskParams:
    """Algorithm 1's parameters: the threshold lambda and m, the weight of the OLD background."""

    lam: int = 30
    m: float = 0.5

    def key(self) -> str:
        return f"lam{self.lam}_m{self.m:g}"

    def at(self, stride: int) -> "MaskSet":
        return MaskSet(self.lam, self.m, int(stride))


@dataclass(frozen=True)
class MaskSet:
    """One stored mask set: Algorithm 1's parameters and the temporal stride of its phases.
    Together with the frame set it is computed from, this determines every stored byte."""

    lam: int = 30
    m: float = 0.5
    stride: int = 1

    @property
    def params(self) -> MaskParams:
        return MaskParams(self.lam, self.m)

    def key(self) -> str:
        return f"{self.params.key()}_stride{self.stride}"


@dataclass(frozen=True)
class NamedMaskSet:
    """A mask set imported from elsewhere (preprocess/import_masks.py), selected by name: final
    masks per frame, independent of lambda, m and the stride."""

    name: str

    def __post_init__(self) -> None:
        import re

        if not re.fullmatch(NAME_PATTERN, str(self.name)):
            raise ValueError(f"mask set name {self.name!r}: letters, digits, '_', '-', '.', starting with a letter "
                             f"or digit, at most 64 characters")

    def key(self) -> str:
        return f"{NAMED_PREFIX}{self.name}"


def valid_mask_set_name(name: str) -> bool:
    import re

    return re.fullmatch(NAME_PATTERN, str(name)) is not None


def frame_set_dir(cache_dir: str | Path, dataset: str, decode: DecodeParams) -> Path:
    return Path(cache_dir) / dataset / decode.key()


def mask_set_dir(frame_set: Path, mask_set: "MaskSet | NamedMaskSet") -> Path:
    return frame_set / f"masks-{mask_set.key()}"


def named_mask_sets(frame_set: Path) -> list[str]:
    """Names of the named mask sets that have a manifest."""
    return sorted(p.parent.name[len("masks-" + NAMED_PREFIX):]
                  for p in frame_set.glob(f"masks-{NAMED_PREFIX}*/manifest.json"))


def old_mask_sets(frame_set: Path) -> list[Path]:
    """Mask-set folders of an older format (e.g. masks-lam30_m0.5_soft_dilate: soft masks per
    video over consecutive frames): never read, reported so that the user can replace them."""
    old = []
    for manifest in sorted(frame_set.glob("masks-*/manifest.json")):
        try:
            content = json.loads(manifest.read_text())
            fmt = content.get("mask_format", 1)
        except (OSError, ValueError, AttributeError):
            continue
        if content.get("kind") == NAMED_KIND or manifest.parent.name.startswith("masks-" + NAMED_PREFIX):
            continue        # an imported set (import_masks.py), not an old frame-difference set
        if fmt != MASK_FORMAT:
            old.append(manifest.parent)
    return old


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.h5"


def extract_command(dataset: str, cache_dir: str | Path, decode: DecodeParams, masks: MaskParams | None,
                    strides: Sequence[int] = DEFAULT_STRIDES) -> str:
    """The exact command that builds what `open_cache` was asked for."""
    cmd = ["python preprocess/extract_masks.py", f"--dataset {dataset}"]
    if str(cache_dir) != "data_cache":
        cmd.append(f"--cache-dir {cache_dir}")
    if decode != DecodeParams():
        cmd.append(f"--short-side {decode.short_side} --jpeg-quality {decode.jpeg_quality}")
    if masks is not None:
        cmd.append(f"--lambda {masks.lam} --m {masks.m:g}")
        if tuple(strides) != DEFAULT_STRIDES:
            cmd.append("--strides " + " ".join(str(s) for s in strides))
    return " ".join(cmd)


def import_command(dataset: str, cache_dir: str | Path, decode: DecodeParams, name: str,
                   source: str | None = None) -> str:
    """The import_masks.py command that (re)builds the named mask set `name`; `source` is its
    source flags (e.g. "--boxes data/demo/boxes.csv --source-size 320x240"), a placeholder when
    unknown."""
    cmd = ["python preprocess/import_masks.py", f"--dataset {dataset}"]
    if str(cache_dir) != "data_cache":
        cmd.append(f"--cache-dir {cache_dir}")
    if decode != DecodeParams():
        cmd.append(f"--short-side {decode.short_side} --jpeg-quality {decode.jpeg_quality}")
    cmd.append(f"--name {name}")
    cmd.append(source or "--boxes FILE.csv --source-size WxH  (or --arrays DIR, or --mask-fn module:function)")
    return " ".join(cmd)


# --------------------------------------------------------------------------------------------
# Record codecs: one JPEG per frame, one zlib stream per mask.

def encode_frame(frame: np.ndarray, decode: DecodeParams) -> bytes:
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(frame), quality=decode.jpeg_quality, colorspace="RGB",
        colorsubsampling=decode.subsampling)


def decode_frame(record: bytes | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one JPEG record (into `out`, a contiguous uint8 [H,W,3] array, when given)."""
    # Accurate IDCT and upsampling: deterministic integer code in libjpeg-turbo, so masks computed
    # from these pixels are reproducible across runs and machines with the same library.
    return simplejpeg.decode_jpeg(record, colorspace="RGB", fastdct=False, fastupsample=False, buffer=out)


def encode_mask(mask: np.ndarray) -> bytes:
    # Deflate with the run-length strategy: masks are mostly zero runs, and Z_RLE skips the hash
    # chains. Measured on 128x171 soft masks against plain level 1: 15-45 % fewer bytes at the same
    # encoding speed (decoding ~50 us instead of ~25). Any zlib decoder reads it.
    packer = zlib.compressobj(MASK_ZLIB_LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return packer.compress(np.ascontiguousarray(mask).tobytes()) + packer.flush()


def decode_mask(record: bytes | np.ndarray, height: int, width: int) -> np.ndarray:
    return np.frombuffer(zlib.decompress(record), dtype=np.uint8).reshape(height, width)


# --------------------------------------------------------------------------------------------
# Integrity: a CRC32 per record and one over each shard's index (see the module docstring).

# kind -> (blob, offsets table, CRC32 table) dataset names
BLOBS = {"frames": ("jpeg", "jpeg_offsets", "jpeg_crc32"), "masks": ("data", "offsets", "crc32")}
INDEX_CRC_ATTR = "index_crc32"
VERIFY_SLICE_BYTES = 64 << 20   # --verify reads the blob in slices of about this size
NO_CHECKSUMS = "no checksums (written by an older version; rebuild with --force to add them)"


def _shard_kind(f: h5py.File) -> str:
    return "masks" if str(f.attrs.get("kind", "frames")) == "masks" else "frames"


def _canonical(value) -> bytes:
    """Bytes of a dataset's or attribute's value that do not depend on how h5py returns it."""
    a = np.asarray(value)
    if a.dtype.kind in "OSU":   # strings (names, JSON attributes): UTF-8, NUL-separated
        items = a.ravel().tolist()
        return "\0".join(x.decode() if isinstance(x, bytes) else str(x) for x in items).encode("utf-8")
    return np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def index_checksum(f: h5py.File) -> int:
    """CRC32 over a shard's index: every dataset but the blob (names, offsets, the record CRCs,
    the per-video columns) and every attribute but the checksum itself, each with its name."""
    blob = BLOBS[_shard_kind(f)][0]
    crc = 0
    for name in sorted(f.keys()):
        if name != blob:
            value = f[name][()]
            crc = zlib.crc32(f"dataset {name} {np.shape(value)}\0".encode(), crc)
            crc = zlib.crc32(_canonical(value), crc)
    for name in sorted(f.attrs.keys()):
        if name != INDEX_CRC_ATTR:
            crc = zlib.crc32(f"attr {name}\0".encode(), crc)
            crc = zlib.crc32(_canonical(f.attrs[name]), crc)
    return crc


def check_index(f: h5py.File, path: Path, fix: str) -> bool:
    """True when the shard's index matches its checksum, False for a shard written before
    checksums existed (nothing to check); CacheError naming the file and `fix` when damaged."""
    stored = f.attrs.get(INDEX_CRC_ATTR)
    has_table = BLOBS[_shard_kind(f)][2] in f
    if stored is None and not has_table:
        return False
    if stored is None or not has_table:
        problem = "its index checksum or its record checksums are missing"
    elif index_checksum(f) != int(stored):
        problem = "its index (names, offsets, record checksums, per-video columns) does not match its checksum"
    else:
        return True
    raise CacheError(f"{path}: the shard is damaged: {problem}. {fix}".rstrip())


def record_name(f: h5py.File, record: int) -> str:
    """'video, frame t' of a shard's record number."""
    first = f["first_frame"][()]
    v = max(0, int(np.searchsorted(first, record, side="right")) - 1)
    name = f["names"][v]
    return f"{name.decode() if isinstance(name, bytes) else name}, frame {record - int(first[v])}"


@dataclass(frozen=True)
class ShardCheck:
    """The result of `verify_shard`."""

    path: Path
    kind: str              # "frames" or "masks"
    records: int           # records checked
    checksums: bool        # False: written before checksums existed, nothing checked
    problem: str | None    # None when intact, else what is damaged


def verify_shard(path: Path) -> ShardCheck:
    """Check a whole shard: its index checksum and the CRC32 of every record, reading the blob in
    slices of ~VERIFY_SLICE_BYTES. Never raises for a damaged file: the problem is in the result."""
    kind = "frames" if path.parent.name == "frames" else "masks"
    try:
        with h5py.File(path, "r") as f:
            kind = _shard_kind(f)
            blob_name, offsets_name, crc_name = BLOBS[kind]
            try:
                if not check_index(f, path, ""):
                    return ShardCheck(path, kind, 0, False, None)
            except CacheError:
                return ShardCheck(path, kind, 0, True, "index checksum mismatch")
            offsets = f[offsets_name][()].tolist()
            crcs = f[crc_name][()].tolist()
            blob = f[blob_name]
            n = len(offsets) - 1
            if len(crcs) != n or offsets[-1] != blob.shape[0]:
                return ShardCheck(path, kind, 0, True, f"index and data disagree ({n} records, {len(crcs)} "
                                                       f"checksums, {offsets[-1]} of {blob.shape[0]} bytes indexed)")
            bad = []
            lo = 0
            while lo < n:
                hi = int(np.searchsorted(offsets, offsets[lo] + VERIFY_SLICE_BYTES, side="right")) - 1
                hi = min(max(hi, lo + 1), n)
                base = offsets[lo]
                span = blob[base:offsets[hi]]
                bad += [g for g in range(lo, hi)
                        if zlib.crc32(span[offsets[g] - base:offsets[g + 1] - base]) != crcs[g]]
                lo = hi
            problem = None
            if bad:
                problem = f"checksum mismatch in record {bad[0]} ({record_name(f, bad[0])})"
                if len(bad) > 1:
                    problem += f" and {len(bad) - 1} more record(s)"
            return ShardCheck(path, kind, n, True, problem)
    except (OSError, KeyError, ValueError, RuntimeError) as e:   # what h5py raises for broken metadata
        return ShardCheck(path, kind, 0, True, f"unreadable ({e})")


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
    and CRC32s (of the bytes as they are in memory, before HDF5 sees them)."""

    def __init__(self, h5: h5py.File, name: str):
        self.data = h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.uint8,
                                      chunks=(BLOB_CHUNK_BYTES,))
        self.offsets = [0]
        self.crcs: list[int] = []

    def append(self, records: Sequence[bytes]) -> None:
        if not records:
            return
        buf = np.frombuffer(b"".join(records), dtype=np.uint8)
        start = self.offsets[-1]
        self.data.resize((start + buf.size,))
        self.data[start:] = buf
        for r in records:
            self.offsets.append(self.offsets[-1] + len(r))
            self.crcs.append(zlib.crc32(r))

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

    def add_masks(self, masks: np.ndarray) -> None:
        """Account for sampled frames of final masks uint8 [t, H, W] (a named set: as stored)."""
        sample = masks[::MASK_STATS_EVERY]
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
                                    "mask_format": NAMED_MASK_FORMAT, "codec": "zlib-rle",
                                    "source": json.dumps(source or {}, sort_keys=True),
                                    "content": "final masks (uint8 0..255) per frame, imported: used as stored "
                                               "(no stretch, no dilation, no first-mask rule)"})
                    self._blobs[params] = _BlobWriter(f, "data")
                    continue
                f.attrs.update({**common, "kind": "masks", "uid": os.urandom(8).hex(),
                                "frames_uid": self.uid, "masks": json.dumps(asdict(params)),
                                "mask_format": MASK_FORMAT, "codec": "zlib-rle",
                                "content": "Algorithm 1 thresholded difference D per frame, against the "
                                           "background of the frame's phase (t mod stride); not stretched, "
                                           "not dilated"})
                self._blobs[params] = _BlobWriter(f, "data")
        except BaseException:
            self.abort()
            raise

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
            done = blob.n_records - (self._frames_in_video if key == "frames" else self._masks_in_video[key])
            del blob.offsets[done + 1:]
            del blob.crcs[done:]
            blob.data.resize((blob.offsets[-1],))
        self._frames_in_video = 0
        self._masks_in_video = {p: 0 for p in self._masks_in_video}
        self._stats_video = {p: MaskStats() for p in self._stats_video}
        self.failures.append({"name": name, "reason": reason, "source_size": source_size,
                              "source_mtime_ns": source_mtime_ns})

    def _write_index(self, f: h5py.File, key: object) -> None:
        rows = self.rows
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
# Reading shard metadata and judging validity.

@dataclass(frozen=True)
class ShardInfo:
    path: Path
    uid: str
    names: tuple[str, ...]
    failed: tuple[dict, ...]
    attrs: dict = field(repr=False)
    checksums: bool = False       # the index was checked against its checksum (False: an older shard)


REBUILD_HINT = "Rerun extract_masks.py: it rebuilds shards whose index is damaged."


def read_shard_info(path: Path) -> ShardInfo:
    """Index-level metadata of a shard file, its index checksum checked (cheap: no record is
    read); raises CacheError naming the file if unreadable or damaged."""
    try:
        with h5py.File(path, "r") as f:
            checked = check_index(f, path, REBUILD_HINT)
            attrs = dict(f.attrs)
            names = tuple(n.decode() if isinstance(n, bytes) else n for n in f["names"][()])
            return ShardInfo(path, str(attrs["uid"]), names, tuple(json.loads(attrs.get("failed", "[]"))), attrs,
                             checked)
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise CacheError(f"{path}: unreadable or damaged cache shard ({e}); rerun extract_masks.py "
                         f"(it rebuilds damaged shards) or delete the file") from e


def frames_shard_is_current(info: ShardInfo, decode: DecodeParams, planned: Sequence[tuple[str, int, int]]) -> str | None:
    """None if the frame shard holds exactly `planned` [(name, size, mtime_ns)]; else why not."""
    if json.loads(info.attrs.get("decode", "{}")) != asdict(decode):
        return "decode parameters differ"
    if int(info.attrs.get("format_version", -1)) != FORMAT_VERSION:
        return "cache format version differs"
    stored = {}
    with h5py.File(info.path, "r") as f:
        for n, s, t in zip(info.names, f["source_size"][()], f["source_mtime_ns"][()]):
            stored[n] = (int(s), int(t))
    for fail in info.failed:
        stored[fail["name"]] = (int(fail["source_size"]), int(fail["source_mtime_ns"]))
    want = {n: (s, t) for n, s, t in planned}
    if set(stored) != set(want):
        return "the shard's video list changed"
    changed = [n for n in want if stored[n] != want[n]]
    if changed:
        return f"source changed: {changed[0]}" + (f" (+{len(changed) - 1} more)" if len(changed) > 1 else "")
    return None


def named_shard_is_current(info: ShardInfo, mask_set: NamedMaskSet, frames_uid: str,
                           source: dict | None = None) -> str | None:
    """None if a named set's shard belongs to `mask_set`, was imported for the frame shard
    `frames_uid` (and, when given, from `source`); else why not."""
    if str(info.attrs.get("mask_kind", "")) != NAMED_KIND or str(info.attrs.get("mask_set")) != mask_set.name:
        return "not a shard of this named mask set"
    if int(info.attrs.get("mask_format", -1)) != NAMED_MASK_FORMAT:
        return f"named mask format {int(info.attrs.get('mask_format', -1))} (current: {NAMED_MASK_FORMAT})"
    if str(info.attrs.get("frames_uid")) != frames_uid:
        return "imported for other frames (the frame shard was rebuilt)"
    if source is not None and json.loads(info.attrs.get("source", "{}")) != source:
        return "imported from another source"
    return None


def mask_shard_is_current(info: ShardInfo, masks: MaskSet, frames_uid: str) -> str | None:
    if int(info.attrs.get("mask_format", 1)) != MASK_FORMAT:
        return f"mask format {int(info.attrs.get('mask_format', 1))} (current: {MASK_FORMAT})"
    if json.loads(info.attrs.get("masks", "{}")) != asdict(masks):
        return "mask parameters differ"
    if str(info.attrs.get("frames_uid")) != frames_uid:
        return "computed from other frames (the frame shard was rebuilt)"
    return None


# --------------------------------------------------------------------------------------------
# Manifests: the per-video index of a whole frame set (and of each mask set).

def _atomic_write_text(path: Path, text: str) -> None:
    try:
        if path.read_text(encoding="utf-8") == text:
            return      # unchanged: the file (and its mtime) stays as it is
    except (OSError, ValueError):
        pass
    atomic.write_text(path, text)


def _manifest_digest(manifest: dict) -> str:
    """sha256 of a manifest's canonical JSON, its own "sha256" field left out."""
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_manifest(path: Path, manifest: dict) -> dict:
    manifest = {**manifest, "sha256": _manifest_digest(manifest)}
    _atomic_write_text(path, json.dumps(manifest, indent=0))
    return manifest


def parse_manifest(path: Path, raw: bytes, fix: str, tool: str = "extract_masks.py") -> dict:
    """A manifest.json's content, its sha256 checked (manifests written before checksums have
    none and are accepted); CacheError naming the file and `fix` when damaged."""
    hint = (f"Rerunning extract_masks.py rewrites it from the shards:\n  {fix}" if tool == "extract_masks.py"
            else f"Rerunning {tool} rewrites it:\n  {fix}")
    try:
        manifest = json.loads(raw)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:         # JSONDecodeError and UnicodeDecodeError included
        raise CacheError(f"{path}: damaged manifest (not valid JSON: {e}). {hint}") from e
    stored = manifest.get("sha256")
    if stored is not None and stored != _manifest_digest(manifest):
        raise CacheError(f"{path}: damaged manifest (its content does not match its sha256). {hint}")
    return manifest


def read_manifest(path: Path, fix: str = "python preprocess/extract_masks.py ...") -> dict:
    return parse_manifest(path, path.read_bytes(), fix)


def write_frames_manifest(frame_set: Path, dataset: str, classes: Sequence[str], decode: DecodeParams,
                          n_shards: int, videos_per_shard: int) -> dict:
    """Scan the frame shards present and write frames/manifest.json (atomically)."""
    frames_dir = frame_set / "frames"
    videos, failed, shards = [], [], {}
    for shard_id in range(n_shards):
        path = frames_dir / shard_name(shard_id)
        if not path.exists():
            continue
        try:
            with h5py.File(path, "r") as f:
                check_index(f, path, "")
                uid = str(f.attrs["uid"])
                cols = {k: f[k][()] for k in ("names", "labels", "splits", "n_frames", "first_frame", "fps",
                                              "height", "width")}
                shard_failed = json.loads(f.attrs.get("failed", "[]"))
        except (OSError, KeyError, ValueError, CacheError):
            continue    # damaged: indexed as missing, so the cache reads incomplete until a rerun rebuilds it
        shards[shard_id] = uid
        failed += shard_failed
        for i, name in enumerate(cols["names"]):
            videos.append({"name": name.decode() if isinstance(name, bytes) else name,
                           "label": int(cols["labels"][i]), "splits": [int(x) for x in cols["splits"][i]],
                           "n_frames": int(cols["n_frames"][i]), "fps": float(cols["fps"][i]),
                           "height": int(cols["height"][i]), "width": int(cols["width"][i]),
                           "shard": shard_id, "first_frame": int(cols["first_frame"][i])})
    manifest = {"format_version": FORMAT_VERSION, "dataset": dataset, "classes": list(classes),
                "decode": asdict(decode), "n_shards": n_shards, "videos_per_shard": videos_per_shard,
                "shards_present": sorted(shards), "shard_uids": {str(k): v for k, v in shards.items()},
                "complete": len(shards) == n_shards, "failed": failed, "videos": videos}
    frames_dir.mkdir(parents=True, exist_ok=True)
    return _write_manifest(frames_dir / "manifest.json", manifest)


def _scan_mask_shards(mdir: Path, frames_manifest: dict, why_stale) -> tuple[list[int], list[int], list[ShardInfo]]:
    """(current shard ids, stale shard ids, the current shards' infos) of a mask set's folder;
    `why_stale(info, frames_uid)` is None for a current shard. A damaged shard is stale until a
    rerun rebuilds it."""
    present, stale, infos = [], [], []
    for shard_id in frames_manifest["shards_present"]:
        path = mdir / shard_name(shard_id)
        if not path.exists():
            continue
        try:
            info = read_shard_info(path)
        except CacheError:
            stale.append(shard_id)
            continue
        if why_stale(info, frames_manifest["shard_uids"][str(shard_id)]) is None:
            present.append(shard_id)
            infos.append(info)
        else:
            stale.append(shard_id)
    return present, stale, infos


def write_masks_manifest(frame_set: Path, masks: MaskSet, frames_manifest: dict) -> dict:
    mdir = mask_set_dir(frame_set, masks)
    present, stale, infos = _scan_mask_shards(mdir, frames_manifest,
                                              lambda info, uid: mask_shard_is_current(info, masks, uid))
    stats = MaskStats()
    for info in infos:
        stats.merge(MaskStats(**json.loads(info.attrs.get("stats", "{}"))))
    manifest = {"format_version": FORMAT_VERSION, "mask_format": MASK_FORMAT, "masks": asdict(masks),
                "stats": {**stats.to_dict(), "mean": stats.mean if stats.pixels else None,
                          "coverage": stats.coverage if stats.pixels else None},
                "shards_present": present,
                "stale": stale, "frames_shard_uids": {str(k): frames_manifest["shard_uids"][str(k)] for k in present},
                "complete": frames_manifest["complete"] and len(present) == frames_manifest["n_shards"]}
    mdir.mkdir(parents=True, exist_ok=True)
    return _write_manifest(mdir / "manifest.json", manifest)


def write_named_manifest(frame_set: Path, mask_set: NamedMaskSet, frames_manifest: dict, source: dict,
                         command: str, unmatched: Sequence[str] = ()) -> dict:
    """Scan a named set's shards and write its manifest.json (atomically): the source, the
    command that imports it, the videos that failed (with the reasons, from the shards), source
    videos that match no cached video, statistics, and whether the set is complete (every
    frame shard has a current shard of this set from this source, and no video failed)."""
    mdir = mask_set_dir(frame_set, mask_set)
    present, stale, infos = _scan_mask_shards(mdir, frames_manifest,
                                              lambda info, uid: named_shard_is_current(info, mask_set, uid, source))
    failed, videos, stats = [], 0, MaskStats()
    for info in infos:
        videos += len(info.names)
        failed += [{"name": f["name"], "reason": f["reason"]} for f in info.failed]
        stats.merge(MaskStats(**json.loads(info.attrs.get("stats", "{}"))))
    manifest = {"format_version": FORMAT_VERSION, "kind": NAMED_KIND, "mask_format": NAMED_MASK_FORMAT,
                "name": mask_set.name, "source": source, "command": command,
                "stats": {**stats.to_dict(), "mean": stats.mean if stats.pixels else None,
                          "coverage": stats.coverage if stats.pixels else None},
                "videos": videos, "failed": failed, "unmatched_source_videos": list(unmatched),
                "shards_present": present, "stale": stale,
                "frames_shard_uids": {str(k): frames_manifest["shard_uids"][str(k)] for k in present},
                "complete": (frames_manifest["complete"] and len(present) == frames_manifest["n_shards"]
                             and not failed)}
    mdir.mkdir(parents=True, exist_ok=True)
    return _write_manifest(mdir / "manifest.json", manifest)


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
    fix = extract_command(dataset, cache_dir, decode, masks, strides or DEFAULT_STRIDES)
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
    """

    def __init__(self, index: CacheIndex, verify: bool = True):
        self.index = index
        self.verify = bool(verify)
        # (kind, shard) -> (file, blob, offsets, record CRC32s or None when not checked)
        self._files: dict[tuple[object, int], tuple[h5py.File, h5py.Dataset, np.ndarray, list | None]] = {}

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
                               idx.strides or DEFAULT_STRIDES) + " --verify"

    def _open(self, kind: object, shard: int) -> tuple[h5py.File, h5py.Dataset, np.ndarray, list | None]:
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
            self._files[key] = (f, blob, offsets, crcs)
        return self._files[key]

    def _damaged(self, kind: object, shard: int, video: int, record: int) -> CacheError:
        t = record - int(self.index.first_frame[video])
        if kind == "named":
            return CacheError(f"{self._path(kind, shard)}: the shard is damaged: checksum mismatch in record {record} "
                              f"({self.index.names[video]}, frame {t}, named mask set {self.index.mask_set_name}). "
                              f"Import the set again with:\n  {self._fix(kind)}")
        what = f"frame {t}" if kind == "frames" else f"frame {t}, mask set stride {kind}"
        return CacheError(f"{self._path(kind, shard)}: the shard is damaged: checksum mismatch in record {record} "
                          f"({self.index.names[video]}, {what}). Check the whole cache and rebuild what is "
                          f"damaged with:\n  {self._fix()}")

    def _records(self, kind: object, video: int, indices: np.ndarray) -> list[np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        n = int(self.index.n_frames[video])
        if indices.size == 0 or indices.min() < 0 or indices.max() >= n:
            raise IndexError(f"frame indices out of range for {self.index.names[video]} ({n} frames)")
        shard = int(self.index.shard[video])
        _, blob, offsets, crcs = self._open(kind, shard)
        global_idx = indices + self.index.first_frame[video]
        lo, hi = int(global_idx.min()), int(global_idx.max())
        start, stop = int(offsets[lo]), int(offsets[hi + 1])
        try:
            span = blob[start:stop]  # one contiguous read covering the whole clip
        except OSError as e:
            path = self._path(kind, shard)
            raise CacheError(f"{path}: read failed ({e}): the shard is damaged. Check the whole cache and "
                             f"rebuild what is damaged with:\n  {self._fix(kind)}") from e
        recs = [span[offsets[g] - start:offsets[g + 1] - start] for g in global_idx]
        if crcs is not None:      # only the records returned: ~2 us per 6.5 KB frame
            for g, record in zip(global_idx.tolist(), recs):
                if zlib.crc32(record) != crcs[g]:
                    raise self._damaged(kind, shard, video, g)
        return recs

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
        h, w = int(self.index.heights[video]), int(self.index.widths[video])
        recs = self._records(int(stride), video, indices)
        out = np.empty((len(recs), h, w), np.uint8)
        for record, d in zip(recs, out):
            d[...] = decode_mask(record, h, w)
        return out

    def named_masks(self, video: int, indices: np.ndarray) -> np.ndarray:
        """uint8 [T,H,W]: the masks of frames `indices` (any indices, a clip of any stride, repeats
        allowed) of video `video` in the named mask set the index was opened with, as stored:
        final masks at cached resolution, no stretch, dilation or first-mask rule."""
        if not self.index.mask_set_name:
            raise CacheError("this CacheIndex was opened without a named mask set (open_cache(..., mask_set=NAME))")
        h, w = int(self.index.heights[video]), int(self.index.widths[video])
        recs = self._records("named", video, indices)
        out = np.empty((len(recs), h, w), np.uint8)
        for record, m in zip(recs, out):
            m[...] = decode_mask(record, h, w)
        return out

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
        background carries the phase's earlier frames (SPEC section 1 gives the agreement)."""
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


# --------------------------------------------------------------------------------------------
# Building a cache from arrays (tests, synthetic data): the same writer and mask code as the
# ffmpeg pipeline, minus the decoding.

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


def encode_video(frames_chunk: np.ndarray, decode: DecodeParams, streams: dict
                 ) -> tuple[list[bytes], dict[MaskSet, list[bytes]], dict[MaskSet, np.ndarray]]:
    """JPEG-encode a chunk of frames and feed the decoded JPEG pixels to the diff streams.

    Returns the JPEG records and, per mask set, the D records and arrays of the chunk.
    """
    jpegs = [encode_frame(f, decode) for f in frames_chunk]
    decoded = np.stack([decode_frame(j) for j in jpegs])
    records, diffs = mask_chunk(decoded, streams)
    return jpegs, records, diffs


def write_cache_from_arrays(cache_dir: str | Path, dataset: str, classes: Sequence[str],
                            videos: Iterable[tuple[str, int, tuple[int, int, int], np.ndarray, float]],
                            decode: DecodeParams = DecodeParams(), masks: Sequence[MaskParams] = (MaskParams(),),
                            videos_per_shard: int = DEFAULT_VIDEOS_PER_SHARD,
                            strides: Sequence[int] = DEFAULT_STRIDES) -> Path:
    """Write a complete cache from in-memory videos [(rel_path, label, splits, frames uint8 [T,H,W,3], fps)],
    with the mask sets of every (lambda, m) in `masks` at every stride in `strides`."""
    videos = sorted(videos, key=lambda v: v[0])
    root = frame_set_dir(cache_dir, dataset, decode)
    n_shards = max(1, -(-len(videos) // videos_per_shard))
    sets = [p.at(s) for p in masks for s in strides]
    for shard_id in range(n_shards):
        writer = ShardWriter(root / "frames" / shard_name(shard_id),
                             {ms: mask_set_dir(root, ms) / shard_name(shard_id) for ms in sets},
                             dataset=dataset, shard_id=shard_id, decode=decode, frames_uid=None)
        for name, label, splits, frames, fps in videos[shard_id * videos_per_shard:(shard_id + 1) * videos_per_shard]:
            jpegs, mrecs, diffs = encode_video(frames, decode, diff_streams(sets))
            writer.add_frames(jpegs, mrecs, diffs)
            writer.end_video(VideoRecord(name, int(label), tuple(splits), len(frames), float(fps),
                                         frames.shape[1], frames.shape[2], 0, 0))
        writer.commit()
    manifest = write_frames_manifest(root, dataset, classes, decode, n_shards, videos_per_shard)
    for ms in sets:
        write_masks_manifest(root, ms, manifest)
    return root
