"""Integrity: a CRC32 per record and one over each shard's index, checked when a shard is opened
(`check_index`) and, record by record, by `verify_shard` (extract_masks.py --verify).

HDF5 keeps no checksums for this layout (uncompressed chunks), and neither JPEG nor every zlib
stream notices a flipped byte: the damage would be decoded and trained on. So every record carries
a CRC32 (zlib.crc32, computed from the bytes in memory before they are written) and the index one
more (`index_crc32`). `ClipReader` checks a shard's index once when it opens it and the CRC of
every record it returns (about 1 % of a sample's time, see benchmarks/bench_loader.py);
`read_shard_info` checks the index, so planning rebuilds a shard whose index is damaged;
`verify_shard` checks every record of a shard. Shards written before checksums existed have none:
they are read unverified, and --verify says so. (manifest.json carries a sha256 of its own: see
manifest.py.)

This module only reads and judges; it never writes or repairs a file (the callers rebuild what it
finds damaged). docs/cache.md, "Checksums", states what is covered.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from preprocess.cache.format import CacheError


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


def frames_content_hash(index) -> str:
    """A 16-hex-digit identity of a frame cache's content: every video's name, label, splits,
    frame count, fps and size, the decode parameters and the CRC32 of each of its frame records,
    in name order. Unlike the manifest's hash it does not depend on how or when the cache was
    built (shard uids, sharding, source mtimes): two builds of the same videos with the same
    decode parameters have the same content hash, so results measured on one machine can be
    matched to a cache rebuilt on another (train/ledger.py). Reads each shard's index, no record."""
    import hashlib
    import json

    def canon(x) -> bytes:
        return json.dumps(x, separators=(",", ":")).encode()

    per_video: dict[str, bytes] = {}
    for shard in sorted({int(s) for s in index.shard}):
        path = index.frames_path(shard)
        with h5py.File(path, "r") as f:
            crcs = f[BLOBS["frames"][2]][()].astype("<u4")
            first, counts = f["first_frame"][()], f["n_frames"][()]
            for raw, a, n in zip(f["names"][()], first, counts):
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                per_video[name] = crcs[int(a):int(a) + int(n)].tobytes()
    h = hashlib.sha256(canon({"classes": list(index.classes), "decode": index.decode.key()}))
    for i in np.argsort(index.names.astype(str), kind="stable"):
        name = str(index.names[i])
        if name not in per_video:
            raise CacheError(f"{index.root}: video {name} is in the manifest but in no frame shard's index")
        h.update(canon([name, int(index.labels[i]), index.splits[i].tolist(), int(index.n_frames[i]),
                             float(index.fps[i]), int(index.heights[i]), int(index.widths[i])]))
        h.update(per_video[name])
    return h.hexdigest()[:16]
