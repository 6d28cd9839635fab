"""What is current: the metadata of a shard (`ShardInfo`, `read_shard_info`), the validity rules
that decide whether a shard is still the one its parameters and sources call for
(`frames_shard_is_current`, `mask_shard_is_current`, `named_shard_is_current`), and the
manifest.json files that index a frame set and each of its mask sets from the current shards.

It reads shard indexes and attributes, never records, and the only files it writes are
manifest.json (atomically, and not at all when the content is unchanged). Every manifest carries
the sha256 of its own canonical JSON, checked by `parse_manifest`. docs/cache.md states the
validity rules and every manifest field.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import h5py

from core import atomic
from preprocess.cache.format import (FORMAT_VERSION, MASK_FORMAT, NAMED_KIND, NAMED_MASK_FORMAT, CacheError,
                                     DecodeParams, MaskSet, NamedMaskSet, mask_set_dir, shard_name)
from preprocess.cache.integrity import check_index
from preprocess.cache.writer import MaskStats


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
