"""Decode a video dataset once and cache its frames in HDF5 shards, with the mask statistics of
(lambda, m) and, when asked, stored mask sets.

    python preprocess/extract_masks.py --lambda 30 --m 0.5             # UCF101 under data/ucf101
    python preprocess/extract_masks.py --dataset hmdb51 --data-root /data/hmdb51 --lambda 10 --m 0.5
    python preprocess/extract_masks.py --dataset demo                  # the built-in demo set
    python preprocess/extract_masks.py --lambda 30 --m 0.5 --strides 1 2 3 4   # + mask sets (--mask-source cache)
    python preprocess/extract_masks.py --list                          # what is cached, mask statistics
    python preprocess/extract_masks.py --verify                        # check every record, rebuild damage
    python preprocess/extract_masks.py --doctor                        # preflight only
    python preprocess/extract_masks.py --dataset kinetics --data-root /data/k400    # Kinetics-400
    python preprocess/extract_masks.py --dataset kinetics --class-subset mini100.txt --max-per-class 400
    python preprocess/extract_masks.py --dataset kinetics --joblib-backend dask --scheduler tcp://head:8786

What is stored is what training reads. The default training (`--mask-source clip`) computes each
clip's masks from its own cached frames, exactly as the reference does, so by default this
command stores the frames (JPEG, once per dataset and decode parameters) and the mask statistics
of (lambda, m): the mean mask value and coverage per stride 1-4 of sampled clips' masks, computed as
the trainer computes them (preprocess/cache/stats.py), shown by `--list` and the summary, so that
masks too weak for the pretext are seen before training. Mask sets are stored only when asked:
`--strides S ...` stores, per stride, the thresholded differences of Algorithm 1 with the
background run over every stride-th frame, which `--mask-source cache` reads (presets whose
pretraining reads them pass it; the trainer names this command when one is missing). The
soft/hard mode and the dilation are applied per clip by the trainer, over its crop, so they are
not part of the cache. Running again with the same parameters recomputes nothing; a new lambda/m
(statistics) or stride (mask set) is computed from the cached frames without running ffmpeg and
touches no other file; a changed source file is redone. Mask sets already cached stay valid and
are rebuilt with their frames.

Cluster job arrays: `--shard-index I --num-shards N` builds the shards with id % N == I, into the
same (shared) cache directory; the last part to finish writes the complete manifest, and rerunning
without --shard-index afterwards only checks and indexes. `--joblib-backend dask --scheduler ADDRESS`
runs the same shard jobs on a Dask cluster (dask.distributed, optional: requirements-dev.txt) through
joblib's dask backend; its workers must see the dataset and the cache directory at the same paths
(a shared filesystem) and import this project. Both can be combined (one cluster per part).

Kinetics: annotated videos without a file are reported and listed in missing.txt of the frame set,
never fatal. `--class-subset FILE` (one class name per line) and `--max-per-class N` (the first N
videos of a class by file name, train and val separately) select a subset, cached under its own
name, `kinetics-<8 hex digits of the selection>` (or `--cache-name`): pass that name as the
trainer's --dataset. A cache folder records its selection in selection.json and refuses another.

Integrity: every record of a shard has a CRC32 and its index one more (docs/cache.md). A
plain run checks every shard's index (cheap) and rebuilds a damaged one; `--verify` also reads
every record of the frame set and of its mask sets and rebuilds the shards that are damaged (a
frame shard from its source videos, a mask shard from the cached frames). With nothing damaged it
rewrites nothing.

Exit status: 0 when every video is cached (or already was), 1 when some videos failed (all others
are cached; see failures.txt in the frame-set folder), 2 for a usage, layout or environment error.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

if __package__ in (None, ""):   # run as `python preprocess/extract_masks.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocess.cache import (DEFAULT_VIDEOS_PER_SHARD, MASK_FORMAT, NO_CHECKSUMS, CacheError, DecodeParams,
                              MaskParams, MaskSet, ShardCheck, cached_stats_params, frame_set_dir,
                              frames_shard_is_current, mask_set_dir, mask_shard_is_current, old_mask_sets,
                              read_manifest, read_shard_info, read_stats, shard_name, shard_stats_stale, stats_dir,
                              stats_shard_name, stats_text, verify_shard, write_frames_manifest,
                              write_masks_manifest, write_stats_manifest)
from preprocess.build import ShardJob, ShardResult, SourceVideo
from core import atomic
from core.checks import check_range
from core.errors import UsageError
from core.flags import Flags, flag, parse
REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DASK_REQUIREMENT = "dask[distributed]==2026.8.0"
EST_BYTES_PER_FRAME = 7300       # JPEG q90 4:2:0 at 128x171, measured on real footage (docs/benchmarks.md)
# A plain run checks every shard's index; the records themselves (every JPEG and mask) only with
# --verify, which reads them all. Said in every plain run's summary, so that a rerun after a
# trainer reported a damaged record is never mistaken for a repair.
VERIFY_HINT = ("shard indexes checked; record checksums are checked only with --verify (reads every record and "
               "rebuilds damaged shards): add it to this command after a trainer reported a damaged record")
EST_BYTES_PER_MASK = 3000        # one stored difference at 128x171 (docs/benchmarks.md)


def available_cores() -> int:
    """Cores this process may use (the affinity mask on Linux, e.g. under a cluster scheduler)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class ExtractConfig:
    dataset: str
    data_root: Path
    cache_dir: Path
    decode: DecodeParams
    masks: MaskParams
    strides: tuple[int, ...]
    videos_per_shard: int
    workers: int
    shard_index: int
    num_shards: int
    force: bool
    retry_failed: bool
    timeout_s: float | None
    chunk_frames: int
    verify: bool = False
    cache_name: str | None = None   # the dataset's folder in the cache (default: the dataset's name)

    @property
    def cache_dataset(self) -> str:
        """The dataset's name in the cache: its folder, the manifests' "dataset", the trainer's --dataset."""
        return self.cache_name or self.dataset


