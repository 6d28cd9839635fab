#!/usr/bin/env python
"""One GPU smoke test: the product's CUDA path checked and measured in at most 8 minutes on one
H100/H200, with one JSON verdict and a short text summary.

    python benchmarks/gpu_smoke.py --out gpu_smoke/                 # one GPU, <= 8 minutes
    python benchmarks/gpu_smoke.py --out /tmp/smoke --dry-run       # the same steps on CPU, tiny, ~2 minutes
    bash benchmarks/gpu_smoke.sh [flags]                            # the same, --out gpu_smoke by default

Every check runs the product's own commands (train/pretrain.py, train/finetune.py,
train/evaluate.py, preprocess/make_demo.py, preprocess/extract_masks.py and the benchmarks
benchmarks/bench_train_step.py, benchmarks/bench_pretrain.py) as subprocesses, on data it generates
(the GPU box has no datasets), and prints PASS / FAIL with its figure:

  env          the imports the project needs (what is missing is named, with the pip command), the
               device, torch and CUDA versions
  data         the demo generator (a small demo dataset) and extract_masks.py's frame cache
  sanitizer    a tiny MAC-SC pretraining (prefetch side stream, background checkpoints written
               mid-epoch) under the CUDA stream sanitizer (TORCH_CUDA_SANITIZER=1): no data race
  pretrain     bench_pretrain.py on a UCF101-sized epoch (9,537 training and 3,783 test videos,
               149 steps at B64), 2 epochs: persistent workers, the epoch rollover, background and
               mid-epoch checkpoints, the pretext evaluation; clips/s overall and steady, the
               data-wait share, the checkpoint pause, allocated memory flat across epochs; the
               targets (MAC-S-2 >= 1000, MAC-SC-2 >= 700 clips/s overall, data wait < 5 %) are
               reported as "target" lines, apart from the verdict
  demo         a demo pretraining with --compile stopped by --max-steps mid-epoch, then resumed
               with --resume to its end (recompiles counted in both runs)
  finetune     finetune.py from that checkpoint and evaluate.py on the test videos, on CUDA
  step         the product's MAC-SC step at B64 16x112 (bench_train_step.py), eager and compiled:
               clips/s, the graphs torch.compile builds (dynamo's counter) and the recompiles
               TORCH_LOGS=recompiles reports; none may be built while timed

Written to --out: gpu_smoke.json (the verdict, every check with its figure and details, the
environment), gpu_smoke.txt (one line per check), logs/<check>*.log (each command's output).
The work folder (caches, runs; a few GB) is --out/work, removed at the end unless --keep.
Checks share a time budget (--budget-min, default 8): a check that cannot start in what is left
is SKIPped, and every command is stopped at its share. Exit status 0 when every check passed, 1
otherwise.

--dry-run runs the same steps on the CPU at tiny sizes (about two minutes on 2 cores; the test
suite runs it): the sanitizer needs CUDA (the run goes without it), torch.compile uses dynamo's
eager backend (MAC_COMPILE_BACKEND=eager: the same graphs and recompiles, no C++ compilation),
and the targets are n/a.

Run from the repository root (``pip install -e .`` not needed).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):   # run as `python benchmarks/gpu_smoke.py`: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.flags import Flags, flag, parse

REPO = Path(__file__).resolve().parents[1]
# run in this order: the measurements a short budget must not lose first, the step benchmark
# (two cold inductor compiles at B64) last
CHECKS = ("data", "sanitizer", "pretrain", "demo", "finetune", "step")
# module -> pip name; every tool needs the first group, the demo generator and extract_masks.py the second
NEEDED = {"numpy": "numpy", "h5py": "h5py", "numba": "numba", "simplejpeg": "simplejpeg", "joblib": "joblib",
          "tqdm": "tqdm", "matplotlib": "matplotlib"}
VIDEO = {"future": "future", "ffmpeg": "ffmpeg-python", "imageio_ffmpeg": "imageio-ffmpeg"}
NEEDS_VIDEO = ("data",)                                      # the check that makes and decodes videos
NEEDS_DEMO = ("sanitizer", "demo", "finetune")               # the checks that read the demo cache
RECOMPILE = re.compile(r"Recompiling function (\S+)")


@dataclass
class SmokeFlags(Flags):
    """The flags of gpu_smoke.py."""

    config_file = False
    out: str = flag(None, "folder for gpu_smoke.json, gpu_smoke.txt and logs/", required=True)
    dry_run: bool = flag(False, "the same steps on the CPU at tiny sizes (tests; about two minutes)")
    budget_min: float = flag(8.0, "minutes for all checks together (each command is stopped at its share)", lo=0,
                             lo_open=True)
    checks: str = flag(",".join(CHECKS), f"comma list of {', '.join(CHECKS)} (env always runs)")
    step_tasks: str = flag("mac_sc", "bench_train_step.py --tasks (mac_s, mac_sc)")
    pretrain_methods: str = flag("mac-sc", "bench_pretrain.py --methods (mac-s, mac-sc; each adds ~2 minutes)")
    videos: int = flag(None, "bench_pretrain.py --videos (default: UCF101 split 1's 9,537; --dry-run 16)",
                       type=int, lo=1)
    workers: int = flag(8, "DataLoader workers of the pretraining runs (the targets allow <= 8)", lo=0)
    keep: bool = flag(False, "keep the work folder (caches, runs) under --out")

    def check(self) -> None:
        from core.errors import UsageError
        bad = [c for c in self.check_list if c not in CHECKS]
        if bad:
            raise UsageError("--checks", self.checks, f"unknown check(s) {', '.join(bad)}; choose from {', '.join(CHECKS)}")

    @property
    def check_list(self) -> list[str]:
        return [c for c in self.checks.split(",") if c]


@dataclass
class Check:
    name: str
    status: str = "SKIP"             # PASS | FAIL | SKIP
    figure: str = ""
    seconds: float = 0.0
    kind: str = "check"              # check (counts for the verdict) | target (reported)
    details: dict = dataclasses.field(default_factory=dict)
    logs: list = dataclasses.field(default_factory=list)


class Smoke:
    """The run: output folder, time budget, subprocesses, results."""

    def __init__(self, args: SmokeFlags):
        self.args = args
        self.dry = args.dry_run
        self.out = Path(args.out).resolve()
        self.work = self.out / "work"
        self.logs = self.out / "logs"
        for p in (self.work, self.logs):
            p.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        self.deadline = self.t0 + 60.0 * args.budget_min
        self.results: list[Check] = []
        self.env: dict = {}
        self.demo_cache = self.work / "demo" / "cache"
        self.demo_data = self.work / "demo" / "data"
        self.base_env = {**os.environ, "PYTHONUNBUFFERED": "1",
                         "TORCHINDUCTOR_CACHE_DIR": str(self.work / ".torchinductor")}
        self.base_env.pop("TORCH_CUDA_SANITIZER", None)
        if self.dry:
            self.base_env.update(MAC_COMPILE_BACKEND="eager", OMP_NUM_THREADS=self.base_env.get("OMP_NUM_THREADS", "2"))

    def remaining(self) -> float:
        return self.deadline - time.time()

    def run(self, check: Check, label: str, cmd: list[str], cap: float, env: dict | None = None
            ) -> tuple[int | str, str]:
        """Run `cmd` from the repository root, output to logs/<label>.log; stopped after `cap`
        seconds or at the budget's end. Returns (exit status or "timeout", output)."""
        cmd = [str(x) for x in cmd]
        log = self.logs / f"{label}.log"
        check.logs.append(str(log.relative_to(self.out)))
        timeout = max(5.0, min(cap, self.remaining()))
        print(f"[smoke] {label}: {' '.join(cmd)}", flush=True)
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env={**self.base_env, **(env or {})},
                                    start_new_session=True)
            try:
                rc: int | str = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                rc = "timeout"
        text = log.read_text(errors="replace")
        if rc == "timeout":
            text += f"\n[smoke] stopped after {timeout:.0f} s\n"
        return rc, text

    def py(self, script: str, *args) -> list[str]:
        return [sys.executable, str(REPO / script), *map(str, args)]


