#!/usr/bin/env python
"""End-to-end pretraining throughput: the real `train/pretrain.py` on a generated cache of UCF101's
size, MAC-S-2 and MAC-SC-2, read back from its metrics.jsonl.

    python benchmarks/bench_pretrain.py --json pretrain_bench.json            # GPU: the target setting
    python benchmarks/bench_pretrain.py --smoke                               # CPU: tiny, checks the plumbing

What runs. A frame cache is generated first (`preprocess.cache` shards and manifest, the format
`preprocess/extract_masks.py` writes): --videos synthetic videos (default 9,537, UCF101 split 1's
training part: 149 steps an epoch at batch 64) of --video-frames frames at 128x171 (the cache's
short side 128, UCF101's 4:3), a textured background under a slowly panning camera, 1-3 textured
objects moving across it and sensor noise, tuned to about the JPEG size of real footage at q90
(~7 KB a frame; the mean is printed). Masks come from Algorithm 1 on each augmented clip
(pretrain.py's default `--mask-source clip`), so no mask set is needed. Shards are written by
--jobs processes; `--work-dir DIR` keeps the cache and reuses it on the next run.

--test-videos more (default 3,783, UCF101 split 1's test part) are the test split: pretrain.py's
pretext evaluation runs on them every --eval-every epochs (default 10, pretrain.py's: with the 3
epochs one evaluation, after the last) and is part of the overall figure.

Then, per method, `python train/pretrain.py` as a subprocess exactly as a user runs it (batch 64,
16x112, R(2+1)D-18, --workers 8 and persistent, the product's defaults otherwise: bf16 and
channels_last_3d on CUDA, SGD, clip_grad 40, shuffle BN, one last.pt checkpoint per epoch written
in the background, plus mid-epoch ones with --save-every-min), --save-every 0 and --no-progress,
for --epochs epochs (>= 2: steady state excludes the first). Reported:

  overall   clips / wall time of the whole pretrain process (imports, cache index, model build,
            DataLoader workers, compile, every step, every checkpoint, exit): the number that
            plans GPU hours (target: MAC-S-2 >= 1000, MAC-SC-2 >= 700 clips/s on one H100/H200)
  loop      clips / summed epoch_time (the training loops only)
  steady    clips / summed epoch_time of epochs 2.. (no worker start-up, cuDNN autotuning, compile)
  data wait summed data_time / summed step_time of the metrics windows, overall and steady
            (target < 5 %): data_time as train/loop.py measures it, the time the loop waits for its
            next batch (the DataLoader, plus pretrain.py's host-side mask statistics and, on
            CUDA, the launch of the next batch's copy + transform on the prefetch stream)
  checkpoint  seconds training pauses per last.pt save (`kind: "checkpoint"` records) and, when
            the file is written in the background, the write's seconds (`kind: "checkpoint_written"`);
            n/a when pretrain.py logs neither (last.pt's size is given)
  first step  `kind: "first_step"` seconds when logged (compile, cuDNN autotuning); otherwise an
            estimate: the first metrics window's time minus the same steps at the steady step time
            ("est."). With --compile this is a cold compile unless --work-dir is reused (inductor's
            cache lives under the cache folder)
  GPU memory  peak torch.cuda.max_memory_allocated when pretrain.py logs `max_memory_gb`; beside
            it the peak that nvidia-smi shows for the process (allocator reserve + CUDA context);
            the allocated memory (`memory_gb`) at each epoch's end: flat when nothing leaks
  evaluation  the pretext evaluations' seconds and clips/s (`eval_time` of the epoch records)

The targets are judged only in their setting (CUDA, batch 64, 16x112, r2plus1d_18, <= 8 workers,
>= 100 steps an epoch); otherwise the table says n/a. Exit status 1 if a pretrain run failed.

Run from the repository root (``pip install -e .`` not needed).
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):   # run as `python benchmarks/bench_pretrain.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.errors import UsageError
from core.flags import Flags, flag, parse

REPO = Path(__file__).resolve().parents[1]
DATASET = "ucf101"
UCF101_TRAIN_SPLIT1 = 9537
UCF101_TEST_SPLIT1 = 3783
METHODS = ("mac-s", "mac-sc")
# the targets (one H100/H200, B64, 16x112, R(2+1)D-18, end to end from the cache)
TARGET_CLIPS_PER_S = {"mac-s": 1000.0, "mac-sc": 700.0}
TARGET_DATA_WAIT = 0.05
TARGET_MAX_WORKERS = 8
TARGET_MIN_STEPS_PER_EPOCH = 100
# the generator's texture contrast and per-frame noise (grey levels): ~7 KB a 128x171 JPEG q90
# frame, as measured on real footage (README, "Size, measured")
TEXTURE, NOISE = 8.0, 2.0


# --------------------------------------------------------------------------------------------
# the synthetic cache
# --------------------------------------------------------------------------------------------


def synthetic_video(n_frames: int, seed: int, height: int = 128, width: int = 171) -> np.ndarray:
    """uint8 [T, H, W, 3]: a smooth colour field with fine texture under a slowly panning camera,
    1-3 textured rectangles moving (bouncing off the borders) across it, and sensor noise.
    Deterministic in its arguments."""
    rng = np.random.default_rng([int(seed), 0xB0B])
    h, w, pad = int(height), int(width), 24
    H, W = h + pad, w + pad
    grid = rng.integers(30, 200, size=(H // 16 + 2, W // 16 + 2, 3)).astype(np.float32)
    low = grid.repeat(16, 0).repeat(16, 1)[:H, :W]
    k = 9                                                  # box blur of the coarse grid (summed-area table)
    c = np.cumsum(np.cumsum(np.pad(low, ((k, k), (k, k), (0, 0)), mode="edge"), 0), 1)
    low = (c[2 * k:2 * k + H, 2 * k:2 * k + W] - c[:H, 2 * k:2 * k + W] - c[2 * k:2 * k + H, :W]
           + c[:H, :W]) / (4 * k * k)
    mid = rng.normal(0, TEXTURE, size=(H // 4 + 1, W // 4 + 1, 1)).repeat(4, 0).repeat(4, 1)[:H, :W]
    bg = np.clip(low + mid, 0, 255).astype(np.uint8)
    bank = rng.normal(0, NOISE, size=(4, h, w, 1)).astype(np.int16)
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        oh = int(rng.integers(max(2, h // 6), max(3, h // 3)))
        ow = int(rng.integers(max(2, w // 8), max(3, w // 4)))
        tex = np.clip(rng.integers(60, 240, size=(1, 1, 3)) + rng.normal(0, TEXTURE, size=(oh, ow, 1)),
                      0, 255).astype(np.uint8)
        objects.append((tex, rng.uniform(0, h - oh), rng.uniform(0, w - ow),
                        rng.uniform(-1.5, 1.5), rng.uniform(-3.0, 3.0)))
    cvy, cvx = rng.uniform(-0.3, 0.3, size=2)

    def bounce(p: float, span: int) -> int:
        if span <= 0:
            return 0
        p = abs(p) % (2 * span)
        return int(p if p <= span else 2 * span - p)

    out = np.empty((n_frames, h, w, 3), np.uint8)
    for t in range(n_frames):
        oy, ox = int(pad / 2 + cvy * t) % pad, int(pad / 2 + cvx * t) % pad
        f = bg[oy:oy + h, ox:ox + w].copy()
        for tex, y0, x0, vy, vx in objects:
            oh, ow = tex.shape[:2]
            y, x = bounce(y0 + vy * t, h - oh), bounce(x0 + vx * t, w - ow)
            f[y:y + oh, x:x + ow] = tex
        out[t] = np.clip(f.astype(np.int16) + bank[t % 4], 0, 255)
    return out


def _videos(n_videos: int, classes: int, test_videos: int = 0) -> list[tuple[str, int, int, bool]]:
    """(name, label, number, test) of every generated video, in the cache's (sorted-name) order:
    `n_videos` in the training part of splits 1-3, then `test_videos` in their test part (groups
    after the training ones, as UCF101 keeps a group on one side)."""
    train_groups = -(-n_videos // classes)
    out = [(f"Synth{i % classes:03d}/v_Synth{i % classes:03d}_g{i // classes + 1:03d}_c01.avi", i % classes, i, False)
           for i in range(n_videos)]
    out += [(f"Synth{i % classes:03d}/v_Synth{i % classes:03d}_g{train_groups + i // classes + 1:03d}_c01.avi",
             i % classes, n_videos + i, True) for i in range(test_videos)]
    return sorted(out)


def _write_shard(root: str, shard_id: int, first: int, count: int, n_videos: int, frames: int, height: int,
                 width: int, classes: int, seed: int, test_videos: int = 0) -> tuple[int, int]:
    """Write frame shard `shard_id` (videos first..first+count of the sorted names); (frames, bytes)."""
    from preprocess.cache import DecodeParams, ShardWriter, VideoRecord, encode_frame, shard_name

    decode = DecodeParams()
    writer = ShardWriter(Path(root) / "frames" / shard_name(shard_id), {}, dataset=DATASET,
                         shard_id=shard_id, decode=decode, frames_uid=None)
    n_frames = n_bytes = 0
    try:
        for name, label, number, test in _videos(n_videos, classes, test_videos)[first:first + count]:
            jpegs = [encode_frame(f, decode) for f in synthetic_video(frames, seed * 1_000_003 + number, height, width)]
            writer.add_frames(jpegs, {})
            writer.end_video(VideoRecord(name, label, (2, 2, 2) if test else (1, 1, 1), len(jpegs), 25.0, height,
                                         width, 0, 0))
            n_frames += len(jpegs)
            n_bytes += sum(len(j) for j in jpegs)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return n_frames, n_bytes


def build_synthetic_cache(cache_dir: str | Path, videos: int, frames: int, height: int = 128, width: int = 171,
                          jobs: int = 1, classes: int = 101, seed: int = 0, videos_per_shard: int = 32,
                          log=print, test_videos: int = 0) -> dict:
    """A complete frame cache of `videos` synthetic videos in the training part of splits 1-3
    (pretrain.py --part train) and `test_videos` more in their test part (pretrain.py's pretext
    evaluation, finetune.py's validation, evaluate.py), written by `jobs` processes; reused when
    `cache_dir` already holds one with the same parameters. Returns its description."""
    from preprocess.cache import DecodeParams, frame_set_dir, write_frames_manifest

    params = {"videos": int(videos), "frames": int(frames), "height": int(height), "width": int(width),
              "classes": int(classes), "seed": int(seed), "videos_per_shard": int(videos_per_shard),
              "texture": TEXTURE, "noise": NOISE, **({"test_videos": int(test_videos)} if test_videos else {})}
    decode = DecodeParams()
    root = frame_set_dir(cache_dir, DATASET, decode)
    sidecar = Path(cache_dir) / "bench_pretrain_cache.json"
    if sidecar.exists() and (root / "frames" / "manifest.json").exists():
        old = json.loads(sidecar.read_text())
        if old.get("params") == params:
            log(f"[cache] reusing {root} ({videos} videos x {frames} frames)")
            return {**old, "reused": True, "build_s": 0.0}
    if root.exists():
        shutil.rmtree(root)
    total = videos + test_videos
    n_shards = max(1, -(-total // videos_per_shard))
    t0 = time.perf_counter()
    spans = [(s, s * videos_per_shard, min(videos_per_shard, total - s * videos_per_shard)) for s in range(n_shards)]
    args = [(str(root), s, first, count, videos, frames, height, width, classes, seed, test_videos)
            for s, first, count in spans]
    jobs = max(1, min(int(jobs), n_shards))
    if jobs == 1:
        done = [_write_shard(*a) for a in args]
    else:
        with ProcessPoolExecutor(jobs) as ex:
            done = list(ex.map(_write_shard, *zip(*args)))
    write_frames_manifest(root, DATASET, [f"Synth{c:03d}" for c in range(classes)], decode, n_shards,
                          videos_per_shard)
    n_frames, n_bytes = sum(d[0] for d in done), sum(d[1] for d in done)
    info = {"params": params, "root": str(root), "shards": n_shards, "frames_total": n_frames,
            "jpeg_bytes_per_frame": n_bytes / max(n_frames, 1), "build_s": time.perf_counter() - t0,
            "jobs": jobs}
    sidecar.write_text(json.dumps(info, indent=2))
    log(f"[cache] built {root}: {videos} videos{f' + {test_videos} test' if test_videos else ''} x {frames} frames "
        f"{height}x{width}, {n_shards} shards, "
        f"{info['jpeg_bytes_per_frame'] / 1e3:.1f} KB/frame, {info['build_s']:.1f} s with {jobs} processes")
    return {**info, "reused": False}


# --------------------------------------------------------------------------------------------
# running pretrain.py
# --------------------------------------------------------------------------------------------


class GpuMemoryPoll:
    """Peak GPU memory of a process as nvidia-smi reports it (per-process when the pid is visible,
    else the device's used memory above what was in use before the start), polled every 0.5 s."""

    def __init__(self) -> None:
        self.smi = shutil.which("nvidia-smi")
        self.peak_mib, self.source = None, None
        self._stop = threading.Event()
        self._thread = None
        self._base = self._device_used() if self.smi else None

    def _query(self, *args: str) -> list[str]:
        try:
            out = subprocess.run([self.smi, *args, "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=10)
            return [ln.strip() for ln in out.stdout.splitlines() if ln.strip()] if out.returncode == 0 else []
        except (OSError, subprocess.SubprocessError):
            return []

    def _device_used(self) -> float | None:
        rows = self._query("--query-gpu=memory.used")
        try:
            return float(rows[0]) if rows else None
        except ValueError:
            return None

    def start(self, pid: int) -> "GpuMemoryPoll":
        if self.smi:
            self._thread = threading.Thread(target=self._run, args=(pid,), daemon=True)
            self._thread.start()
        return self

    def _run(self, pid: int) -> None:
        while not self._stop.wait(0.5):
            mine = None
            for row in self._query("--query-compute-apps=pid,used_memory"):
                p, _, mem = row.partition(",")
                if p.strip() == str(pid):
                    try:
                        mine = float(mem)
                    except ValueError:
                        pass
            if mine is not None:
                self.source = "nvidia-smi, process"
            else:
                used = self._device_used()
                if used is None or self._base is None or self.source == "nvidia-smi, process":
                    continue
                mine, self.source = used - self._base, "nvidia-smi, device used - before"
            self.peak_mib = max(self.peak_mib or 0.0, mine)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)


def pretrain_command(method: str, args, cache_dir: Path, run_dir: Path) -> list[str]:
    cmd = [sys.executable, str(REPO / "train" / "pretrain.py"), "--dataset", DATASET, "--cache-dir", str(cache_dir),
           "--method", method, "--n", str(args.n), "--k", str(args.k), "--backbone", args.backbone,
           "--frames", str(args.frames), "--crop", str(args.crop), "--scales", *map(str, args.scales),
           "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--workers", str(args.workers),
           "--eval-every", str(args.eval_every if args.test_videos else 0), "--save-every", "0",
           "--log-every", str(args.log_every), "--no-progress", "--run-dir", str(run_dir), "--seed", str(args.seed)]
    if args.save_every_min:
        cmd += ["--save-every-min", f"{args.save_every_min:g}"]
    if args.queue_size:
        cmd += ["--queue-size", str(args.queue_size)]
    if args.device != "auto":
        cmd += ["--device", args.device]
    cmd.append("--compile" if args.compile else "--no-compile")
    return cmd + shlex.split(args.pretrain_args)


def run_pretrain(method: str, args, cache_dir: Path, run_dir: Path, log=print) -> dict:
    cmd = pretrain_command(method, args, cache_dir, run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    out_path = run_dir.parent / f"{run_dir.name}.log"
    log(f"[run] {' '.join(shlex.quote(c) for c in cmd)}")
    poll = GpuMemoryPoll()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t_unix, t0 = time.time(), time.perf_counter()
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
        poll.start(proc.pid)
        try:
            rc = proc.wait(timeout=args.timeout or None)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "timeout"
        finally:
            poll.stop()
    wall = time.perf_counter() - t0
    text = out_path.read_text(errors="replace")
    res = {"method": method, "command": cmd, "returncode": rc, "wall_s": wall, "log": str(out_path),
           "started_unix": t_unix, "gpu_mem_nvsmi_gib": None if poll.peak_mib is None else poll.peak_mib / 1024,
           "gpu_mem_nvsmi_source": poll.source}
    m = re.search(r"device = (\S+?),", text)
    res["device"] = m.group(1) if m else None
    if rc != 0:
        res["error"] = f"pretrain.py exited with {rc}; last lines of {out_path}:\n" + "\n".join(text.splitlines()[-25:])
        log(f"[run] {method} FAILED ({rc})\n{res['error']}")
        return res
    records = read_jsonl(run_dir / "metrics.jsonl")
    ck = run_dir / "last.pt"
    res.update(summarise(records, wall, t_unix, args.batch_size))
    res["checkpoint_mb"] = ck.stat().st_size / 1e6 if ck.exists() else None
    return res


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def summarise(records: list[dict], wall_s: float, started_unix: float, batch: int) -> dict:
    """The figures of one pretrain run from its metrics.jsonl records (see the module docstring)."""
    train = [r for r in records if r.get("kind") == "train"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    steps = max([int(r.get("step", 0)) for r in train + epochs] or [0])
    clips = steps * batch
    out: dict = {"steps": steps, "clips": clips, "epochs": len(epochs),
                 "steps_per_epoch": [], "epoch_times_s": [_num(r.get("epoch_time")) for r in epochs]}
    prev = 0
    for r in epochs:
        out["steps_per_epoch"].append(int(r["step"]) - prev)
        prev = int(r["step"])
    out["clips_per_s_overall"] = clips / wall_s if wall_s > 0 and clips else None
    loop = sum(t for t in out["epoch_times_s"] if t)
    out["loop_s"] = loop
    out["clips_per_s_loop"] = clips / loop if loop else None
    later = [(n, t) for n, t in zip(out["steps_per_epoch"][1:], out["epoch_times_s"][1:]) if t]
    out["clips_per_s_steady"] = (sum(n for n, _ in later) * batch / sum(t for _, t in later)) if later else None
    out["outside_loop_s"] = wall_s - loop if loop else None

    # metrics windows: n steps each (a window never spans two epochs)
    windows, prev = [], 0
    for r in train:
        n = int(r["step"]) - prev
        prev = int(r["step"])
        if n > 0 and _num(r.get("step_time")) is not None and _num(r.get("data_time")) is not None:
            windows.append((int(r.get("epoch", 0)), n, float(r["data_time"]), float(r["step_time"]), r))

    def share(ws) -> float | None:
        tot = sum(n * st for _, n, _, st, _ in ws)
        return sum(n * dt for _, n, dt, _, _ in ws) / tot if tot > 0 else None

    steady = [w for w in windows if w[0] >= 1]
    out["data_wait_share"] = share(windows)
    out["data_wait_share_steady"] = share(steady)
    out["step_time_s_steady"] = statistics.median(st for *_, st, _ in steady) if steady else None
    out["data_time_s_steady"] = statistics.median(dt for _, _, dt, _, _ in steady) if steady else None

    ck = [_num(r.get("seconds")) for r in records if r.get("kind") == "checkpoint"]
    ck = [c for c in ck if c is not None]
    out["checkpoint_s"] = statistics.mean(ck) if ck else None         # the pause training sees
    out["checkpoint_s_max"] = max(ck) if ck else None
    out["checkpoint_source"] = "metrics (kind checkpoint)" if ck else None
    wr = [_num(r.get("write_seconds")) for r in records if r.get("kind") == "checkpoint_written"]
    wr = [w for w in wr if w is not None]
    out["checkpoint_write_s"] = statistics.mean(wr) if wr else None   # the background write, when logged
    out["checkpoints"] = len(ck)

    first = [_num(r.get("seconds")) for r in records if r.get("kind") == "first_step"]
    first = [f for f in first if f is not None]
    if first:
        out["first_step_s"], out["first_step_source"] = first[0], "metrics (kind first_step)"
    elif windows and out["step_time_s_steady"]:
        _, n, _, st, _ = windows[0]
        out["first_step_s"] = max(0.0, n * (st - out["step_time_s_steady"]))
        out["first_step_source"] = "est. (first window - steady)"
    else:
        out["first_step_s"], out["first_step_source"] = None, None
    if windows and _num(windows[0][4].get("time")) is not None:
        _, n, _, st, r = windows[0]
        out["startup_s"] = max(0.0, float(r["time"]) - n * st - started_unix)   # until the first step began
    else:
        out["startup_s"] = None

    mem = [_num(r.get("max_memory_gb")) for r in records]
    mem = [m for m in mem if m is not None]
    out["max_memory_gb"] = max(mem) if mem else None
    # allocated memory at each epoch's last window: flat from one epoch to the next (no leak)
    ends: dict[int, float] = {}
    for r in train:
        if _num(r.get("memory_gb")) is not None:
            ends[int(r.get("epoch", 0))] = float(r["memory_gb"])
    out["memory_gb_epoch_end"] = [ends[e] for e in sorted(ends)]
    out["memory_growth_gb"] = (ends[max(ends)] - ends[min(ends)]) if len(ends) >= 2 else None
    # the pretext evaluation (epoch records with eval_time) and the mid-epoch checkpoints
    evals = [(r.get("test_videos"), _num(r.get("eval_time"))) for r in epochs if _num(r.get("eval_time")) is not None]
    out["evaluations"] = len(evals)
    out["eval_s"] = sum(t for _, t in evals) if evals else None
    out["eval_videos"] = evals[-1][0] if evals else None
    out["eval_clips_per_s"] = (sum(v or 0 for v, _ in evals) / out["eval_s"]) if evals and out["eval_s"] else None
    accs_t = [_num(r.get("test_acc")) for r in epochs if _num(r.get("test_acc")) is not None]
    out["test_acc"] = accs_t[-1] if accs_t else None             # the last evaluation's
    out["checkpoints_mid_epoch"] = sum(1 for r in records if r.get("kind") == "checkpoint" and r.get("batch"))
    accs = [r.get("acc") for r in epochs]
    out["final_loss"] = _num(epochs[-1].get("loss")) if epochs else None
    out["final_acc"] = _num(accs[-1]) if accs else None
    return out


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def target_setting_gaps(args, device: str | None, steps_per_epoch: int) -> list[str]:
    """Why this run is not the targets' setting (empty: it is)."""
    gaps = []
    if not (device or "").startswith("cuda"):
        gaps.append(f"device {device or '?'}")
    if args.batch_size != 64:
        gaps.append(f"batch {args.batch_size}")
    if (args.frames, args.crop) != (16, 112):
        gaps.append(f"{args.frames}x{args.crop}")
    if args.backbone != "r2plus1d_18":
        gaps.append(args.backbone)
    if args.n != 2:
        gaps.append(f"n {args.n}")
    if args.workers > TARGET_MAX_WORKERS:
        gaps.append(f"{args.workers} workers")
    if steps_per_epoch < TARGET_MIN_STEPS_PER_EPOCH:
        gaps.append(f"{steps_per_epoch} steps/epoch")
    return gaps


def judge(value: float | None, ok: bool, gaps: list[str]) -> str:
    if value is None:
        return "n/a"
    if gaps:
        return "n/a (" + ", ".join(gaps) + ")"
    return "PASS" if ok else "FAIL"


def f(x, spec: str = ".1f", none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def report(results: list[dict], args, steps_per_epoch: int) -> list[dict]:
    name = {"mac-s": f"MAC-S-{args.n}", "mac-sc": f"MAC-SC-{args.n}"}
    print()
    print(f"[bench] pretrain.py end to end: B={args.batch_size} {args.frames}x{args.crop} {args.backbone} "
          f"workers={args.workers} compile={args.compile} epochs={args.epochs} steps/epoch={steps_per_epoch}")
    hdr = (f"{'method':9s} {'overall':>8s} {'loop':>8s} {'steady':>8s} {'wait':>6s} {'wait st':>7s} "
           f"{'step ms':>8s} {'ckpt s':>7s} {'write s':>7s} {'1st step s':>10s} {'start s':>7s} {'mem GiB':>8s} {'smi GiB':>8s}")
    print("          (clips/s)")
    print(hdr)
    for r in results:
        if r.get("error"):
            print(f"{name[r['method']]:9s} ERROR (see {r['log']})")
            continue
        first = f(r["first_step_s"]) + ("e" if (r.get("first_step_source") or "").startswith("est") else " ")
        print(f"{name[r['method']]:9s} {f(r['clips_per_s_overall']):>8s} {f(r['clips_per_s_loop']):>8s} "
              f"{f(r['clips_per_s_steady']):>8s} {f(r['data_wait_share'] and 100 * r['data_wait_share'], '.1f') + '%':>6s} "
              f"{f(r['data_wait_share_steady'] and 100 * r['data_wait_share_steady'], '.1f') + '%':>7s} "
              f"{f(r['step_time_s_steady'] and 1000 * r['step_time_s_steady']):>8s} {f(r['checkpoint_s'], '.2f'):>7s} "
              f"{f(r['checkpoint_write_s'], '.2f'):>7s} {first:>10s} {f(r['startup_s']):>7s} {f(r['max_memory_gb'], '.2f'):>8s} "
              f"{f(r['gpu_mem_nvsmi_gib'], '.2f'):>8s}")
    for r in results:
        if r.get("error") or not (r.get("evaluations") or r.get("checkpoints_mid_epoch") or r.get("memory_gb_epoch_end")):
            continue
        ev = (f"{r['evaluations']} evaluation(s) of {r['eval_videos']} test videos: {f(r['eval_s'], '.1f')} s "
              f"({f(r['eval_clips_per_s'])} clips/s), test_acc {f(r['test_acc'], '.3f')}") if r.get("evaluations") \
            else "no evaluation"
        mem = r.get("memory_gb_epoch_end") or []
        print(f"  {name[r['method']]}: {ev}; {r.get('checkpoints_mid_epoch', 0)} mid-epoch checkpoint(s), pause max "
              f"{f(r.get('checkpoint_s_max'), '.2f')} s; allocated GiB at epoch ends "
              f"{', '.join(f'{m:.2f}' for m in mem) or 'n/a'}")
    print("  overall = clips / pretrain process wall time; loop = clips / summed epoch_time; steady = epochs 2..;")
    print("  wait = data_time / step_time (st: epochs 2..); step ms = median steady window; ckpt s = training's pause "
          "per save, write s = background write; 1st step s (e = estimated: no first_step record); start s = "
          "process start to the first step")
    ok = [r for r in results if not r.get("error")]
    if ok and not any(r.get("checkpoint_s") is not None for r in ok):
        print("  ckpt n/a: this pretrain.py logs no checkpoint record (last.pt: "
              + ", ".join(f"{f(r.get('checkpoint_mb'), '.1f')} MB" for r in ok) + ")")
    if ok and not any(r.get("max_memory_gb") is not None for r in ok):
        print("  mem GiB n/a: no max_memory_gb in metrics.jsonl (pretrain.py logs it on CUDA only); "
              "smi GiB: nvidia-smi's peak for the process")
    for r in ok:
        rates = [(what, r[key]) for what, key in (("overall", "clips_per_s_overall"), ("steady", "clips_per_s_steady"))
                 if r.get(key)]
        print(f"[plan] {name[r['method']]}: 300 epochs x {args.videos:,} clips: "
              + ", ".join(f"{300 * args.videos / v / 3600:.2f} h at the {what} rate" for what, v in rates))

    checks = []
    print()
    print(f"[targets] one H100/H200, B64, 16x112, R(2+1)D-18, end to end from the cache, "
          f"UCF101-sized epoch (>= {TARGET_MIN_STEPS_PER_EPOCH} steps), <= {TARGET_MAX_WORKERS} workers")
    for r in results:
        if r.get("error"):
            continue
        gaps = target_setting_gaps(args, r.get("device"), steps_per_epoch)
        tgt = TARGET_CLIPS_PER_S[r["method"]]
        v = r["clips_per_s_overall"]
        checks.append({"method": r["method"], "target": f"overall >= {tgt:g} clips/s", "value": v,
                       "verdict": judge(v, v is not None and v >= tgt, gaps)})
        w = r["data_wait_share"]
        checks.append({"method": r["method"], "target": f"data wait < {100 * TARGET_DATA_WAIT:g} % of step time",
                       "value": w, "verdict": judge(w, w is not None and w < TARGET_DATA_WAIT, gaps)})
    for c in checks:
        val = f(c["value"], ".1f") if "clips" in c["target"] else f(c["value"] and 100 * c["value"], ".1f") + " %"
        print(f"  {name[c['method']]:9s} {c['target']:34s} measured {val:>10s}   {c['verdict']}")
    return checks


# The two settings: the target's (the default) and --smoke's; a flag given explicitly wins over both.
TARGET_SETTING = dict(n=2, k=4, videos=UCF101_TRAIN_SPLIT1, test_videos=UCF101_TEST_SPLIT1, video_frames=64,
                      height=128, width=171, batch_size=64, frames=16, crop=112, scales=None, backbone="r2plus1d_18",
                      queue_size=0, epochs=3, workers=8, log_every=20, device="auto", eval_every=10)
SMOKE_SETTING = dict(TARGET_SETTING, videos=16, test_videos=0, video_frames=12, height=40, width=53, batch_size=4,
                     frames=4, crop=16, scales=[16, 20], backbone="r2plus1d_10", queue_size=64, epochs=2, workers=1,
                     log_every=2, device="cpu")


@dataclass
class PretrainBenchFlags(Flags):
    """The flags of bench_pretrain.py. A flag whose default is None takes its value from the
    setting: the target's, or --smoke's (TARGET_SETTING, SMOKE_SETTING); --scales then follows
    --crop (112 128 144 scaled with it)."""

    config_file = False
    smoke: bool = flag(False, "CPU plumbing check: 16 videos of 12 frames at 40x53, r2plus1d_10, B4, 4x16 clips, "
                              "2 epochs, 1 worker (flags given explicitly still win)")
    methods: str = flag(",".join(METHODS), f"comma list of {', '.join(METHODS)}")
    n: int = flag(None, "temporal segments (target setting 2)", type=int, lo=1)
    k: int = flag(None, "alphas per segment (target setting 4)", type=int, lo=2)
    videos: int = flag(None, f"training videos in the generated cache (target setting {UCF101_TRAIN_SPLIT1}, "
                             f"UCF101 split 1)", type=int, lo=1)
    test_videos: int = flag(None, f"test videos in the generated cache: pretrain.py's pretext evaluation (target "
                                  f"setting {UCF101_TEST_SPLIT1}, UCF101 split 1; --smoke 0)", type=int, lo=0)
    eval_every: int = flag(None, "pretrain.py --eval-every (target setting 10, pretrain.py's: with 3 epochs one "
                                 "evaluation, after the last)", type=int, lo=0)
    save_every_min: float = flag(0.0, "pretrain.py --save-every-min: mid-epoch checkpoints (0 = at epoch ends only)",
                                 lo=0)
    video_frames: int = flag(None, "frames per generated video (target setting 64)", type=int, lo=1)
    height: int = flag(None, "generated frame height (target setting 128)", type=int, lo=16)
    width: int = flag(None, "generated frame width (target setting 171)", type=int, lo=16)
    jobs: int = flag(os.cpu_count() or 1, "processes writing the cache", lo=1)
    work_dir: str = flag(None, "keep the cache and runs here (a cache with the same parameters is reused); none: a "
                               "temporary folder, removed at the end")
    batch_size: int = flag(None, "target setting 64", type=int, lo=1)
    frames: int = flag(None, "clip frames (target setting 16)", type=int, lo=1)
    crop: int = flag(None, "target setting 112", type=int, lo=8)
    scales: list = flag(None, "target setting 112 128 144 (scaled with --crop)", type=int, nargs="+", lo=16)
    backbone: str = flag(None, "target setting r2plus1d_18")
    queue_size: int = flag(None, "MoCo queue (target setting 0: pretrain.py's, 65536)", type=int, lo=0,
                           note="0 = pretrain.py's default")
    epochs: int = flag(None, "target setting 3 (>= 2: steady state excludes the first)", type=int, lo=2,
                       note="steady state excludes the first epoch")
    workers: int = flag(None, "DataLoader workers (target setting 8)", type=int, lo=0)
    log_every: int = flag(None, "metrics window in steps (target setting pretrain.py's, 20)", type=int, lo=1)
    device: str = flag(None, "target setting auto", choices=("auto", "cuda", "cpu"))
    compile: bool = flag(False, "pretrain.py --compile (the encoders' forward_features)")
    seed: int = flag(0, "seed of the generated cache and of pretrain.py", lo=0)
    pretrain_args: str = flag("", "more flags for pretrain.py, one string")
    timeout: float = flag(0.0, "seconds per pretrain run (0 = none)", lo=0, note="0 = none")
    json: str = flag(None, "write the results here")

    def __post_init__(self):
        for k, v in (SMOKE_SETTING if self.smoke else TARGET_SETTING).items():
            if getattr(self, k) is None:
                setattr(self, k, list(v) if isinstance(v, list) else v)
        if self.scales is None:
            self.scales = sorted({round(self.crop * s / 112) for s in (112, 128, 144)})
        super().__post_init__()

    @property
    def method_list(self) -> list[str]:
        """--methods as a list."""
        return [m for m in self.methods.split(",") if m]

    def check(self) -> None:
        for m in self.method_list:
            if m not in METHODS:
                raise UsageError("--methods", self.methods, f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if self.videos < self.batch_size:
            raise UsageError("--videos", self.videos, f"must be >= --batch-size {self.batch_size} (no full batch "
                                                      f"otherwise)")


def parse_args(argv=None) -> PretrainBenchFlags:
    return parse(PretrainBenchFlags, argv, description=__doc__, prog="bench_pretrain.py")


def main(argv=None) -> int:
    args = parse_args(argv)
    steps_per_epoch = args.videos // args.batch_size
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    work.mkdir(parents=True, exist_ok=True)
    out = {"env": {"python": platform.python_version(), "host": platform.node(), "cpus": os.cpu_count(),
                   "gpu": None},
           "config": {k: v for k, v in vars(args).items() if k != "json"}, "steps_per_epoch": steps_per_epoch,
           "targets": {"clips_per_s": TARGET_CLIPS_PER_S, "data_wait_share": TARGET_DATA_WAIT,
                       "max_workers": TARGET_MAX_WORKERS, "min_steps_per_epoch": TARGET_MIN_STEPS_PER_EPOCH},
           "cache": None, "results": [], "checks": []}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True)
        out["env"]["gpu"] = q.stdout.strip() or None
    print("[env] " + json.dumps(out["env"]))

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, default=str))

    failed = False
    try:
        cache_dir = work / "cache"
        out["cache"] = build_synthetic_cache(cache_dir, args.videos, args.video_frames, args.height, args.width,
                                             args.jobs, seed=args.seed, test_videos=args.test_videos)
        print(f"[cache] {args.videos} training videos: {steps_per_epoch} steps/epoch at batch {args.batch_size}"
              f"{' (UCF101 split 1: 149 at 64)' if args.batch_size == 64 else ''}")
        save()
        for method in args.method_list:
            run_dir = work / "runs" / f"{method}-{args.n}"
            if run_dir.exists():
                shutil.rmtree(run_dir)
            r = run_pretrain(method, args, cache_dir, run_dir)
            out["results"].append(r)
            failed |= bool(r.get("error"))
            if not r.get("error"):
                print(f"[run] {method}: {r['steps']} steps in {r['wall_s']:.1f} s "
                      f"({r['clips_per_s_overall']:.1f} clips/s overall), final loss {f(r['final_loss'], '.3f')}")
            save()
        out["checks"] = report(out["results"], args, steps_per_epoch)
        save()
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(f"[bench] wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