@dataclass
class ExtractFlags(Flags):
    """The flags of extract_masks.py. Run-level values are checked before any video is touched:
    a bad value is a problem of the command, never recorded as a failure of the videos."""

    dataset: str = flag("ucf101", "the dataset's layout", choices=("ucf101", "hmdb51", "folder", "demo", "kinetics"))
    data_root: Path = flag(None, "dataset root (none: data/<dataset>)", type=Path)
    cache_dir: Path = flag(Path("data_cache"), "cache root")
    lam: int = flag(30, "threshold lambda, 0..255 (paper: 10, 30, 60)", name="--lambda", lo=0, hi=255,
                    note="grey levels; the paper's: 10, 30, 60")
    m: float = flag(0.5, "weight of the OLD background, 0..1 (paper: 0.1, 0.5, 1)", lo=0, hi=1,
                    note="the weight of the old background; the paper's: 0.1, 0.5, 1")
    strides: list = flag([], "store the mask sets of these temporal strides, which --mask-source cache reads (the "
                             "trainer's --strides, e.g. 1 2 3 4); none by default: the default training computes "
                             "each clip's masks from its frames", nargs="+", type=int, lo=1, empty_ok=True)
    short_side: int = flag(128, "frame set: cached short side", lo=16, hi=4096)
    jpeg_quality: int = flag(90, "frame set: JPEG quality", lo=1, hi=100)
    videos_per_shard: int = flag(DEFAULT_VIDEOS_PER_SHARD, "videos per shard file", lo=1)
    workers: int = flag(available_cores(), "parallel worker processes; the default is every core this process may use",
                        lo=1)
    shard_index: int = flag(0, "this part of a job array: the shards with id %% num-shards == shard-index", lo=0)
    num_shards: int = flag(1, "parts of the job array", lo=1)
    force: bool = flag(False, "rebuild frames and this mask set even if cached")
    retry_failed: bool = flag(False, "retry videos that failed before (unchanged files)")
    timeout: float = flag(None, "per-video decode timeout in seconds (none: no timeout)", type=float, lo=0,
                          lo_open=True)
    chunk_frames: int = flag(16, "frames per decode chunk (bounds memory)", lo=1)
    doctor: bool = flag(False, "preflight checks only")
    verify: bool = flag(False, "check the checksum of every record of the frame set and its mask sets, and rebuild "
                               "the shards that are damaged (a plain run checks only each shard's index)")
    class_subset: Path = flag(None, "kinetics: only these classes, one name per line as in the annotations' label "
                                    "column ('#' comments and blank lines ignored); labels renumbered 0..K-1 in "
                                    "sorted order", type=Path, metavar="FILE")
    max_per_class: int = flag(None, "kinetics: at most N videos per class in each of train and val, the first N by "
                                    "file name", type=int, lo=1, metavar="N")
    cache_name: str = flag(None, "the dataset's folder in the cache and the trainer's --dataset (none: the "
                                 "dataset's name; kinetics with a subset: kinetics-<8 hex digits of the selection>)",
                           metavar="NAME")
    joblib_backend: str = flag("loky", "loky: --workers processes on this machine; dask: the shard jobs on the Dask "
                                       "cluster at --scheduler (workers see the same paths)", choices=("loky", "dask"))
    scheduler: str = flag(None, "the Dask scheduler for --joblib-backend dask, e.g. tcp://head-node:8786",
                          metavar="ADDRESS")
    scheduler_timeout: float = flag(30.0, "seconds to wait for the Dask scheduler before giving up (exit 2)",
                                    lo=0, lo_open=True, metavar="S")
    list: bool = flag(False, "list what is cached and exit")    # last: the name shadows the builtin in the class body

    def check(self) -> None:
        """Combinations of flags (each flag's own range is checked from its field); reads
        --class-subset into ``class_subset_names``."""
        if len(set(self.strides)) != len(self.strides):
            raise UsageError("--strides", self.strides, "must be distinct")
        check_range("--shard-index", self.shard_index, lo=0, hi=self.num_shards - 1,
                    note="0 <= shard-index < num-shards")
        for name, value in (("--class-subset", self.class_subset), ("--max-per-class", self.max_per_class)):
            if value is not None and self.dataset != "kinetics":
                raise UsageError(name, value, "only with --dataset kinetics")
        self.class_subset_names = None
        if self.class_subset is not None:
            from preprocess.datasets import read_class_subset

            try:
                self.class_subset_names = read_class_subset(self.class_subset)
            except FileNotFoundError:
                raise UsageError("--class-subset", self.class_subset, "no such file") from None
            except (OSError, ValueError) as e:
                raise UsageError("--class-subset", self.class_subset, str(e)) from None
        if self.cache_name is not None and not CACHE_NAME.fullmatch(self.cache_name):
            raise UsageError("--cache-name", self.cache_name, "must be letters, digits, '_', '-' or '.', starting "
                             "with a letter or digit (a folder name), at most 64 characters")
        if self.joblib_backend == "dask" and not self.scheduler:
            raise UsageError("--joblib-backend", "dask", "needs --scheduler ADDRESS (e.g. tcp://head-node:8786)")
        if self.scheduler and self.joblib_backend != "dask":
            raise UsageError("--scheduler", self.scheduler, "only with --joblib-backend dask")


