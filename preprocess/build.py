"""Worker side of the preprocessing job: build one shard (frames, mask statistics, mask sets).

A shard is the unit of parallel work and of atomic writes: one worker process builds all files of
one shard (its frame file, one statistics file per (lambda, m), one file per requested mask set) in
temporary files and renames them into place at the end (the statistics last: a run killed before
them recomputes only them). A video that fails is recorded in the shard with its reason and the others
are kept, so a damaged file never costs more than itself. Masks computed from cached frames are
computed from checked frames only (index checksum and each record's CRC32), so a damaged frame
record never turns into masks that look valid.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from preprocess.cache import (CacheError, ClipStatsSampler, DecodeParams, MaskParams, MaskSet, ShardWriter,
                              VideoRecord, check_index, decode_frame, diff_streams, encode_video, encode_yuv_video,
                              extract_command, mask_chunk, mask_set_dir, merge_stats, shard_name, write_shard_stats)
from preprocess.cache.format import STATS_WINDOW_EVERY

READ_CHUNK_FRAMES = 256  # cached frames decoded per step when adding a mask set (bounded memory)


@dataclass(frozen=True)
class SourceVideo:
    path: Path
    name: str          # rel_path inside the dataset root, the video's key everywhere
    label: int
    splits: tuple[int, int, int]
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ShardJob:
    dataset: str
    shard_id: int
    frame_set: Path
    decode: DecodeParams
    videos: tuple[SourceVideo, ...]
    build_frames: bool                  # False: frames are current, compute masks / statistics from them
    mask_sets: tuple[MaskSet, ...]      # mask sets (lambda, m, stride) to (re)build for this shard
    stats: tuple[MaskParams, ...] = ()  # (lambda, m) whose mask statistics to (re)compute for this shard
    frames_uid: str | None = None       # uid of the current frame shard when build_frames is False
    ffmpeg: str | None = None
    chunk_frames: int = 16  # with the 1 MiB pipe, ffmpeg decodes ahead while a chunk is processed
    timeout_s: float | None = None


@dataclass
class ShardResult:
    shard_id: int
    videos_ok: int = 0
    frames: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (name, path, reason)


def _report(progress, frames: int) -> None:
    if progress is not None:
        progress.put((1, frames))


def build_shard(job: ShardJob, progress=None) -> ShardResult:
    """Build the files of one shard; `progress` (a queue) receives (1, n_frames) per video."""
    start = time.perf_counter()
    mask_paths = {p: mask_set_dir(job.frame_set, p) / shard_name(job.shard_id) for p in job.mask_sets}
    frames_path = job.frame_set / "frames" / shard_name(job.shard_id)
    writer = ShardWriter(frames_path if job.build_frames else None, mask_paths, dataset=job.dataset,
                         shard_id=job.shard_id, decode=job.decode,
                         frames_uid=None if job.build_frames else job.frames_uid)
    result = ShardResult(job.shard_id)
    stats: dict = {}
    try:
        if job.build_frames:
            _decode_videos(job, writer, result, progress, stats)
        elif job.mask_sets:
            _masks_from_cached_frames(job, frames_path, writer, result, progress, stats)
        else:
            _stats_from_cached_frames(job, frames_path, result, progress, stats)
        result.bytes_written = writer.commit()
    except BaseException:
        writer.abort()
        raise
    for params in job.stats:            # after the shards: a statistics file never outlives its frames
        write_shard_stats(job.frame_set, params, job.shard_id, writer.uid, stats.get(params, {}), result.videos_ok)
    result.seconds = time.perf_counter() - start
    return result


def build_shard_on_worker(job: ShardJob, env: dict[str, str]) -> ShardResult:
    """`build_shard` on a remote worker (the Dask backend): no progress queue, and first the
    environment that local worker processes inherit (one thread per numba/OpenMP/BLAS pool, the
    kernels' cache folder), for everything that reads it from now on."""
    import os

    os.environ.update(env)
    return build_shard(job, None)


def _decode_videos(job: ShardJob, writer: ShardWriter, result: ShardResult, progress, stats: dict) -> None:
    from preprocess.decode import DecodeError, open_video

    for video in job.videos:
        n = 0
        try:
            # one ffmpeg process per video: it decodes and describes the video (src.info)
            # 4:2:0 JPEGs straight from ffmpeg's YUV planes: no colour conversion on either side
            yuv = job.decode.subsampling == "420"
            src = open_video(video.path, short_side=job.decode.short_side, chunk_frames=job.chunk_frames,
                             timeout_s=job.timeout_s, binary=job.ffmpeg, yuv=yuv)
            streams = diff_streams(job.mask_sets)
            sampler = ClipStatsSampler(job.stats, first=writer.frames_in_shard)
            height = width = 0
            for chunk in src:
                # masks and statistics come from the JPEG pixels the trainer reads (see cache.encode_video)
                if yuv:
                    writer.add_frames(*encode_yuv_video(chunk, src.size, job.decode, streams, sampler, n))
                else:
                    writer.add_frames(*encode_video(chunk, job.decode, streams, sampler, n))
                n += len(chunk)
                width, height = src.size
            if n < 2:
                raise DecodeError(video.path, f"only {n} frame(s) decoded (need at least 2)")
        except (DecodeError, ValueError) as e:
            reason = getattr(e, "reason", None) or str(e)
            writer.fail(video.name, reason, video.size, video.mtime_ns)
            result.failures.append((video.name, str(video.path), reason))
            _report(progress, 0)
            continue
        writer.end_video(VideoRecord(video.name, video.label, video.splits, n, float(src.info.fps or 0.0),
                                     height, width, video.size, video.mtime_ns))
        merge_stats(stats, sampler.finish(n))
        result.videos_ok += 1
        result.frames += n
        _report(progress, n)


def _fix(job: ShardJob) -> str:
    masks = job.mask_sets[0].params if job.mask_sets else (job.stats[0] if job.stats else None)
    strides = sorted({ms.stride for ms in job.mask_sets if ms.params == masks})
    return (f"Rebuild it (and add these masks) with:\n  "
            f"{extract_command(job.dataset, job.frame_set.parent.parent, job.decode, masks, strides)} --verify")


def _damaged(frames_path: Path, record: int, name: str, frame: int, fix: str) -> CacheError:
    return CacheError(f"{frames_path}: the frame shard is damaged: checksum mismatch in record {record} ({name}, "
                      f"frame {frame}); no masks are computed from it. {fix}")


def _checked_records(blob, offsets: np.ndarray, crcs: list | None, lo: int, hi: int, damaged) -> list:
    """Records lo..hi-1 of a frame shard's blob in one read, each checked against its CRC32 when
    `crcs` are given (`damaged(g)`: the CacheError for record g)."""
    span = blob[offsets[lo]:offsets[hi]]
    records = [span[offsets[g] - offsets[lo]:offsets[g + 1] - offsets[lo]] for g in range(lo, hi)]
    if crcs is not None:
        for g, record in zip(range(lo, hi), records):
            if zlib.crc32(record) != crcs[g]:
                raise damaged(g)
    return records


def _masks_from_cached_frames(job: ShardJob, frames_path: Path, writer: ShardWriter, result: ShardResult,
                              progress, stats: dict) -> None:
    """Add mask sets (and statistics) to a shard from its cached JPEG frames: no ffmpeg run."""
    fix = _fix(job)
    with h5py.File(frames_path, "r") as f:
        crcs = f["jpeg_crc32"][()].tolist() if check_index(f, frames_path, fix) else None
        names = [n.decode() if isinstance(n, bytes) else n for n in f["names"][()]]
        cols = {k: f[k][()] for k in ("labels", "splits", "n_frames", "first_frame", "fps", "height", "width",
                                      "source_size", "source_mtime_ns")}
        offsets = f["jpeg_offsets"][()]
        blob = f["jpeg"]
        for i, name in enumerate(names):
            streams = diff_streams(job.mask_sets)
            first, n = int(cols["first_frame"][i]), int(cols["n_frames"][i])
            sampler = ClipStatsSampler(job.stats, first=first)
            damaged = lambda g: _damaged(frames_path, g, name, g - first, fix)   # noqa: E731 - used in this loop
            for lo in range(first, first + n, READ_CHUNK_FRAMES):
                hi = min(lo + READ_CHUNK_FRAMES, first + n)
                records = _checked_records(blob, offsets, crcs, lo, hi, damaged)
                frames = np.stack([decode_frame(r) for r in records])
                want = sampler.wanted(lo - first, hi - first)
                sampler.add(want, frames[want - (lo - first)])
                writer.add_frames(None, *mask_chunk(frames, streams))
            merge_stats(stats, sampler.finish(n))
            writer.end_video(VideoRecord(name, int(cols["labels"][i]), tuple(int(x) for x in cols["splits"][i]), n,
                                         float(cols["fps"][i]), int(cols["height"][i]), int(cols["width"][i]),
                                         int(cols["source_size"][i]), int(cols["source_mtime_ns"][i])))
            result.videos_ok += 1
            result.frames += n
            _report(progress, n)


def _stats_from_cached_frames(job: ShardJob, frames_path: Path, result: ShardResult, progress, stats: dict) -> None:
    """Mask statistics of a shard from its cached JPEG frames: one read per sampled window (its
    records checked against their CRC32), and only the frames its clips read decoded."""
    fix = _fix(job)
    with h5py.File(frames_path, "r") as f:
        crcs = f["jpeg_crc32"][()].tolist() if check_index(f, frames_path, fix) else None
        names = [n.decode() if isinstance(n, bytes) else n for n in f["names"][()]]
        firsts, counts = f["first_frame"][()], f["n_frames"][()]
        offsets = f["jpeg_offsets"][()]
        blob = f["jpeg"]
        for name, first, n in zip(names, firsts.tolist(), counts.tolist()):
            sampler = ClipStatsSampler(job.stats, first=first)
            want = sampler.wanted(0, n)
            damaged = lambda g: _damaged(frames_path, g, name, g - first, fix)   # noqa: E731 - used in this loop
            # the wanted frames of each window: one read of the window's span, then only those decoded
            window = (want + first) // STATS_WINDOW_EVERY
            for run in np.split(want, np.flatnonzero(np.diff(window)) + 1) if len(want) else []:
                lo, hi = first + int(run[0]), first + int(run[-1]) + 1
                records = _checked_records(blob, offsets, crcs, lo, hi, damaged)
                sampler.add(run, np.stack([decode_frame(records[int(t) + first - lo]) for t in run]))
            merge_stats(stats, sampler.finish(n))
            result.videos_ok += 1
            result.frames += n
            _report(progress, n)