def _tail(text: str, n: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _fail(check: Check, what: str, rc, text: str) -> Check:
    check.status, check.figure = "FAIL", f"{what} (exit {rc})"
    check.details["output_tail"] = _tail(text, 25)
    return check


# --------------------------------------------------------------------------------------------
# the checks


def check_env(s: Smoke) -> Check:
    """Imports, device and versions; what is missing is named with its pip command."""
    c = Check("env")
    pins = {}
    req = REPO / "requirements.txt"
    if req.exists():
        for line in req.read_text().splitlines():
            m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
            if m:
                pins[m.group(1).lower()] = line.strip()
    missing, versions = [], {}
    for mod, pip in {"torch": "torch", **NEEDED, **VIDEO}.items():
        try:
            m = importlib.import_module(mod)
            versions[mod] = getattr(m, "__version__", "?")
        except Exception as e:          # noqa: BLE001 - any import failure is "missing"
            missing.append((mod, pip, f"{type(e).__name__}: {e}"))
    c.details["versions"] = versions
    s.env.update(python=platform.python_version(), host=platform.node(), cpus=os.cpu_count(), versions=versions)
    if missing:
        c.details["missing"] = [{"module": m, "pip": p, "error": e} for m, p, e in missing]
        s.env["missing"] = [m for m, _, _ in missing]
        cmd = "pip install " + " ".join(pins.get(p.lower(), p) for _, p, _ in missing if p != "torch")
        c.details["install"] = cmd
    import_ok = not missing
    device = None
    if "torch" in versions:
        import torch
        s.env["torch"] = torch.__version__
        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
            s.env.update(device=device, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                         capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                         bf16=torch.cuda.is_bf16_supported(), gpus=torch.cuda.device_count())
        else:
            s.env["device"] = "cpu"
    need_gpu = not s.dry
    if need_gpu and not device:
        c.status, c.figure = "FAIL", "no CUDA device (torch.cuda.is_available() is False); --dry-run runs on the CPU"
    elif not import_ok:
        c.status = "FAIL"
        c.figure = (f"missing {', '.join(f'{m} ({p})' for m, p, _ in missing)}; install: {c.details['install']}")
    else:
        c.status = "PASS"
        c.figure = (f"{device or 'cpu (dry run)'}, torch {s.env.get('torch')}"
                    + (f", CUDA {s.env['cuda']}" if device else "") + f", {len(versions)} imports")
    return c


def check_data(s: Smoke) -> Check:
    """The demo generator and extract_masks.py: the demo data every later check reads."""
    c = Check("data")
    size = ["--classes", 2, "--groups", 3, "--clips", 2, "--frames", 16] if s.dry else \
        ["--classes", 4, "--groups", 6, "--clips", 2, "--frames", 32]
    rc, text = s.run(c, "data_make_demo", s.py("preprocess/make_demo.py", "--data-root", s.demo_data, *size), 120)
    if rc != 0:
        return _fail(c, "make_demo.py failed", rc, text)
    rc, text = s.run(c, "data_extract", s.py("preprocess/extract_masks.py", "--dataset", "demo", "--data-root",
                                             s.demo_data, "--cache-dir", s.demo_cache, "--workers",
                                             1 if s.dry else min(8, os.cpu_count() or 1)), 180)
    if rc != 0:
        return _fail(c, "extract_masks.py failed", rc, text)
    m = re.search(r"ok (\d+), failed (\d+)", text)
    c.status = "PASS" if m and int(m.group(2)) == 0 else "FAIL"
    c.figure = f"{m.group(1) if m else '?'} demo videos generated and cached"
    c.details["videos"] = int(m.group(1)) if m else None
    return c


def _demo_pretrain_args(s: Smoke, run_dir: Path, *extra) -> list:
    if s.dry:
        size = ["--frames", 4, "--crop", 16, "--scales", 16, 20, "--backbone", "r2plus1d_10", "--batch-size", 4,
                "--queue-size", 16, "--workers", 0, "--log-every", 1]
    else:   # the demo preset's model and clips (configs/demo/pretrain.json), MAC-SC
        size = ["--config", REPO / "configs/demo/pretrain.json", "--queue-size", 64, "--log-every", 2,
                "--workers", min(2, s.args.workers)]
    return ["--dataset", "demo", "--cache-dir", s.demo_cache, "--method", "mac-sc", *size, "--no-progress",
            "--run-dir", run_dir, *extra]


def check_sanitizer(s: Smoke) -> Check:
    """A tiny MAC-SC pretraining under the CUDA stream sanitizer: the prefetch stream, the
    transform, the step and the background checkpoint snapshots, with a mid-epoch save."""
    c = Check("sanitizer")
    run = s.work / "sanitizer"
    shutil.rmtree(run, ignore_errors=True)
    steps = 3 if s.dry else 5           # across the end of epoch 0 (the rollover, the epoch checkpoint)
    cmd = s.py("train/pretrain.py", *_demo_pretrain_args(s, run, "--epochs", 2, "--max-steps", steps, "--eval-every", 0,
                                                          "--save-every-min", "1e-9", "--no-compile"))
    if not s.dry:   # the sanitizer traces every kernel: workers off keeps its run short
        cmd += ["--workers", "1"]
    rc, text = s.run(c, "sanitizer", cmd, 180, env=None if s.dry else {"TORCH_CUDA_SANITIZER": "1"})
    races = text.count("CSAN detected a possible data race")
    c.details.update(races=races, sanitizer=not s.dry)
    if rc != 0 or races:
        return _fail(c, f"{races} data race(s) reported by the sanitizer" if races else "the sanitized run failed",
                     rc, text)
    done = max([r.get("step", 0) for r in _records(run) if r.get("kind") == "train"] or [0])
    saves = sum(1 for r in _records(run) if r.get("kind") == "checkpoint_written")
    c.details.update(steps=done, checkpoints_written=saves)
    c.status = "PASS" if done == steps and saves >= 2 else "FAIL"
    c.figure = (f"no data race in {done} MAC-SC steps, an epoch rollover and {saves} background checkpoint writes "
                f"(CSAN)" if not s.dry else f"{done} MAC-SC steps, {saves} background checkpoint writes (dry run: "
                f"the sanitizer needs CUDA, the run went without it)")
    return c


def check_step(s: Smoke) -> Check:
    """bench_train_step.py: the product's step eager and compiled; graphs and recompiles."""
    c = Check("step")
    out = s.work / "step.json"
    variants = "fp32,bf16_cl3d_compile" if s.dry else "bf16_cl3d,bf16_cl3d_compile"
    cmd = s.py("benchmarks/bench_train_step.py", "--tasks", s.args.step_tasks, "--mac-variants", variants,
               "--skip-interop", "--out", out)
    cmd += ["--smoke", "--backbone", "r2plus1d_10", "--size", 16] if s.dry else ["--warmup", 3, "--steps", 10]
    rc, text = s.run(c, "step", cmd, 240, env={"TORCH_LOGS": "recompiles"})
    if rc != 0 or not out.exists():
        return _fail(c, "bench_train_step.py failed", rc, text)
    res = json.loads(out.read_text())["results"]
    recompiles = RECOMPILE.findall(text)
    c.details.update(results=[{k: r.get(k) for k in ("task", "variant", "batch", "frames", "size", "clips_per_s",
                                                      "step_ms", "warmup_s", "peak_mem_gib", "graphs_warmup",
                                                      "graphs_timed", "error")} for r in res],
                     recompile_lines=len(recompiles))
    problems, parts = [], []
    for r in res:
        if r.get("error"):
            problems.append(f"{r['task']} {r['variant']}: {r['error'][:200]}")
            continue
        parts.append(f"{r['task']} {r['variant']} {r['clips_per_s']:.1f} clips/s")
        if r["variant"].endswith("compile"):
            limit = 2 if r["task"] == "mac_sc" else 1        # query encoder (+ the key encoder's half batch)
            parts[-1] += f" ({r['graphs_warmup']} graph(s), {r['graphs_timed']} rebuilt while timed)"
            if r["graphs_timed"] or (r["graphs_warmup"] or 0) > limit:
                problems.append(f"{r['task']} compiled: {r['graphs_warmup']} graphs in warmup (<= {limit}), "
                                f"{r['graphs_timed']} while timed (0)")
    eager = {r["task"]: r["clips_per_s"] for r in res if not r["variant"].endswith("compile") and r.get("clips_per_s")}
    for r in res:
        if r["variant"].endswith("compile") and r.get("clips_per_s") and eager.get(r["task"]):
            parts.append(f"compiled/eager {r['clips_per_s'] / eager[r['task']]:.2f}x")
    shape = f"B{res[0]['batch']} {res[0]['frames']}x{res[0]['size']}" if res else ""
    c.status = "FAIL" if problems or not res else "PASS"
    c.figure = f"{shape}: " + "; ".join(parts) + f"; {len(recompiles)} recompile(s) logged" + \
        (f"; PROBLEMS: {'; '.join(problems)}" if problems else "")
    return c


def check_pretrain(s: Smoke) -> list[Check]:
    """bench_pretrain.py end to end on a UCF101-sized epoch, with evaluation and mid-epoch saves."""
    c = Check("pretrain")
    out = s.work / "pretrain_bench.json"
    cmd = s.py("benchmarks/bench_pretrain.py", "--methods", s.args.pretrain_methods, "--epochs", 2, "--eval-every", 2,
               "--work-dir", s.work / "bench", "--json", out, "--jobs", os.cpu_count() or 1)
    if s.dry:
        cmd += ["--smoke", "--test-videos", 4, "--save-every-min", "1e-9"]
    else:
        cmd += ["--save-every-min", "0.15", "--workers", s.args.workers]
    if s.args.videos:
        cmd += ["--videos", s.args.videos]
    rc, text = s.run(c, "pretrain", cmd, 300)
    if not out.exists():
        return [_fail(c, "bench_pretrain.py failed", rc, text)]
    rep = json.loads(out.read_text())
    results = rep.get("results", [])
    c.details.update(cache=rep.get("cache"), steps_per_epoch=rep.get("steps_per_epoch"), results=[
        {k: r.get(k) for k in ("method", "device", "returncode", "wall_s", "steps", "epochs", "clips_per_s_overall",
                               "clips_per_s_loop", "clips_per_s_steady", "data_wait_share", "data_wait_share_steady",
                               "step_time_s_steady", "checkpoint_s", "checkpoint_s_max", "checkpoint_write_s",
                               "checkpoints", "checkpoints_mid_epoch", "first_step_s", "max_memory_gb",
                               "memory_gb_epoch_end", "memory_growth_gb", "evaluations", "eval_s", "eval_videos",
                               "eval_clips_per_s", "test_acc", "gpu_mem_nvsmi_gib", "error")} for r in results])
    if rc != 0 or not results:
        return [_fail(c, "bench_pretrain.py failed", rc, text)]
    problems, parts = [], []
    for r in results:
        name = {"mac-s": "MAC-S-2", "mac-sc": "MAC-SC-2"}.get(r["method"], r["method"])
        if r.get("error"):
            problems.append(f"{name}: {r['error'][:300]}")
            continue
        ov, st, wait = r.get("clips_per_s_overall"), r.get("clips_per_s_steady"), r.get("data_wait_share")
        parts.append(f"{name} {ov:.1f} clips/s overall, {st or 0:.1f} steady, data wait {100 * (wait or 0):.1f} %, "
                     f"checkpoint pause max {r.get('checkpoint_s_max') or 0:.2f} s ({r.get('checkpoints_mid_epoch')} "
                     f"mid-epoch), {r.get('evaluations')} evaluation(s) {r.get('eval_s') or 0:.1f} s")
        if not r.get("evaluations"):
            problems.append(f"{name}: no evaluation ran")
        if not r.get("checkpoints_mid_epoch"):
            problems.append(f"{name}: no mid-epoch checkpoint")
        if (r.get("epochs") or 0) < 2:
            problems.append(f"{name}: no epoch rollover ({r.get('epochs')} epoch(s))")
        mem = r.get("memory_gb_epoch_end") or []
        growth = r.get("memory_growth_gb")
        if mem:
            parts[-1] += f", allocated {' -> '.join(f'{m:.2f}' for m in mem)} GiB, peak {r.get('max_memory_gb')} GiB"
            if growth is not None and growth > max(0.25, 0.05 * mem[0]):
                problems.append(f"{name}: allocated memory grows {growth:.2f} GiB from epoch to epoch")
        elif not s.dry:
            problems.append(f"{name}: no memory_gb records (CUDA only)")
    spe = rep.get("steps_per_epoch")
    c.status = "FAIL" if problems else "PASS"
    c.figure = f"{spe} steps/epoch x 2 epochs: " + "; ".join(parts) + (f"; PROBLEMS: {'; '.join(problems)}"
                                                                        if problems else "")
    out_checks = [c]
    for t in rep.get("checks", []):
        v = t["verdict"]
        tc = Check(f"target {t['method']}: {t['target']}", kind="target",
                   status="PASS" if v == "PASS" else "FAIL" if v == "FAIL" else "SKIP")
        val = t.get("value")
        tc.figure = (f"{val:.1f} clips/s" if "clips" in t["target"] else f"{100 * val:.1f} %") if val is not None \
            else "n/a"
        tc.figure += "" if tc.status != "SKIP" else f" ({v})"
        out_checks.append(tc)
    return out_checks


def check_demo(s: Smoke) -> Check:
    """Pretraining with --compile stopped by --max-steps mid-epoch, resumed to its end."""
    c = Check("demo")
    run = s.work / "demo" / "pretrain"
    shutil.rmtree(run, ignore_errors=True)
    epochs = 2
    base = _demo_pretrain_args(s, run, "--epochs", epochs, "--eval-every", 1, "--compile")
    env = {"TORCH_LOGS": "recompiles"}
    rc, text1 = s.run(c, "demo_pretrain", s.py("train/pretrain.py", *base, "--max-steps", 3 if s.dry else 5), 150, env)
    if rc != 0:
        return _fail(c, "pretrain.py --compile --max-steps failed", rc, text1)
    import torch
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    stopped = {"epoch": ck["epoch"], "batch": ck["batch"], "step": ck["step"], "partial": ck["partial"]}
    rc, text2 = s.run(c, "demo_resume", s.py("train/pretrain.py", *base, "--resume"), 150, env)
    if rc != 0:
        return _fail(c, "pretrain.py --resume failed", rc, text2)
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    recs = _records(run)
    per_epoch = [r["step"] for r in recs if r.get("kind") == "epoch" and not r.get("partial")]
    first = [r for r in recs if r.get("kind") == "first_step"]
    rec1, rec2 = len(RECOMPILE.findall(text1)), len(RECOMPILE.findall(text2))
    c.details.update(stopped=stopped, final={"epoch": ck["epoch"], "step": ck["step"]}, epoch_steps=per_epoch,
                     recompiles=[rec1, rec2], first_step_s=[r.get("seconds") for r in first],
                     test_acc=ck["metrics"].get("test_acc"))
    problems = []
    if not (stopped["partial"] and stopped["batch"] > 0):
        problems.append(f"the --max-steps checkpoint is not mid-epoch: {stopped}")
    if ck["epoch"] != epochs or ck.get("partial") or len(per_epoch) != epochs or ck["step"] != per_epoch[-1]:
        problems.append(f"the resumed run did not end at epoch {epochs}: {ck['epoch']}, step {ck['step']}")
    # the query encoder (train), the key encoder's half batch, the query encoder in eval mode
    if max(rec1, rec2) > 2:
        problems.append(f"recompiles {rec1}, {rec2} (<= 2: three static graphs)")
    c.status = "FAIL" if problems else "PASS"
    c.figure = (f"stopped at epoch {stopped['epoch']} batch {stopped['batch']} (step {stopped['step']}), resumed to "
                f"epoch {ck['epoch']} step {ck['step']}; recompiles {rec1} + {rec2}; first step "
                f"{', '.join(f'{x:.1f}' for x in c.details['first_step_s'] if x is not None)} s"
                + (f"; PROBLEMS: {'; '.join(problems)}" if problems else ""))
    return c


def check_finetune(s: Smoke) -> Check:
    """finetune.py from the demo pretraining (else a random init), evaluate.py on its test videos."""
    c = Check("finetune")
    init = s.work / "demo" / "pretrain" / "last.pt"
    ft, ev = s.work / "demo" / "finetune", s.work / "demo" / "evaluate"
    shutil.rmtree(ft, ignore_errors=True)
    if s.dry:
        size = ["--frames", 4, "--crop", 16, "--scales", 16, 20, "--batch-size", 4, "--workers", 0, "--log-every", 1]
        if not init.exists():
            size += ["--backbone", "r2plus1d_10"]
    else:
        size = ["--config", REPO / "configs/demo/finetune.json", "--workers", min(2, s.args.workers)]
    rc, text = s.run(c, "finetune", s.py("train/finetune.py", "--dataset", "demo", "--cache-dir", s.demo_cache,
                                         "--init", init if init.exists() else "random", *size, "--epochs", 2,
                                         "--val-every", 1, "--no-progress", "--run-dir", ft), 120)
    if rc != 0:
        return _fail(c, "finetune.py failed", rc, text)
    ev_args = ["--num-clips", 2, "--batch-size", 2, "--workers", 0] if s.dry else \
        ["--config", REPO / "configs/demo/evaluate.json"]
    rc, text = s.run(c, "evaluate", s.py("train/evaluate.py", "--checkpoint", ft / "best.pt", *ev_args, "--out-dir", ev),
                     120)
    if rc != 0 or not (ev / "metrics.json").exists():
        return _fail(c, "evaluate.py failed", rc, text)
    m = json.loads((ev / "metrics.json").read_text())
    best = [r for r in _records(ft) if r.get("kind") == "final"]
    c.details.update(evaluate=m["metrics"], device=m.get("device"), init=str(init) if init.exists() else "random",
                     finetune_best=best[-1].get("best") if best else None)
    on_gpu = str(m.get("device", "")).startswith("cuda")
    c.status = "PASS" if (on_gpu or s.dry) and m["metrics"]["num_videos"] > 0 else "FAIL"
    val = ((best[-1].get("best") or {}) if best else {}).get("val_acc")
    c.figure = (f"finetuned from {'the demo pretraining' if init.exists() else 'random'} for 2 epochs, best val_acc "
                f"{'n/a' if val is None else format(val, '.3f')}; evaluate.py on {m.get('device')}: "
                f"{m['metrics']['num_videos']} videos, video top-1 {m['metrics']['video_top1']:.1f} %"
                + ("" if on_gpu or s.dry else " (NOT on CUDA)"))
    return c


def _records(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


# minimum seconds a check needs to be worth starting (GPU; the dry run's are far below)
MIN_SECONDS = {"data": 20, "sanitizer": 30, "step": 90, "pretrain": 120, "demo": 60, "finetune": 30}
RUNNERS = {"data": check_data, "sanitizer": check_sanitizer, "step": check_step, "pretrain": check_pretrain,
           "demo": check_demo, "finetune": check_finetune}


def main(argv=None) -> int:
    args = parse(SmokeFlags, argv, description=__doc__, prog="gpu_smoke.py")
    s = Smoke(args)
    print(f"[smoke] {'dry run (CPU, tiny sizes)' if s.dry else 'GPU'}: budget {args.budget_min:g} min, out {s.out}",
          flush=True)

    def report(c: Check) -> None:
        s.results.append(c)
        tag = "" if c.kind == "check" else "(target) "
        print(f"[smoke] {c.status:4s} {tag}{c.name}: {c.figure}" + (f"  [{c.seconds:.0f} s]" if c.seconds else ""),
              flush=True)
        write(s)

    t = time.time()
    env = check_env(s)
    env.seconds = time.time() - t
    report(env)
    missing = set(s.env.get("missing", []))
    for name in args.check_list:
        c = Check(name)
        needs = set(NEEDED) | {"torch"} | (set(VIDEO) if name in NEEDS_VIDEO else set())
        if env.status == "FAIL" and (needs & missing or not s.dry and s.env.get("device") == "cpu"):
            c.figure = "not run: " + (f"missing {', '.join(sorted(needs & missing))}" if needs & missing else "no GPU")
            report(c)
            continue
        if name in NEEDS_DEMO and not s.demo_cache.exists():
            c.figure = "not run: no demo data (the data check did not run, or failed)"
            report(c)
            continue
        need = 5 if s.dry else MIN_SECONDS[name]
        if s.remaining() < need:
            c.figure = f"not run: {max(0, s.remaining()):.0f} s of the budget left (needs >= {need} s)"
            report(c)
            continue
        t = time.time()
        try:
            got = RUNNERS[name](s)
        except Exception as e:         # noqa: BLE001 - one broken check must not lose the others
            got = Check(name, "FAIL", f"{type(e).__name__}: {e}")
        got = got if isinstance(got, list) else [got]
        got[0].seconds = time.time() - t          # the target lines come with their check
        for g in got:
            report(g)
    verdict = write(s, final=True)
    if not args.keep:
        shutil.rmtree(s.work, ignore_errors=True)
    print(f"[smoke] verdict {verdict} in {time.time() - s.t0:.0f} s: {s.out / 'gpu_smoke.json'}, "
          f"{s.out / 'gpu_smoke.txt'}", flush=True)
    return 0 if verdict == "PASS" else 1


def write(s: Smoke, final: bool = False) -> str:
    """gpu_smoke.json and gpu_smoke.txt (rewritten after every check: a killed run keeps its results)."""
    checks = [c for c in s.results if c.kind == "check"]
    failed = [c.name for c in checks if c.status == "FAIL"]
    skipped = [c.name for c in checks if c.status == "SKIP"]
    verdict = "FAIL" if failed else ("PASS" if final and not skipped else "INCOMPLETE")
    targets = [c for c in s.results if c.kind == "target"]
    doc = {"verdict": verdict, "failed": failed, "skipped": skipped, "dry_run": s.dry,
           "targets_met": (all(c.status == "PASS" for c in targets) if targets and all(c.status != "SKIP" for c in targets)
                           else None),
           "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(s.t0)),
           "seconds": round(time.time() - s.t0, 1), "budget_s": 60.0 * s.args.budget_min, "env": s.env,
           "checks": [dataclasses.asdict(c) for c in s.results]}
    (s.out / "gpu_smoke.json").write_text(json.dumps(doc, indent=2, default=str))
    lines = [f"gpu_smoke {'--dry-run ' if s.dry else ''}{doc['started']} on {s.env.get('device', '?')} "
             f"(torch {s.env.get('torch', '?')}): {verdict} in {doc['seconds']:.0f} s"]
    lines += [f"{c.status:4s} {'(target) ' if c.kind == 'target' else ''}{c.name}: {c.figure}"
              + (f"  [{c.seconds:.0f} s]" if c.seconds else "") for c in s.results]
    (s.out / "gpu_smoke.txt").write_text("\n".join(lines) + "\n")
    return verdict


if __name__ == "__main__":
    sys.exit(main())
