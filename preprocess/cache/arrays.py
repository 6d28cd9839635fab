"""A complete cache from in-memory videos (`write_cache_from_arrays`: tests, benchmarks, synthetic
data), written by the same writer, mask code and manifests as the ffmpeg pipeline.

It composes writer.py and manifest.py and adds nothing to the format; it plans nothing (every
shard and mask set is written anew) and decodes no video.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from preprocess.cache.format import (DEFAULT_STRIDES, DEFAULT_VIDEOS_PER_SHARD, DecodeParams, MaskParams,
                                     frame_set_dir, mask_set_dir, shard_name)
from preprocess.cache.manifest import write_frames_manifest, write_masks_manifest
from preprocess.cache.stats import ClipStatsSampler, merge_stats, write_shard_stats, write_stats_manifest
from preprocess.cache.writer import ShardWriter, VideoRecord, diff_streams, encode_video


# --------------------------------------------------------------------------------------------
# Building a cache from arrays (tests, synthetic data): the same writer and mask code as the
# ffmpeg pipeline, minus the decoding.

def write_cache_from_arrays(cache_dir: str | Path, dataset: str, classes: Sequence[str],
                            videos: Iterable[tuple[str, int, tuple[int, int, int], np.ndarray, float]],
                            decode: DecodeParams = DecodeParams(), masks: Sequence[MaskParams] = (MaskParams(),),
                            videos_per_shard: int = DEFAULT_VIDEOS_PER_SHARD,
                            strides: Sequence[int] = DEFAULT_STRIDES) -> Path:
    """Write a complete cache from in-memory videos [(rel_path, label, splits, frames uint8 [T,H,W,3], fps)],
    with the mask statistics of every (lambda, m) in `masks` and its mask sets at every stride in
    `strides` (`strides=()`: frames and statistics only, what extract_masks.py writes by default)."""
    videos = sorted(videos, key=lambda v: v[0])
    root = frame_set_dir(cache_dir, dataset, decode)
    n_shards = max(1, -(-len(videos) // videos_per_shard))
    sets = [p.at(s) for p in masks for s in strides]
    for shard_id in range(n_shards):
        writer = ShardWriter(root / "frames" / shard_name(shard_id),
                             {ms: mask_set_dir(root, ms) / shard_name(shard_id) for ms in sets},
                             dataset=dataset, shard_id=shard_id, decode=decode, frames_uid=None)
        stats: dict = {}
        part = videos[shard_id * videos_per_shard:(shard_id + 1) * videos_per_shard]
        first = 0
        for name, label, splits, frames, fps in part:
            sampler = ClipStatsSampler(masks, first=first)
            jpegs, mrecs, diffs = encode_video(frames, decode, diff_streams(sets), sampler)
            writer.add_frames(jpegs, mrecs, diffs)
            writer.end_video(VideoRecord(name, int(label), tuple(splits), len(frames), float(fps),
                                         frames.shape[1], frames.shape[2], 0, 0))
            merge_stats(stats, sampler.finish(len(frames)))
            first += len(frames)
        writer.commit()
        for p in masks:
            write_shard_stats(root, p, shard_id, writer.uid, stats.get(p, {}), len(part))
    manifest = write_frames_manifest(root, dataset, classes, decode, n_shards, videos_per_shard)
    for p in masks:
        write_stats_manifest(root, p, manifest)
    for ms in sets:
        write_masks_manifest(root, ms, manifest)
    return root
