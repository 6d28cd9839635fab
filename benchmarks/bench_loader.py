"""MAC-SC loader throughput per worker process: the cache (both mask sources) against decoding
on the fly.

    .venv/bin/python benchmarks/bench_loader.py                       # builds a synthetic cache
    .venv/bin/python benchmarks/bench_loader.py --cache-dir data_cache --dataset ucf101 \
        --video-root data/ucf101/UCF-101                              # a real cache + its videos
    options: --samples 300 --baseline-samples 40 --workers 2 --json out.json

Everything runs in ONE process with torch on one thread, i.e. the work of one DataLoader worker
(per core); each figure is the best of --repeats rounds (shared machines are noisy). Figures,
same run, same sampled items (MAC-SC: query clip with masks + key view):

1. cache item, for each mask source: `PretrainClips[i]` as a worker delivers it: temporal draw,
   HDF5 read + JPEG decode of 16 frames, crop/resize/flip of the frames (query) and of the
   frames again (key), parameter draws, and the clip's masks: "cache" reads and decodes the 16
   stored differences of the clip's stride, crops, stretches over the crop, dilates and resizes
   them; "clip" (exact) runs Algorithm 1 on the 16 augmented frames. uint8 tensors out. Also
   broken down.
1b. masks of one clip, read + decode from the cache vs computed (clip mode), us per clip on the
   same random regular clips (16 frames, the cache's strides): `ClipReader.diffs` (HDF5 read of
   the clip's span, CRC32 of its 16 mask records, one `decode_masks` call in the shard's codec),
   its read alone, the decode alone of the same records in zrun and in the legacy zlib-rle
   (re-encoded in memory: the baseline ratio), and `foreground_masks` on the clip's 16 augmented
   frames (what --mask-source clip computes). Also the bytes per mask record in both codecs.
2. transform on CPU: `gpu_transform` (uint8 -> float, blend, colour jitter, greyscale,
   normalise, for query and key) on collated batches, per sample, on one CPU thread. In real runs
   it runs on the GPU; this figure says what it would cost a CPU worker instead.
3. baseline: the same samples built from the source video, as the reference does without a
   cache of decoded frames: ffmpeg decode (`preprocess.decode.iter_frames`, short side 128) from
   frame 0 to the clip's last frame (no frame-exact seek in AVI), the spatial work, then the
   clip's masks on the fly (`preprocess.masks.foreground_masks` on the augmented frames).
4. checksums: the cache item of 1. (both mask sources) and a bare read of 16 frames (HDF5 +
   JPEG decode), each with the reader's CRC32 checks (`ClipReader(verify=True)`, the default) and
   without (`verify=False`), rounds interleaved on the same items: the ratio is what verifying
   every record read costs (within this machine's noise of a few %, hence also the CRC32 time
   itself per sample: 16 frame and 16 mask records). Also the throughput of a whole-cache check
   (`extract_masks.py --verify`: every record of every shard, `preprocess.cache.verify_shard`).
5. optionally (--workers N): a DataLoader with N worker processes, batches of 8, total samples/s.

Without --cache-dir, it builds a synthetic cache first: --videos AVIs of 320x240 (UCF101's size),
--frames frames at 25 fps, MPEG-4 part 2 (libxvid when available), decoded with iter_frames and
written with `preprocess.cache.write_cache_from_arrays` (the cache pipeline's writer and masks),
in a temporary folder (or --build DIR to keep it).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):   # run as `python benchmarks/bench_loader.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.flags import Flags, flag, parse
from preprocess.cache import ClipReader, DecodeParams, MaskParams, open_cache, verify_shard, write_cache_from_arrays
from preprocess.cache.codecs import LEGACY_MASK_CODEC, MASK_CODEC, decode_masks, encode_mask
from preprocess.decode import ffmpeg_binary, iter_frames
import dataclasses

from preprocess.masks import foreground_masks
from train.data import PretrainClips, item_rng, make_loader, set_loader_epoch
from train.mac import (
    MACConfig, apply_spatial, clip_masks, draw_alphas, draw_clip, draw_jitter, draw_spatial, gpu_transform,
    sample_clip_indices,
)

TARGET_PER_CORE = 150.0


# --------------------------------------------------------------------------------------------
# synthetic source videos + cache


def make_videos(folder: Path, n: int, frames: int, binary: str) -> list[Path]:
    """320x240 25 fps MPEG-4 part 2 AVIs with moving, noisy content (UCF101-like sizes)."""
    enc = subprocess.run([binary, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    codec = ["-c:v", "libxvid", "-q:v", "6"] if "libxvid" in enc else ["-c:v", "mpeg4", "-q:v", "6"]
    out = []
    for i in range(n):
        p = folder / "Bench" / f"v_Bench_g{i + 1:02d}_c01.avi"
        p.parent.mkdir(parents=True, exist_ok=True)
        src = f"testsrc2=size=320x240:rate=25,hue=h={37 * i},noise=alls=8:allf=t,trim=end_frame={frames}"
        subprocess.run([binary, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", src, *codec, str(p)],
                       check=True)
        out.append(p)
    return out


def build_synthetic_cache(folder: Path, n_videos: int, n_frames: int) -> tuple[Path, str, Path]:
    """(cache_dir, dataset, video_root)."""
    binary = ffmpeg_binary()
    video_root = folder / "videos"
    paths = make_videos(video_root, n_videos, n_frames, binary)
    vids = []
    for p in paths:
        frames = np.concatenate(list(iter_frames(p, 128, binary=binary)))
        vids.append((str(p.relative_to(video_root)), 0, (1, 1, 1), frames, 25.0))
    cache_dir = folder / "cache"
    write_cache_from_arrays(cache_dir, "bench", ("Bench",), vids, DecodeParams(), (MaskParams(),))
    return cache_dir, "bench", video_root


# --------------------------------------------------------------------------------------------
# measurements


def time_cache_items(ds: PretrainClips, samples: int, repeats: int) -> tuple[float, dict]:
    """Samples/s of ds[i] (epochs advance so that no item repeats its draws; best of `repeats`
    rounds), plus a breakdown."""
    n = len(ds)
    ds.set_epoch(1000)
    for i in range(min(n, 8)):                      # warm-up: open shards, first-call overheads
        ds[i]
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(samples):
            ds.set_epoch(s // n)
            ds[s % n]
        rates.append(samples / (time.perf_counter() - t0))
    rate = max(rates)

    # breakdown on the same items
    cfg, reader = ds.cfg, ds.reader
    parts = dict(read_frames=0.0, spatial_query=0.0, masks=0.0, spatial_key=0.0, draws=0.0)
    for s in range(samples):
        i = s % n
        t = time.perf_counter()
        rng = item_rng(cfg.seed, s // n, i, ds._stream)
        v = int(ds.videos[i])
        nf = int(ds.index.n_frames[v])
        h, w = int(ds.index.heights[v]), int(ds.index.widths[v])
        start, stride = draw_clip(rng, nf, cfg.frames, cfg.strides)
        draw_alphas(rng, cfg.k, cfg.n, cfg.loss)
        sq, jq = draw_spatial(rng, h, w, cfg.scales, cfg.crop, cfg.flip_p), draw_jitter(rng, cfg.colour)
        sk, jk = draw_spatial(rng, h, w, cfg.scales, cfg.crop, cfg.flip_p), draw_jitter(rng, cfg.colour)
        idx = sample_clip_indices(nf, cfg.frames, stride, start)
        t1 = time.perf_counter()
        fr = ds._read(v, idx)
        t2 = time.perf_counter()
        qf, _ = apply_spatial(fr, None, sq)
        t3 = time.perf_counter()
        if cfg.mask_source == "clip":
            foreground_masks(qf, ds.index.masks.lam, ds.index.masks.m, cfg.mask_mode, cfg.dilate)
        else:
            clip_masks(reader.clip_diffs(v, idx, fr), sq, cfg.mask_mode, cfg.dilate)
        t4 = time.perf_counter()
        apply_spatial(fr, None, sk)
        t5 = time.perf_counter()
        parts["draws"] += t1 - t
        parts["read_frames"] += t2 - t1
        parts["spatial_query"] += t3 - t2
        parts["masks"] += t4 - t3
        parts["spatial_key"] += t5 - t4
    return rate, {k: v / samples * 1e3 for k, v in parts.items()}


def _unverified_reader(index) -> ClipReader:
    return ClipReader(index, verify=False)


def _items_per_s(ds: PretrainClips, samples: int) -> float:
    n = len(ds)
    t0 = time.perf_counter()
    for s in range(samples):
        ds.set_epoch(s // n)
        ds[s % n]
    return samples / (time.perf_counter() - t0)


def _reads_per_s(reader: ClipReader, clips: list[tuple[int, np.ndarray]]) -> float:
    t0 = time.perf_counter()
    for v, idx in clips:
        reader.frames(v, idx)
    return len(clips) / (time.perf_counter() - t0)


def time_checksums(index, split: int, part: str, cfg: MACConfig, samples: int, repeats: int) -> dict:
    """Samples/s with and without the reader's CRC32 checks, same items, rounds interleaved (best
    of `repeats` each): the MAC-SC item in both mask sources, and a bare 16-frame read."""
    out = {}
    for source in ("cache", "clip"):
        c = dataclasses.replace(cfg, mask_source=source)
        on = PretrainClips(index, split, part, c)
        off = PretrainClips(index, split, part, c, reader_factory=_unverified_reader)
        for ds in (on, off):                          # warm-up: open shards, first-call overheads
            ds.set_epoch(1000)
            for i in range(min(len(ds), 8)):
                ds[i]
        rates_on, rates_off = [], []
        for _ in range(repeats):
            rates_on.append(_items_per_s(on, samples))
            rates_off.append(_items_per_s(off, samples))
        out[f"item_{source}"] = (max(rates_on), max(rates_off))
    rng = np.random.default_rng(0)
    vids = index.subset(split, part)
    clips = []
    for _ in range(samples):
        v = int(rng.choice(vids))
        stride = int(rng.integers(1, 5))
        start = int(rng.integers(0, max(1, int(index.n_frames[v]) - 15 * stride)))
        clips.append((v, sample_clip_indices(int(index.n_frames[v]), cfg.frames, stride, start), stride))
    on, off = ClipReader(index), ClipReader(index, verify=False)
    for r in (on, off):
        _reads_per_s(r, [c[:2] for c in clips[:8]])
    rates_on, rates_off = [], []
    for _ in range(repeats):
        rates_on.append(_reads_per_s(on, [c[:2] for c in clips]))
        rates_off.append(_reads_per_s(off, [c[:2] for c in clips]))
    out["read_16_frames"] = (max(rates_on), max(rates_off))
    # the check itself: CRC32 of a sample's frame and mask records (what verify adds per item)
    for name, kinds in (("crc32_frames_us", ("frames",)), ("crc32_frames_masks_us", ("frames", "masks"))):
        records = [[r for k in kinds for r in off._records(s if k == "masks" else k, v, idx)] for v, idx, s in clips]
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for recs in records:
                for r in recs:
                    zlib.crc32(r)
            best = min(best, time.perf_counter() - t0)
        out[name] = best / len(records) * 1e6
    return out


def time_clip_masks(index, split: int, part: str, cfg: MACConfig, samples: int, repeats: int) -> dict:
    """us per clip (best of `repeats` rounds over `samples` random regular clips of the cache's
    strides) of a clip's masks read + decoded from the cache (`ClipReader.diffs`), of its read
    alone and of the decode alone in both codecs on the same records, against computing them from
    the augmented frames (clip mode); and the mean bytes per mask record in each codec."""
    rng = np.random.default_rng(1)
    vids = index.subset(split, part)
    reader = ClipReader(index)
    clips = []
    for _ in range(samples):
        v = int(rng.choice(vids))
        nf, h, w = int(index.n_frames[v]), int(index.heights[v]), int(index.widths[v])
        stride = int(rng.choice([s for s in index.strides if (cfg.frames - 1) * s < nf] or [1]))
        start = int(rng.integers(0, max(1, nf - (cfg.frames - 1) * stride)))
        idx = sample_clip_indices(nf, cfg.frames, stride, start)
        augmented, _ = apply_spatial(reader.frames(v, idx), None, draw_spatial(rng, h, w, cfg.scales, cfg.crop,
                                                                                cfg.flip_p))
        d = reader.diffs(v, idx, stride)
        recs = {c: [encode_mask(x, c) for x in d] for c in (MASK_CODEC, LEGACY_MASK_CODEC)}
        spans = {}
        for c, rs in recs.items():
            lens = np.array([len(r) for r in rs], np.int64)
            spans[c] = (np.frombuffer(b"".join(rs), np.uint8), np.cumsum(lens) - lens, np.cumsum(lens))
        clips.append((v, idx, stride, augmented, spans, np.empty_like(d)))
    lam, m = index.masks.lam, index.masks.m
    runs = {
        "read_decode": lambda c: reader.diffs(c[0], c[1], c[2]),
        "read": lambda c: reader._span(c[2], c[0], c[1]),
        **{f"decode_{k}": (lambda c, k=k: decode_masks(*c[4][k], c[5], k)) for k in (MASK_CODEC, LEGACY_MASK_CODEC)},
        "computed_clip_mode": lambda c: foreground_masks(c[3], lam, m, cfg.mask_mode, cfg.dilate),
    }
    out = {}
    for name, fn in runs.items():
        fn(clips[0])                                    # warm-up: first calls, numba dispatch
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for c in clips:
                fn(c)
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_us"] = best / len(clips) * 1e6
    for k in (MASK_CODEC, LEGACY_MASK_CODEC):
        out[f"bytes_per_record_{k}"] = float(np.mean([c[4][k][0].size / len(c[1]) for c in clips]))
    out["shard_codec"] = reader._open(clips[0][2], int(index.shard[clips[0][0]]))[4]
    reader.close()
    return out


def time_full_verify(root: Path) -> tuple[float, int, float]:
    """(MB/s, shards, seconds) of checking every record of every shard under a frame set."""
    paths = sorted(root.glob("*/shard-*.h5"))
    size = sum(p.stat().st_size for p in paths)
    t0 = time.perf_counter()
    for p in paths:
        check = verify_shard(p)
        assert check.problem is None, check
    dt = time.perf_counter() - t0
    return size / 1e6 / dt, len(paths), dt


def time_transform(ds: PretrainClips, batch_size: int, batches: int, repeats: int) -> float:
    """Samples/s of the device transform run on one CPU thread (best of `repeats`)."""
    items = [ds[i % len(ds)] for i in range(batch_size)]
    batch = torch.utils.data.default_collate(items)
    gpu_transform(batch, ds.cfg, "cpu")
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            gpu_transform(batch, ds.cfg, "cpu")
        rates.append(batches * batch_size / (time.perf_counter() - t0))
    return max(rates)


def baseline_item(path: Path, n_frames: int, h: int, w: int, cfg: MACConfig, rng: np.random.Generator,
                  mask_params: MaskParams) -> dict:
    """One MAC-SC sample from the source video: ffmpeg decode + masks on the fly + spatial."""
    start, stride = draw_clip(rng, n_frames, cfg.frames, cfg.strides)
    draw_alphas(rng, cfg.k, cfg.n, cfg.loss)
    sq, jq = draw_spatial(rng, h, w, cfg.scales, cfg.crop, cfg.flip_p), draw_jitter(rng, cfg.colour)
    sk, jk = draw_spatial(rng, h, w, cfg.scales, cfg.crop, cfg.flip_p), draw_jitter(rng, cfg.colour)
    idx = sample_clip_indices(n_frames, cfg.frames, stride, start)
    need = int(idx.max()) + 1
    chunks, got = [], 0
    gen = iter_frames(path, 128, chunk_frames=64)
    try:
        for c in gen:
            chunks.append(c)
            got += len(c)
            if got >= need:
                break
    finally:
        gen.close()                                   # stops ffmpeg early
    frames = np.concatenate(chunks)[:max(need, 2)]
    qf, _ = apply_spatial(frames[idx], None, sq)
    qm = foreground_masks(qf, mask_params.lam, mask_params.m, cfg.mask_mode, cfg.dilate)
    kf, _ = apply_spatial(frames[idx], None, sk)
    return {"frames": qf, "masks": qm, "key_frames": kf}


def time_baseline(ds: PretrainClips, video_root: Path, samples: int, mask_params: MaskParams,
                  repeats: int) -> float:
    cfg, index = ds.cfg, ds.index
    n = len(ds)
    # warm-up (numba compile of the mask kernels, ffmpeg binary in page cache)
    v = int(ds.videos[0])
    baseline_item(video_root / index.names[v], int(index.n_frames[v]), int(index.heights[v]),
                  int(index.widths[v]), cfg, item_rng(0, 0, 0), mask_params)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(samples):
            i = s % n
            v = int(ds.videos[i])
            baseline_item(video_root / index.names[v], int(index.n_frames[v]), int(index.heights[v]),
                          int(index.widths[v]), cfg, item_rng(cfg.seed, s // n, i, ds._stream), mask_params)
        rates.append(samples / (time.perf_counter() - t0))
    return max(rates)


def time_loader(ds: PretrainClips, workers: int, batch_size: int, samples: int) -> float:
    loader = make_loader(ds, batch_size, workers, shuffle=True, seed=0, persistent_workers=True)
    epoch, seen = 0, 0
    set_loader_epoch(loader, epoch)
    it = iter(loader)
    next(it)                                          # workers up and warm
    t0 = time.perf_counter()
    while seen < samples:
        try:
            b = next(it)
        except StopIteration:
            epoch += 1
            set_loader_epoch(loader, epoch)
            it = iter(loader)
            continue
        seen += len(b["frames"])
    return seen / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------


@dataclass
class LoaderBenchFlags(Flags):
    """The flags of bench_loader.py."""

    config_file = False
    cache_dir: Path = flag(None, "existing cache (none: build a synthetic one)", type=Path)
    dataset: str = flag("ucf101", "dataset name in --cache-dir")
    split: int = flag(1, "official split", lo=1, hi=3)
    part: str = flag("all", "videos of the split", choices=("train", "test", "all"))
    video_root: Path = flag(None, "source videos (index names are relative to it); without it the baseline is "
                                  "skipped for an existing cache", type=Path)
    build: Path = flag(None, "build the synthetic cache here and keep it", type=Path)
    videos: int = flag(12, "videos of the synthetic cache", lo=1)
    frames: int = flag(175, "frames per video of the synthetic cache", lo=1)
    samples: int = flag(300, "training samples timed per figure", lo=1)
    repeats: int = flag(3, "timed rounds per figure; the best is reported", lo=1)
    baseline_samples: int = flag(40, "samples of the decode-every-clip baseline", lo=1)
    batch_size: int = flag(8, "clips per batch (transform and DataLoader)", lo=1)
    n: int = flag(2, "temporal segments (MAC-2 / MAC-4)", lo=1)
    workers: int = flag(0, "also time a DataLoader with this many workers", lo=0)
    json: Path = flag(None, "write the figures here", type=Path)


def parse_args(argv=None) -> LoaderBenchFlags:
    return parse(LoaderBenchFlags, argv, description=__doc__.split("\n\n")[0], prog="bench_loader.py")


def main(argv=None) -> int:
    args = parse_args(argv)

    torch.set_num_threads(1)
    tmp = None
    if args.cache_dir is None:
        folder = args.build
        if folder is None:
            tmp = tempfile.TemporaryDirectory()
            folder = Path(tmp.name)
        folder.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        cache_dir, dataset, video_root = build_synthetic_cache(folder, args.videos, args.frames)
        print(f"built synthetic cache: {args.videos} videos x {args.frames} frames in {time.perf_counter() - t:.1f} s "
              f"({cache_dir})")
    else:
        cache_dir, dataset, video_root = args.cache_dir, args.dataset, args.video_root

    mask_params = MaskParams()
    index = open_cache(cache_dir, dataset, DecodeParams(), mask_params)
    cfg = MACConfig(n=args.n, key_view=True, mask_source="cache")
    ds = PretrainClips(index, args.split, args.part, cfg)
    if len(ds) == 0:
        print(f"no videos in split {args.split} part {args.part}", file=sys.stderr)
        return 1
    vids = ds.videos
    print(f"cache {index.root}: {len(ds)} videos, mean {index.n_frames[vids].mean():.0f} frames, "
          f"{index.heights[vids[0]]}x{index.widths[vids[0]]}; MAC-SC-{cfg.n}, one process, 1 torch thread")

    res: dict = {"videos": int(len(ds)), "n": cfg.n, "torch": torch.__version__}
    for source in ("cache", "clip"):
        dsm = ds if source == "cache" else PretrainClips(index, args.split, args.part,
                                                         dataclasses.replace(cfg, mask_source=source))
        rate, parts = time_cache_items(dsm, args.samples, args.repeats)
        res[f"item_{source}_masks_per_s"] = rate
        res[f"item_{source}_masks_ms"] = parts
        ok = "OK" if rate >= TARGET_PER_CORE else "BELOW TARGET"
        print(f"item, --mask-source {source:<5} (query+masks+key, uint8): {rate:8.1f} samples/s per core "
              f"[target {TARGET_PER_CORE:.0f}: {ok}]")
        print("  breakdown ms/sample: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    cm = time_clip_masks(index, args.split, args.part, cfg, args.samples, args.repeats)
    res["clip_masks"] = cm
    z, zl = cm[f"decode_{MASK_CODEC}_us"], cm[f"decode_{LEGACY_MASK_CODEC}_us"]
    print(f"masks of one clip ({cfg.frames} records), us per clip, best of {args.repeats} rounds of "
          f"{args.samples} clips:")
    print(f"  read+decode from the cache (ClipReader.diffs, {cm['shard_codec']} shards): {cm['read_decode_us']:7.1f} "
          f"(HDF5 read + CRC32 {cm['read_us']:.1f})")
    print(f"  decode alone, same records: {MASK_CODEC} {z:.1f}, legacy {LEGACY_MASK_CODEC} {zl:.1f} "
          f"({zl / z:.1f}x slower)")
    print(f"  computed, clip mode (foreground_masks on the augmented frames): {cm['computed_clip_mode_us']:7.1f} "
          f"(read+decode = {cm['read_decode_us'] / cm['computed_clip_mode_us']:.2f}x it)")
    zb, lb = cm[f"bytes_per_record_{MASK_CODEC}"], cm[f"bytes_per_record_{LEGACY_MASK_CODEC}"]
    print(f"  bytes per mask record: {MASK_CODEC} {zb:.0f}, {LEGACY_MASK_CODEC} {lb:.0f} ({MASK_CODEC} is "
          f"{zb / lb:.2f}x the size)")
    rate = res["item_cache_masks_per_s"]
    trate = time_transform(ds, args.batch_size, max(2, args.samples // (8 * args.batch_size)), args.repeats)
    res["transform_cpu_per_s"] = trate
    print(f"transform on CPU (blend+jitter+norm)  : {trate:8.1f} samples/s per core")
    both = 1.0 / (1.0 / rate + 1.0 / trate)
    res["cache_item_plus_cpu_transform_per_s"] = both
    print(f"  item + CPU transform together       : {both:8.1f} samples/s per core")
    if video_root is not None:
        brate = time_baseline(ds, Path(video_root), args.baseline_samples, mask_params, args.repeats)
        res["baseline_per_s"] = brate
        print(f"baseline ffmpeg + masks on the fly    : {brate:8.1f} samples/s per core "
              f"(cache is {rate / brate:.1f}x faster)")
    else:
        print("baseline skipped (no --video-root)")
    checks = time_checksums(index, args.split, args.part, cfg, args.samples, args.repeats)
    print("checksums (CRC32 of every record read), same run, same items, best of "
          f"{args.repeats} interleaved rounds:")
    crc_frames, crc_all = checks.pop("crc32_frames_us"), checks.pop("crc32_frames_masks_us")
    for name, (on, off) in checks.items():
        res[f"{name}_verify_per_s"], res[f"{name}_no_verify_per_s"] = on, off
        res[f"{name}_verify_ratio"] = on / off
        label = {"item_cache": "item, --mask-source cache", "item_clip": "item, --mask-source clip",
                 "read_16_frames": "read 16 frames (HDF5 + JPEG)"}[name]
        print(f"  {label:<30}: {on:8.1f} samples/s verified, {off:8.1f} unverified: ratio {on / off:.3f} "
              f"({(1 - on / off) * 100:+.1f} % cost)")
    res["crc32_frames_us_per_sample"], res["crc32_frames_masks_us_per_sample"] = crc_frames, crc_all
    print(f"  CRC32 itself, per sample        : {crc_all:.1f} us for 16 frame + 16 mask records = "
          f"{crc_all * checks['item_cache'][0] / 1e4:.2f} % of a cache item; {crc_frames:.1f} us for the 16 frame "
          f"records = {crc_frames * checks['item_clip'][0] / 1e4:.2f} % of a clip item")
    mbps, n_shards, secs = time_full_verify(index.root)
    res["full_verify_mb_per_s"] = mbps
    print(f"whole-cache check (extract_masks.py --verify): {n_shards} shards in {secs:.2f} s, {mbps:.0f} MB/s "
          f"on one core (page cache warm)")
    if args.workers > 0:
        lrate = time_loader(ds, args.workers, args.batch_size, args.samples)
        res[f"loader_{args.workers}_workers_per_s"] = lrate
        print(f"DataLoader, {args.workers} workers, batch {args.batch_size} : {lrate:8.1f} samples/s total")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