def parse_args(argv: list[str] | None) -> ExtractFlags:
    return parse(ExtractFlags, argv, description=__doc__, prog="extract_masks.py")


def config_from_args(args: ExtractFlags) -> ExtractConfig:
    return ExtractConfig(
        dataset=args.dataset, data_root=args.data_root or Path("data") / args.dataset, cache_dir=args.cache_dir,
        decode=DecodeParams(args.short_side, args.jpeg_quality),
        masks=MaskParams(args.lam, args.m), strides=tuple(sorted(args.strides)), videos_per_shard=args.videos_per_shard,
        workers=args.workers, shard_index=args.shard_index, num_shards=args.num_shards, force=args.force,
        retry_failed=args.retry_failed, timeout_s=args.timeout, chunk_frames=args.chunk_frames, verify=args.verify,
        cache_name=args.cache_name)


# --------------------------------------------------------------------------------------------
# Planning: which shard files are current, which need frames, which only masks.

def plan_jobs(cfg: ExtractConfig, videos: list[SourceVideo], ffmpeg: str | None,
              damaged: dict[Path, str] | None = None) -> tuple[list[ShardJob], int, list[str]]:
    """Jobs for this part of the cache; also the count of videos skipped and notes on why shards are redone.
    `damaged` ({shard path: reason}, from `verify_cache`) names shards to rebuild whatever else holds.

    Per shard: frames that are missing or stale are decoded again, with the statistics of this
    run's (lambda, m), the requested mask sets and every other cached set and statistics (all of
    them belong to the old frames). Current frames get what is missing of this run's statistics and
    requested sets, computed from the cached frames."""
    damaged = damaged or {}
    frame_set = frame_set_dir(cfg.cache_dir, cfg.cache_dataset, cfg.decode)
    n_shards = max(1, -(-len(videos) // cfg.videos_per_shard))
    jobs, skipped, notes = [], 0, []
    wanted = requested_sets(cfg)
    cached = _cached_mask_sets(frame_set)
    cached_stats = [p for p in cached_stats_params(frame_set) if p != cfg.masks]
    for shard_id in range(cfg.shard_index, n_shards, cfg.num_shards):
        part = tuple(videos[shard_id * cfg.videos_per_shard:(shard_id + 1) * cfg.videos_per_shard])
        fpath = frame_set / "frames" / shard_name(shard_id)
        mpaths = {ms: mask_set_dir(frame_set, ms) / shard_name(shard_id) for ms in wanted}
        for path in (fpath, *mpaths.values()):
            for stale in path.parent.glob(f".{path.name}.tmp-*"):
                stale.unlink(missing_ok=True)  # left by a killed run; never mistaken for a shard
        why = "forced" if cfg.force else (damaged.get(fpath) or _frames_stale(fpath, cfg, part))
        if why is None:
            info = read_shard_info(fpath)
            todo = []
            # the requested sets, and any other cached set whose shard --verify found damaged
            mpaths.update({ms: mask_set_dir(frame_set, ms) / shard_name(shard_id) for ms in cached
                           if ms not in mpaths and mask_set_dir(frame_set, ms) / shard_name(shard_id) in damaged})
            for ms, mpath in mpaths.items():
                mask_why = damaged.get(mpath) or (_mask_stale(mpath, ms, info.uid) if ms in wanted else None)
                if mask_why is not None:
                    notes.append(f"shard {shard_id}: mask set {ms.key()}: {mask_why}")
                    todo.append(ms)
            stats_why = shard_stats_stale(stats_dir(frame_set, cfg.masks) / stats_shard_name(shard_id), info.uid)
            if stats_why is not None:
                notes.append(f"shard {shard_id}: mask statistics {cfg.masks.key()}: {stats_why}")
            if not todo and stats_why is None:
                skipped += len(part)
                continue
            jobs.append(ShardJob(cfg.cache_dataset, shard_id, frame_set, cfg.decode,
                                 tuple(v for v in part if v.name in set(info.names)), False, tuple(todo),
                                 stats=(cfg.masks,) if stats_why is not None else (),
                                 frames_uid=info.uid, chunk_frames=cfg.chunk_frames))
            skipped += len(part) - len(jobs[-1].videos)  # known failures stay failed
        else:
            notes.append(f"shard {shard_id}: frames: {why}")
            # Rebuilding frames invalidates every mask set and statistics of this shard: rebuild the cached ones too.
            others = [ms for ms in cached if ms not in wanted and (mask_set_dir(frame_set, ms) / shard_name(shard_id)).exists()]
            stats = [cfg.masks, *(p for p in cached_stats if (stats_dir(frame_set, p) / stats_shard_name(shard_id)).exists())]
            jobs.append(ShardJob(cfg.cache_dataset, shard_id, frame_set, cfg.decode, part, True,
                                 (*wanted, *others), stats=tuple(stats), ffmpeg=ffmpeg, chunk_frames=cfg.chunk_frames,
                                 timeout_s=cfg.timeout_s))
    return jobs, skipped, notes


def requested_sets(cfg: ExtractConfig) -> tuple[MaskSet, ...]:
    return tuple(cfg.masks.at(s) for s in cfg.strides)


def _frames_stale(path: Path, cfg: ExtractConfig, part: tuple[SourceVideo, ...]) -> str | None:
    if not path.exists():
        return "not cached"
    try:
        info = read_shard_info(path)
    except CacheError as e:
        return f"damaged ({str(e).splitlines()[0]})"
    why = frames_shard_is_current(info, cfg.decode, [(v.name, v.size, v.mtime_ns) for v in part])
    if why is None and cfg.retry_failed and info.failed:
        return f"retrying {len(info.failed)} failed video(s)"
    return why


def _mask_stale(path: Path, masks: MaskSet, frames_uid: str) -> str | None:
    if not path.exists():
        return "not cached"
    try:
        return mask_shard_is_current(read_shard_info(path), masks, frames_uid)
    except CacheError as e:
        return f"damaged ({str(e).splitlines()[0]})"


_SET_FOLDER = re.compile(r"masks-lam(\d+)_m([0-9.e+-]+)_stride(\d+)")


def _cached_mask_sets(frame_set: Path) -> list[MaskSet]:
    """The mask sets of the current format that have a manifest (older formats are skipped). A
    damaged manifest is recognised by its folder's name, so its set is still checked and rewritten."""
    sets = []
    for manifest in sorted(frame_set.glob("masks-*/manifest.json")):
        try:
            m = read_manifest(manifest)
            if m.get("mask_format") == MASK_FORMAT:
                sets.append(MaskSet(**m["masks"]))
        except CacheError:
            folder = _SET_FOLDER.fullmatch(manifest.parent.name)
            if folder:
                sets.append(MaskSet(int(folder[1]), float(folder[2]), int(folder[3])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sets


# --------------------------------------------------------------------------------------------
# --verify: every record of every shard of this part, before planning.

def verify_cache(cfg: ExtractConfig, n_shards: int) -> tuple[dict[Path, str], list[ShardCheck], list[Path]]:
    """Check the frame shards of this part and the shards of every requested and cached mask set
    (index checksum and every record's CRC32). Returns {damaged shard: reason} for `plan_jobs`,
    the checks, and the damaged manifests (every run rewrites manifests from the shards)."""
    from joblib import Parallel, delayed
    from tqdm import tqdm

    frame_set = frame_set_dir(cfg.cache_dir, cfg.cache_dataset, cfg.decode)
    sets = sorted({*requested_sets(cfg), *_cached_mask_sets(frame_set)}, key=lambda ms: (ms.lam, ms.m, ms.stride))
    folders = [frame_set / "frames", *(mask_set_dir(frame_set, ms) for ms in sets)]
    paths = [p for shard_id in range(cfg.shard_index, n_shards, cfg.num_shards)
             for p in (folder / shard_name(shard_id) for folder in folders) if p.exists()]
    bad_manifests = []
    for manifest in (folder / "manifest.json" for folder in folders):
        try:
            if manifest.exists():
                read_manifest(manifest)
        except CacheError:
            bad_manifests.append(manifest)
    if cfg.workers > 1 and len(paths) > 1:
        it = Parallel(n_jobs=min(cfg.workers, len(paths)), return_as="generator_unordered")(
            delayed(verify_shard)(p) for p in paths)
    else:
        it = map(verify_shard, paths)
    checks = sorted(tqdm(it, total=len(paths), unit="shard", desc="[verify]", dynamic_ncols=True, leave=False),
                    key=lambda c: str(c.path))
    damaged = {}
    for c in checks:
        if c.problem is not None:
            damaged[c.path] = f"damaged: {c.problem}"
            print(f"[verify] DAMAGED {c.path}: {c.problem}; rebuilding it")
    for manifest in bad_manifests:
        print(f"[verify] DAMAGED {manifest}: rewritten from the shards at the end of this run")
    old = [c for c in checks if not c.checksums]
    if old:
        print(f"[verify] {len(old)} shard(s) have {NO_CHECKSUMS}, e.g. {old[0].path}")
    return damaged, checks, bad_manifests


def verify_summary(checks: list[ShardCheck], damaged: dict[Path, str], bad_manifests: list[Path]) -> str:
    """'verified N shards, M records: K damaged, rebuilt' (+ manifests and older shards)."""
    text = (f"[verify] verified {sum(c.checksums for c in checks)} shards, {sum(c.records for c in checks):,} "
            f"records: {len(damaged)} damaged" + (", rebuilt" if damaged else ""))
    if bad_manifests:
        text += f"; {len(bad_manifests)} damaged manifest(s), rewritten"
    old = sum(not c.checksums for c in checks)
    if old:
        text += f"; {old} shard(s) not verified: {NO_CHECKSUMS}"
    return text


# --------------------------------------------------------------------------------------------
# Running the jobs in parallel with live progress.

def _limit_worker_threads(cache_dir: Path) -> None:
    """Set before the workers start (they inherit the environment)."""
    # The mask kernels are serial; parallelism is across shards. One thread per worker process
    # keeps numba/BLAS/OpenMP pools from oversubscribing the cores.
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    # JIT-compiled kernels are cached beside the data so every worker and every later run reuses them.
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir.resolve() / ".numba"))


WORKER_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_CACHE_DIR")


def connect_scheduler(address: str, timeout_s: float):
    """A dask.distributed Client of the scheduler at `address`, or a UsageError (exit 2) saying
    why not: dask.distributed is not installed, or no scheduler answers there in time."""
    try:
        from dask.distributed import Client
    except ImportError as e:
        raise UsageError("--joblib-backend", "dask",
                         f"needs dask.distributed, which is not installed ({e}); install it with "
                         f"`pip install '{DASK_REQUIREMENT}'` (listed in requirements-dev.txt) or use "
                         f"--joblib-backend loky") from None
    import asyncio

    from distributed.comm import connect

    async def probe() -> None:      # a bad address fails here, before a Client exists (whose cleanup would hang)
        comm = await connect(address, timeout=timeout_s)
        await comm.close()

    try:
        asyncio.run(probe())
    except RuntimeError:
        pass    # called inside a running event loop (a notebook): the Client below checks the address
    except (ValueError, TypeError) as e:
        raise UsageError("--scheduler", address, f"not a Dask scheduler address ({e}); e.g. "
                         f"tcp://head-node:8786") from None
    except (OSError, TimeoutError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise UsageError("--scheduler", address,
                         f"no Dask scheduler reachable there within {timeout_s:g} s ({why}); start one with "
                         f"`dask scheduler` and its workers with `dask worker ADDRESS` on machines that see "
                         f"the same paths") from None
    try:
        return Client(address, timeout=timeout_s, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise UsageError("--scheduler", address,
                         f"no Dask scheduler reachable there within {timeout_s:g} s ({why}); start one with "
                         f"`dask scheduler` and its workers with `dask worker ADDRESS` on machines that see "
                         f"the same paths") from None


def run_jobs(jobs: list[ShardJob], workers: int, total_videos: int, client=None) -> list[ShardResult]:
    """Build the shards: `workers` local processes (joblib's loky backend, live per-video progress),
    or, given a dask.distributed `client`, on its cluster through joblib's dask backend (progress
    per finished shard: the progress queue does not reach remote workers)."""
    from joblib import Parallel, delayed
    from tqdm import tqdm

    from preprocess.build import build_shard, build_shard_on_worker

    results: list[ShardResult] = []
    bar = tqdm(total=total_videos, unit="video", dynamic_ncols=True, smoothing=0.1)
    start = time.perf_counter()
    frames = 0

    def advance(n_videos: int, n_frames: int) -> None:
        nonlocal frames
        frames += n_frames
        bar.update(n_videos)
        bar.set_postfix(frames_per_s=f"{frames / max(time.perf_counter() - start, 1e-9):.0f}", refresh=False)

    if client is not None:
        from joblib import parallel_config

        env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}  # what local workers inherit
        with parallel_config(backend="dask", client=client):
            for result in Parallel(n_jobs=-1, return_as="generator_unordered")(
                    delayed(build_shard_on_worker)(job, env) for job in jobs):
                results.append(result)
                advance(result.videos_ok + len(result.failures), result.frames)
    elif workers == 1 or len(jobs) == 1:
        class _Inline:
            def put(self, item):
                advance(*item)
        for job in jobs:
            results.append(build_shard(job, _Inline()))
    else:
        import multiprocessing

        with multiprocessing.Manager() as manager:
            queue = manager.Queue()
            done = threading.Event()

            def drain() -> None:
                while not done.is_set() or not queue.empty():
                    try:
                        advance(*queue.get(timeout=0.1))
                    except Exception:
                        pass

            thread = threading.Thread(target=drain, daemon=True)
            thread.start()
            try:
                for result in Parallel(n_jobs=min(workers, len(jobs)), return_as="generator_unordered")(
                        delayed(build_shard)(job, queue) for job in jobs):
                    results.append(result)
            finally:
                done.set()
                thread.join()
    bar.close()
    return results


# --------------------------------------------------------------------------------------------
# Commands.

def load_index(cfg: ExtractConfig):
    from preprocess.datasets import load_dataset

    if cfg.dataset == "demo" and not (cfg.data_root / "UCF-101").exists():
        from preprocess.make_demo import make_demo

        print(f"[extract] demo dataset not found at {cfg.data_root}: generating it")
        make_demo(cfg.data_root)
    return load_dataset(cfg.dataset, cfg.data_root)


def source_videos(index) -> list[SourceVideo]:
    videos = []
    for entry in index.videos:
        path = index.path(entry)
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        videos.append(SourceVideo(path, entry.rel_path, entry.label, tuple(entry.splits), size, mtime))
    return videos


def doctor(cfg: ExtractConfig, index, videos: list[SourceVideo]) -> bool:
    """Preflight: ffmpeg, layout and counts, free disk against the estimated cache size."""
    from preprocess.decode import ffmpeg_binary, ffmpeg_version, probe

    ok = True
    try:
        binary = ffmpeg_binary()
        print(f"[doctor] ffmpeg: {binary} ({ffmpeg_version(binary)})")
    except Exception as e:  # the binary is what everything else needs
        print(f"[doctor] FAIL ffmpeg: {e}", file=sys.stderr)
        return False
    print(f"[doctor] dataset: {index.summary()}")
    for problem in index.problems[:20]:
        print(f"[doctor] problem: {problem}", file=sys.stderr)
    if len(index.problems) > 20:
        print(f"[doctor] ... {len(index.problems) - 20} more problems", file=sys.stderr)
    sample = videos[:: max(1, len(videos) // 20)][:20]
    frames_per_video = []
    for v in sample:
        try:
            info = probe(v.path, binary=binary)
            if info.fps and info.duration_s:
                frames_per_video.append(info.fps * info.duration_s)
        except Exception:
            continue
    est_frames = int(sum(frames_per_video) / max(1, len(frames_per_video)) * len(videos)) if frames_per_video else 0
    est_bytes = est_frames * (EST_BYTES_PER_FRAME + EST_BYTES_PER_MASK * len(cfg.strides))
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cfg.cache_dir).free
    what = f"frames + {len(cfg.strides)} mask set(s)" if cfg.strides else "frames"
    print(f"[doctor] estimate: ~{est_frames:,} frames, ~{est_bytes / 1e9:.2f} GB for {what}; "
          f"{free / 1e9:.1f} GB free at {cfg.cache_dir}")
    if est_bytes > free:
        print(f"[doctor] FAIL not enough free disk at {cfg.cache_dir}", file=sys.stderr)
        ok = False
    return ok


def list_cache(cache_dir: Path) -> None:
    rows = []
    for manifest_path in sorted(cache_dir.glob("*/*/frames/manifest.json")):
        frame_set = manifest_path.parent.parent
        try:
            m = read_manifest(manifest_path)
        except CacheError:
            rows.append(f"{frame_set.parent.name:<8} {frame_set.name:<16} frames  DAMAGED manifest: rerun "
                        f"extract_masks.py for this dataset to rewrite it")
            continue
        size = sum(p.stat().st_size for p in manifest_path.parent.glob("shard-*.h5"))
        n_frames = sum(v["n_frames"] for v in m["videos"])
        rows.append(f"{m['dataset']:<8} {frame_set.name:<16} frames  videos={len(m['videos']):<6} "
                    f"failed={len(m['failed']):<4} frames={n_frames:<9} size={size / 1e6:9.1f} MB "
                    f"{'complete' if m['complete'] else 'INCOMPLETE'}  {m['decode']}")
        for params in cached_stats_params(frame_set):
            rows.append(f"{'':<8} {'':<16} {'stats-' + params.key():<34} {stats_text(read_stats(frame_set, params))}")
        old = set(old_mask_sets(frame_set))
        for mm in sorted(frame_set.glob("masks-*/manifest.json"), key=_set_order):
            msize = sum(p.stat().st_size for p in mm.parent.glob("shard-*.h5"))
            try:
                mk = read_manifest(mm)
            except CacheError:
                rows.append(f"{'':<8} {'':<16} {mm.parent.name:<34} size={msize / 1e6:9.1f} MB  DAMAGED manifest: "
                            f"rerun extract_masks.py with this set's parameters to rewrite it")
                continue
            if mm.parent in old:
                rows.append(f"{'':<8} {'':<16} {mm.parent.name:<34} size={msize / 1e6:9.1f} MB  OLD FORMAT, not "
                            f"read (per-video masks); add per-stride sets with extract_masks.py, then delete it")
                continue
            rows.append(f"{'':<8} {'':<16} {mm.parent.name:<34} size={msize / 1e6:9.1f} MB "
                        f"{'complete  ' if mk['complete'] else 'INCOMPLETE'}  {_stats_text(mk.get('stats'))}")
    print("\n".join(rows) if rows else f"nothing cached under {cache_dir}")


def _set_order(manifest: Path):
    """Mask sets listed by (lambda, m, stride), numerically."""
    try:
        ms = json.loads(manifest.read_text())["masks"]
        return (0, ms["lam"], ms["m"], ms.get("stride", 0), "")
    except (OSError, ValueError, KeyError, TypeError):
        return (1, 0, 0, 0, manifest.parent.name)


def _stats_text(stats: dict | None) -> str:
    """'mean mask 0.052, coverage 0.18' (soft, dilated, over sampled frames), or why unknown."""
    if not stats or not stats.get("pixels"):
        return "mask statistics: none (no frames)"
    return (f"mean mask {stats['mask_sum'] / stats['pixels']:.3f}, coverage {stats['nonzero'] / stats['pixels']:.3f} "
            f"({stats['frames']:,} sampled frames)")


def _folder_mb(folder: Path, pattern: str = "shard-*.h5") -> float:
    return sum(p.stat().st_size for p in folder.glob(pattern)) / 1e6


def stored_summary(cfg: ExtractConfig, frame_set: Path, manifest: dict, stats: dict,
                   mask_manifests: dict) -> str:
    """What the cache holds for this run and why: the frames, the mask statistics of (lambda, m),
    and the mask sets (stored only when asked: which training reads them)."""
    n_frames = sum(v["n_frames"] for v in manifest["videos"])
    lines = [f"[extract] stored: frames {cfg.decode.key()} ({len(manifest['videos']):,} videos, {n_frames:,} frames, "
             f"{_folder_mb(frame_set / 'frames'):.1f} MB) in {frame_set}",
             f"[extract] mask statistics {cfg.masks.key()}: {stats_text(stats)}"]
    if cfg.strides:
        mb = sum(_folder_mb(mask_set_dir(frame_set, ms)) for ms in requested_sets(cfg))
        each = ", ".join(f"stride {ms.stride} {_stats_text(mask_manifests[ms]['stats'])}" for ms in requested_sets(cfg))
        lines.append(f"[extract] mask sets {cfg.masks.key()} at strides {' '.join(map(str, cfg.strides))}: "
                     f"{mb:.1f} MB, read by --mask-source cache; {each}")
    else:
        lines.append("[extract] no mask set stored: the default training (--mask-source clip) computes each clip's "
                     "masks from its cached frames, exactly as the reference does. Only --mask-source cache reads "
                     "mask sets: add --strides 1 2 3 4 to store them.")
    return "\n".join(lines)


SELECTION_FILE = "selection.json"   # in <cache-dir>/<cache name>/: which videos this folder caches


def select_videos(args: ExtractFlags, cfg: ExtractConfig, index):
    """Apply --class-subset / --max-per-class; returns (index, cfg with the cache name, the
    selection record). A subset gets its own cache name, `<dataset>-<8 hex digits>` of the
    selection (sha256 of the record below), unless --cache-name names one."""
    import hashlib

    from preprocess.datasets import UnknownClassesError, select_classes

    subset = args.class_subset_names is not None or args.max_per_class is not None
    if subset:
        try:
            index = select_classes(index, args.class_subset_names, args.max_per_class)
        except UnknownClassesError as e:
            raise UsageError("--class-subset", args.class_subset,
                             f"{e} (names are the annotations' label column, one per line)") from None
    record = {"dataset": cfg.dataset,
              "classes": list(index.classes) if args.class_subset_names is not None else "all",
              "max_per_class": args.max_per_class}
    name = cfg.cache_name
    if name is None and subset:
        digest = hashlib.sha256(json.dumps(record, ensure_ascii=False, sort_keys=True)
                                .encode("utf-8", "surrogateescape")).hexdigest()
        name = f"{cfg.dataset}-{digest[:8]}"
    return index, replace(cfg, cache_name=name), record


def check_selection(cfg: ExtractConfig, record: dict, write: bool) -> None:
    """Refuse a cache folder that holds another dataset or selection (exit 2); record ours in it.
    Only for kinetics and --cache-name: the default folders of the other datasets keep no record."""
    if cfg.dataset != "kinetics" and cfg.cache_name is None:
        return
    path = cfg.cache_dir / cfg.cache_dataset / SELECTION_FILE
    if path.exists():
        try:
            held = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            held = None
        if held != record:
            def brief(r) -> str:
                if not isinstance(r, dict):
                    return "unreadable"
                c = r.get("classes")
                n = "all classes" if c == "all" else f"{len(c) if isinstance(c, list) else '?'} classes"
                return f"{r.get('dataset')}, {n}, max_per_class {r.get('max_per_class')}"
            flag, value = ("--cache-name", cfg.cache_name) if cfg.cache_name else ("--dataset", cfg.dataset)
            raise UsageError(flag, value, f"{path.parent} caches another selection ({brief(held)}; this run: "
                             f"{brief(record)}); use another --cache-name, or the same subset flags")
    elif write:
        atomic.write_text(path, json.dumps(record, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        list_cache(args.cache_dir)
        return 0
    cfg = config_from_args(args)
    print(f"[extract] {cfg}")
    client = None
    if args.joblib_backend == "dask":   # before any work: dask installed, the scheduler answers
        client = connect_scheduler(args.scheduler, args.scheduler_timeout)
        cores = sum(client.ncores().values())
        print(f"[extract] Dask scheduler {args.scheduler}: {len(client.ncores())} worker(s), {cores} thread(s)")
    try:
        return _main(args, cfg, client)
    finally:
        if client is not None:
            client.close()


def _main(args: ExtractFlags, cfg: ExtractConfig, client) -> int:
    from preprocess.datasets import DatasetLayoutError

    try:
        index = load_index(cfg)
    except DatasetLayoutError as e:
        print(f"[extract] {e}", file=sys.stderr)
        return 2
    index, cfg, selection = select_videos(args, cfg, index)
    check_selection(cfg, selection, write=False)
    if cfg.cache_dataset != cfg.dataset:
        print(f"[extract] cache name {cfg.cache_dataset} (the trainer's --dataset): {len(index.classes)} classes, "
              f"{len(index.videos)} videos found" + (f", at most {args.max_per_class} per class and split"
                                                    if args.max_per_class else ""))
    videos = source_videos(index)
    if args.doctor:
        return 0 if doctor(cfg, index, videos) else 2
    for problem in index.problems:
        print(f"[extract] dataset problem: {problem}", file=sys.stderr)
    check_selection(cfg, selection, write=True)

    _limit_worker_threads(cfg.cache_dir)
    from preprocess.decode import ffmpeg_binary

    t0 = time.perf_counter()
    n_shards = max(1, -(-len(videos) // cfg.videos_per_shard))
    damaged, checks, bad_manifests = verify_cache(cfg, n_shards) if cfg.verify else ({}, [], [])
    jobs, skipped, notes = plan_jobs(cfg, videos, None, damaged)
    frame_set = frame_set_dir(cfg.cache_dir, cfg.cache_dataset, cfg.decode)
    if any(j.build_frames for j in jobs):
        try:
            binary = ffmpeg_binary()
        except Exception as e:
            print(f"[extract] no usable ffmpeg: {e}", file=sys.stderr)
            return 2
        jobs = [ShardJob(**{**j.__dict__, "ffmpeg": binary}) if j.build_frames else j for j in jobs]
    if not jobs:
        sets = f"mask sets at strides {' '.join(map(str, cfg.strides))}" if cfg.strides else "no mask set asked for"
        print(f"[extract] everything is cached already ({skipped} videos, {cfg.decode.key()}, mask statistics "
              f"{cfg.masks.key()}, {sets}): nothing to do")
    else:
        for note in notes[:10]:
            print(f"[extract] {note}")
        n_decode = sum(len(j.videos) for j in jobs if j.build_frames)
        n_masks = sum(len(j.videos) for j in jobs if not j.build_frames)
        where = f"the Dask cluster at {args.scheduler}" if client is not None else f"{cfg.workers} worker(s)"
        print(f"[extract] {len(jobs)} shard(s): {n_decode} videos to decode, {n_masks} to mask or measure from "
              f"cached frames, {skipped} already cached; {where}")
    try:
        results = run_jobs(jobs, cfg.workers, sum(len(j.videos) for j in jobs), client) if jobs else []
    except CacheError as e:     # e.g. masks asked of a damaged frame shard: the message says what to run
        print(f"[extract] {e}", file=sys.stderr)
        return 2

    # Index what is on disk now (all parts of a job array write the same cache directory).
    manifest = write_frames_manifest(frame_set, cfg.cache_dataset, index.classes, cfg.decode, n_shards,
                                     cfg.videos_per_shard)
    mask_manifests = {ms: write_masks_manifest(frame_set, ms, manifest)
                      for ms in {*requested_sets(cfg), *_cached_mask_sets(frame_set)}}
    stats_manifests = {p: write_stats_manifest(frame_set, p, manifest)
                       for p in {cfg.masks, *cached_stats_params(frame_set)}}
    print(stored_summary(cfg, frame_set, manifest, stats_manifests[cfg.masks], mask_manifests))
    old = old_mask_sets(frame_set)
    if old:
        print(f"[extract] note: older-format mask sets are not read any more and can be deleted: "
              f"rm -r {' '.join(str(p) for p in old)}")

    failures = [f for r in results for f in r.failures]
    fresh = {name for name, _, _ in failures}
    known = [f for f in manifest["failed"] if f["name"] not in fresh]
    report = frame_set / "failures.txt"
    lines = [f"{path}\t{reason}" for _, path, reason in failures]
    lines += [f"{index.root / f['name']}\t(earlier run) {f['reason']}" for f in known]
    if lines:
        atomic.write_text(report, "\n".join(lines) + "\n")
        for line in lines:
            print(f"[extract] FAILED {line}", file=sys.stderr)
    elif report.exists():
        report.unlink()
    missing_report = frame_set / "missing.txt"   # kinetics: annotated videos without a file (not fatal)
    if index.missing:
        text = "# annotation row\texpected file\tclass\n" + "\n".join(index.missing) + "\n"
        atomic.write_bytes(missing_report, text.encode("utf-8", "surrogateescape"))
        print(f"[extract] {len(index.missing)} annotated video(s) are missing on disk (not fatal): listed in "
              f"{missing_report}", file=sys.stderr)
    elif missing_report.exists():
        missing_report.unlink()
    elapsed = time.perf_counter() - t0
    ok = sum(r.videos_ok for r in results)
    frames = sum(r.frames for r in results)
    written = sum(r.bytes_written for r in results)
    print(f"[extract] done in {elapsed:.1f}s: ok {ok}, failed {len(failures)}, skipped (cached) {skipped}, "
          f"known failures {len(known)}, frames {frames:,} ({frames / max(elapsed, 1e-9):.0f}/s), "
          f"written {written / 1e6:.1f} MB" + (f"; failures listed in {report}" if lines else ""))
    if cfg.verify:
        print(verify_summary(checks, damaged, bad_manifests))
    else:
        print(f"[extract] {VERIFY_HINT}")
    if not manifest["complete"]:
        print(f"[extract] this part is done; the cache is complete once all {cfg.num_shards} parts have run")
    return 1 if (failures or known) else 0


def console() -> None:
    """The ``mac-extract-masks`` console command (pyproject.toml): the same as ``python preprocess/extract_masks.py``."""
    from core.errors import exit_with

    exit_with(main, "extract_masks.py")


if __name__ == "__main__":
    console()
