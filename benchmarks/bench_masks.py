"""Throughput of the foreground-mask kernels (docs/method.md section 1), one core.

    python benchmarks/bench_masks.py                       # 112x112 and 128x171, defaults
    python benchmarks/bench_masks.py --sizes 112x112 --frames 512 --repeats 9

Measures frames/s of `foreground_masks` (numba, all steps: validation, grey conversion, diff,
threshold, background update, normalisation, dilation, first-mask fix, output allocation) and of
its plain-numpy twin `foreground_masks_reference`, on a synthetic clip (textured background,
moving squares, sensor noise); of `DiffStream` computing the four stride sets' thresholded
differences (strides 1-4) fed in decode-sized chunks, as the extraction does (frames/s of video,
all four strides); and of `masks_from_diffs` (stretch + dilation of stored differences). The kernels are
serial (no prange), so NUMBA_NUM_THREADS does not matter; numpy is pinned to one thread as well.
The JIT is warmed before timing. Best and median of --repeats runs are reported; the ratio
numba/numpy uses the best of each, measured in the same run (the machine may be shared).
"""

import os
import sys
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402

if __package__ in (None, ""):   # run as `python benchmarks/bench_masks.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.errors import UsageError  # noqa: E402
from core.flags import Flags, flag, parse  # noqa: E402
from preprocess.masks import (  # noqa: E402
    DiffStream, foreground_masks, foreground_masks_reference, masks_from_diffs, stride_diffs,
)

TARGET_FPS = 58_000   # 5x the reference OpenCV implementation, 112x112, soft + dilate


def synthetic_clip(T, H, W, seed=0, n_squares=4, noise=4.0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    texture = 100 + 45 * np.sin(xx / 4.0) * np.cos(yy / 6.0) + rng.normal(0, 15, (H, W))
    tint = np.array([1.0, 0.92, 1.08], np.float32)
    base = np.clip(texture[..., None] * tint, 0, 255).astype(np.float32)
    frames = np.empty((T, H, W, 3), np.uint8)
    sq = [(int(rng.integers(H // 10, H // 4)), rng.uniform(0, H), rng.uniform(0, W),
           rng.uniform(-2.5, 2.5), rng.uniform(-2.5, 2.5), rng.integers(0, 256, 3)) for _ in range(n_squares)]
    for t in range(T):
        f = base * np.float32(1 + 0.03 * np.sin(t / 7))
        for (s, y0, x0, vy, vx, col) in sq:
            y = int(y0 + vy * t) % H
            x = int(x0 + vx * t) % W
            f[y:y + s, x:x + s] = col
        f = f + rng.normal(0, noise, f.shape).astype(np.float32)
        frames[t] = np.clip(f, 0, 255).astype(np.uint8)
    return frames


def time_fps(fn, frames, repeats):
    fn(frames[:4])                                   # warm (JIT compile / cache load)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(frames)
        times.append(time.perf_counter() - t0)
    n = len(frames)
    return n / min(times), n / statistics.median(times)


def stream_fn(chunk, lam, m, **_):
    def run(frames):
        s = DiffStream(lam, m, strides=(1, 2, 3, 4))
        for i in range(0, len(frames), chunk):
            s.push(frames[i:i + chunk])
    return run


@dataclass
class MaskBenchFlags(Flags):
    """The flags of bench_masks.py."""

    config_file = False
    sizes: str = flag("112x112,128x171", "comma-separated HxW list")
    frames: int = flag(256, "frames per clip for the numba kernel", lo=1)
    numpy_frames: int = flag(64, "frames per clip for the numpy twin", lo=1)
    repeats: int = flag(7, "timed runs (the best and the median are reported)", lo=1)
    chunk: int = flag(32, "DiffStream chunk size (frames)", lo=1)
    lam: int = flag(30, "threshold lambda", lo=0, hi=255)
    extra_m: str = flag("0.1", "extra m values (comma list) timed in soft mode")

    def check(self) -> None:
        if not all(re.fullmatch(r"\s*\d+\s*[xX]\s*\d+\s*", s) for s in self.sizes.split(",")):
            raise UsageError("--sizes", self.sizes, "must be a comma list of HxW, e.g. 112x112,128x171")
        for m in (m for m in self.extra_m.split(",") if m.strip()):
            try:
                ok = 0 <= float(m) <= 1
            except ValueError:
                ok = False
            if not ok:
                raise UsageError("--extra-m", self.extra_m, "must be a comma list of numbers in [0, 1], e.g. 0.1,1")


def parse_args(argv=None) -> MaskBenchFlags:
    return parse(MaskBenchFlags, argv, description=__doc__, prog="bench_masks.py")


def main(argv=None):
    args = parse_args(argv)

    cases = [("soft", True, 0.5), ("hard", True, 0.5)]
    cases += [("soft", True, float(m)) for m in args.extra_m.split(",") if m.strip()]

    print(f"foreground masks, one core, lam={args.lam}; numba on {args.frames}-frame clips, numpy twin on "
          f"{args.numpy_frames}-frame clips; best (median) of {args.repeats}")
    hdr = (f"{'size':>8} {'mode':>5} {'dil':>3} {'m':>4} | {'numba fps':>17} | {'4 strides fps':>17} | "
           f"{'from diffs fps':>17} | {'numpy fps':>15} | {'numba/numpy':>11} | {'vs 58k':>6}")
    print(hdr)
    print("-" * len(hdr))
    for size in args.sizes.split(","):
        H, W = (int(v) for v in size.lower().split("x"))
        clip = synthetic_clip(args.frames, H, W)
        small = clip[:args.numpy_frames]
        for (mode, dil, m) in cases:
            kw = dict(lam=args.lam, m=m, mode=mode, dilate=dil)
            a = foreground_masks(small, **kw)
            b = foreground_masks_reference(small, **kw)
            assert np.array_equal(a, b), "numba and numpy twin disagree"
            nb, nb_med = time_fps(lambda f: foreground_masks(f, **kw), clip, args.repeats)
            st, st_med = time_fps(stream_fn(args.chunk, **kw), clip, args.repeats)
            d = stride_diffs(clip, args.lam, m, 2)
            fd, fd_med = time_fps(lambda x: masks_from_diffs(x, mode, dil), d, args.repeats)
            npy, npy_med = time_fps(lambda f: foreground_masks_reference(f, **kw), small,
                                    max(3, args.repeats // 2))
            print(f"{size:>8} {mode:>5} {'y' if dil else 'n':>3} {m:>4g} | {nb:>8,.0f} ({nb_med:>6,.0f}) | "
                  f"{st:>8,.0f} ({st_med:>6,.0f}) | {fd:>8,.0f} ({fd_med:>6,.0f}) | "
                  f"{npy:>6,.0f} ({npy_med:>6,.0f}) | {nb / npy:>10.1f}x | "
                  f"{nb / TARGET_FPS:>5.2f}x")
    dens = (foreground_masks(synthetic_clip(64, 112, 112)) > 0).mean()
    print(f"(mask density of the synthetic clip at 112x112: {dens:.1%} of pixels non-zero)")


if __name__ == "__main__":
    main()
