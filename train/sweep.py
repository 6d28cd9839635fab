"""The paper's ablations as one command: a grid of settings, each cell pretrain -> finetune ->
10-clip test (+ retrieval), collected into a paper-style table; and the pretraining-efficiency
curve (supplementary Figure 1).

    python train/sweep.py --preset demo --grid k=2,3 lambda=10,30          # a 2x2 grid on the demo
    python train/sweep.py --preset ucf101 --dataset ucf101 --grid k=2,3,4,5,6 --seeds 0,1,2
    python train/sweep.py --preset ucf101 --grid loss=ce,mse,mse-n --retrieval --parallel 4
    python train/sweep.py --preset demo --grid colour-jitter=false,true greyscale=false,true \\
        pretrain.method=mac-s                                            # Table 2, on the demo
    python train/sweep.py --preset demo --efficiency-epochs 5,15,30 pretrain.epochs=30   # Figure 1
    python train/sweep.py --preset demo --grid k=2,3 --table-only         # rebuild the table
    bash run_all.sh sweep --preset demo --grid k=2,3                      # the same, from run_all

Grid keys are the scripts' flags: a plain key (k, lambda, m, n, loss, method, strides,
colour-jitter, ...) is a pretraining flag, `backbone` goes to pretraining and finetuning, and a
qualified key (finetune.lr, evaluate.num-clips) to that stage; `true`/`false` are switches.
Overrides `stage.flag=value` (as in run_all.sh; `train.` = pretrain and finetune) apply to every
cell. Each cell runs the preset's stage files (configs/<preset>/<stage>.json), then the cell's
settings, then the overrides, in its own directory named by its settings
(<sweep>/cells/k2_lambda10_seed0/{pretrain,finetune,evaluate,retrieve}); a stage that finished
is never rerun and an interrupted one resumes (--resume), so rerunning the same command
continues a sweep. Cells run one after another, or --parallel N at once (one GPU each through
CUDA_VISIBLE_DEVICES when there are GPUs). A failed cell is reported and the others go on.

Data: frames are extracted once for the dataset; a mask set is extracted only where a cell
reads masks from the cache (--mask-source cache), once per (lambda, m) with every stride any
cell draws; the summary says how many were already cached and reused. The default mask source,
clip, computes the reference's masks per clip and needs no mask set.

Outputs in the sweep directory: table.md / table.csv (one row per setting, mean +- std over
seeds, the validation split's centre-clip accuracy at the end of the finetuning, which is what a
choice between the rows is made on when the preset has a validation split (the demo's), beside
the test split's video top-1, which is reported, not chosen on; the paper's UCF101 number beside
settings the paper reports; provenance of every cell: run dir, git commit, cache manifest hash), sweep.json (every cell's status and results), and for
--efficiency-epochs efficiency.png / efficiency.csv (accuracy against pretraining epochs, the
random-init line drawn).
"""
from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):   # run as `python train/sweep.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import atomic, presets
from core.errors import UsageError, exit_with
from core.flags import Flags, flag, parse
from core.presets import Override, flag_args, reaches

REPO = Path(__file__).resolve().parents[1]
STAGES = ("pretrain", "finetune", "evaluate", "retrieve")
# the stages a sweep cell runs (and extract, run once for all cells) that a qualified grid key or
# an override may name; `train.` reaches pretrain and finetune (core/presets.py)
OVERRIDE_STAGES = ("extract", "pretrain", "finetune", "evaluate", "retrieve", "train")
BOTH = ("backbone",)          # plain grid keys that go to pretraining and finetuning

# The paper's UCF101 top-1 (supplementary Tables 2, 4-8; MAC-SC-2, R(2+1)D-18, lambda 30, m 0.5,
# k 4, cross-entropy unless the row says otherwise): {table: (grid keys, {values: accuracy})}.
PAPER = {
    "Table 2": (("colour-jitter", "greyscale"), {("false", "false"): 76.6, ("true", "false"): 81.2,
                                                 ("true", "true"): 82.5}),
    "Table 4": (("loss",), {("mse",): 81.5, ("mse-n",): 82.0, ("ce",): 84.8}),
    "Table 5": (("n", "backbone"), {("2", "r3d_18"): 78.0, ("2", "r2plus1d_18"): 84.8,
                                    ("4", "r3d_18"): 86.4, ("4", "r2plus1d_18"): 87.8}),
    "Table 6": (("k",), {("2",): 81.5, ("3",): 82.6, ("4",): 84.8, ("5",): 84.1, ("6",): 84.2}),
    "Table 7": (("m",), {("0.1",): 82.6, ("0.5",): 84.8, ("1",): 83.4}),
    "Table 8": (("lambda",), {("10",): 81.1, ("30",): 84.8, ("60",): 83.9}),
}


# --------------------------------------------------------------------------------------------
# Grid and cells
# --------------------------------------------------------------------------------------------

def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """["k=2,3", "lambda=10,30"] -> {"k": ["2", "3"], "lambda": ["10", "30"]} (order kept)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().lstrip("-")
        vals = [v.strip() for v in values.split(",")]
        if not sep or not key or not all(vals):
            raise UsageError("--grid", item, "must be key=value1,value2,... (e.g. k=2,3,4 or finetune.lr=0.01,0.1)")
        stage = key.split(".", 1)[0] if "." in key else None
        if stage is not None and stage not in OVERRIDE_STAGES:
            raise UsageError("--grid", item, f"the stage of a qualified key must be one of {', '.join(OVERRIDE_STAGES)}")
        if key in grid:
            raise UsageError("--grid", item, f"{key} is given twice")
        if len(set(vals)) != len(vals):
            raise UsageError("--grid", item, "values must be distinct")
        grid[key] = vals
    return grid


def parse_overrides(items: list[str]) -> list[Override]:
    """["pretrain.epochs=2", "train.seed=1"] -> [Override(stage, flag, value)], as run_all.sh reads
    them (core/presets.py), the stages limited to those a sweep runs."""
    return presets.parse_overrides(items, stages=OVERRIDE_STAGES)


def cell_key(settings: dict[str, str], seed: int) -> str:
    """A directory name from a cell's settings: k2_lambda10_seed0 (a hash when it gets long)."""
    parts = []
    for k, v in settings.items():
        name = k.split(".")[-1].replace("-", "")
        prefix = "" if "." not in k else k.split(".")[0][:2] + "-"
        parts.append(f"{prefix}{name}{v.replace('/', '-').replace(',', '-')}")
    key = "_".join(parts + [f"seed{seed}"]) if parts else f"seed{seed}"
    if len(key) > 80:
        key = key[:60] + "_" + hashlib.sha1(key.encode()).hexdigest()[:10]
    return key


@dataclass
class Cell:
    settings: dict[str, str]
    seed: int
    dir: Path
    status: str = "pending"                       # pending | done | failed
    error: str = ""
    results: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.dir.name


def make_cells(grid: dict[str, list[str]], seeds: list[int], sweep_dir: Path) -> list[Cell]:
    keys = list(grid)
    cells = []
    for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        settings = dict(zip(keys, combo))
        for seed in seeds:
            cells.append(Cell(settings, seed, sweep_dir / "cells" / cell_key(settings, seed)))
    return cells


def stage_flags(stage: str, settings: dict[str, str], overrides: list[Override]) -> list[str]:
    """The cell's settings and the overrides that reach `stage` (overrides last: they win)."""
    out: list[str] = []
    for key, value in settings.items():
        if "." in key:
            st, name = key.split(".", 1)
            hit = reaches(st, stage)
        else:
            name = key
            hit = stage == "pretrain" or (key in BOTH and stage == "finetune")
        if hit:
            out += flag_args(name, value)
    return out + presets.stage_flags(stage, overrides)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

@dataclass
class Sweep:
    preset: str
    dataset: str
    data_root: Path
    cache_dir: Path
    dir: Path
    overrides: list[Override]
    retrieval: bool = False
    efficiency_epochs: tuple[int, ...] = ()
    python: str = sys.executable
    log_lock: threading.Lock = field(default_factory=threading.Lock)

    def config(self, stage: str) -> list[str]:
        """--config FILE of the preset's stage file, where it has one (hmdb51 pretrains with
        ucf101's recipe: core/presets.py)."""
        return presets.config_flag(self.preset, stage)

    def say(self, msg: str) -> None:
        with self.log_lock:
            print(f"[sweep] {msg}", flush=True)

    def run(self, cell: Cell, stage: str, argv: list[str], env: dict | None = None) -> None:
        """Run one stage of a cell unless done (its marker, core/presets.py); its output goes to
        <cell>/logs/<stage>.log."""
        stages_dir = cell.dir / "stages"
        if presets.is_done(stages_dir, stage):
            return
        (cell.dir / "logs").mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(cell.dir / "logs" / f"{stage}.log", "a") as log:
            log.write(f"\n$ {' '.join(argv)}\n")
            log.flush()
            p = subprocess.run([self.python, *argv], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})})
        if p.returncode != 0:
            tail = (cell.dir / "logs" / f"{stage}.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{stage} exited {p.returncode}: " + " | ".join(tail))
        presets.mark(stages_dir, stage, time.time() - t0, [self.python, *argv])


def pretrain_argv(sw: Sweep, cell: Cell, save_every: int = 0) -> list[str]:
    return ["train/pretrain.py", *sw.config("pretrain"), "--dataset", sw.dataset, "--split", "1",
            "--cache-dir", str(sw.cache_dir), "--run-dir", str(cell.dir / "pretrain"), "--resume",
            "--seed", str(cell.seed), "--no-progress",
            *(["--save-every", str(save_every)] if save_every else []),
            *stage_flags("pretrain", cell.settings, sw.overrides)]


def finetune_argv(sw: Sweep, cell: Cell, init: str, run_dir: Path) -> list[str]:
    return ["train/finetune.py", *sw.config("finetune"), "--dataset", sw.dataset, "--split", "1",
            "--cache-dir", str(sw.cache_dir), "--init", init, "--run-dir", str(run_dir), "--resume",
            "--seed", str(cell.seed), "--no-progress", *stage_flags("finetune", cell.settings, sw.overrides)]


def evaluate_argv(sw: Sweep, cell: Cell, checkpoint: Path, out_dir: Path) -> list[str]:
    return ["train/evaluate.py", *sw.config("evaluate"), "--checkpoint", str(checkpoint),
            "--cache-dir", str(sw.cache_dir), "--out-dir", str(out_dir),
            *stage_flags("evaluate", cell.settings, sw.overrides)]


def run_cell(sw: Sweep, cell: Cell, env: dict | None = None) -> Cell:
    """pretrain -> finetune -> evaluate (-> retrieve) for one cell; never raises."""
    try:
        eff = sw.efficiency_epochs
        sw.run(cell, "pretrain", pretrain_argv(sw, cell, math.gcd(*eff) if eff else 0), env)
        sw.run(cell, "finetune", finetune_argv(sw, cell, str(cell.dir / "pretrain" / "last.pt"),
                                               cell.dir / "finetune"), env)
        sw.run(cell, "evaluate", evaluate_argv(sw, cell, cell.dir / "finetune" / "last.pt", cell.dir / "evaluate"), env)
        if sw.retrieval:
            sw.run(cell, "retrieve", ["train/retrieve.py", *sw.config("retrieve"), "--checkpoint",
                                      str(cell.dir / "pretrain" / "last.pt"), "--dataset", sw.dataset, "--split", "1",
                                      "--cache-dir", str(sw.cache_dir), "--out-dir", str(cell.dir / "retrieve"),
                                      "--seed", str(cell.seed), *stage_flags("retrieve", cell.settings, sw.overrides)],
                   env)
        for epoch in eff:                                  # Figure 1: finetune earlier checkpoints
            ck = cell.dir / "pretrain" / f"epoch_{epoch:04d}.pt"
            sw.run(cell, f"finetune_e{epoch}", finetune_argv(sw, cell, str(ck), cell.dir / f"finetune_e{epoch}"), env)
            sw.run(cell, f"evaluate_e{epoch}", evaluate_argv(sw, cell, cell.dir / f"finetune_e{epoch}" / "last.pt",
                                                            cell.dir / f"evaluate_e{epoch}"), env)
        if eff:
            sw.run(cell, "finetune_random", finetune_argv(sw, cell, "random", cell.dir / "finetune_random"), env)
            sw.run(cell, "evaluate_random", evaluate_argv(sw, cell, cell.dir / "finetune_random" / "last.pt",
                                                          cell.dir / "evaluate_random"), env)
        cell.status, cell.error = "done", ""
    except Exception as e:          # noqa: BLE001 - a failed cell is reported, the others go on
        cell.status, cell.error = "failed", str(e)
    cell.results = collect_cell(cell)
    atomic.write_json(cell.dir / "cell.json", {"settings": cell.settings, "seed": cell.seed, "status": cell.status,
                                               "error": cell.error, "results": cell.results})
    return cell


def prepare_data(sw: Sweep, cells: list[Cell]) -> dict:
    """The demo data when missing, then the frames once and each needed mask set once."""
    from preprocess.cache import DecodeParams, MaskParams, open_cache
    from train.pretrain import PretrainConfig

    summary = {"frames": "", "mask_sets_needed": 0, "mask_sets_reused": 0, "mask_sets_extracted": 0}
    if sw.dataset == "demo" and not (sw.data_root / "ucfTrainTestlist").exists():
        sw.say(f"generating the demo dataset in {sw.data_root}")
        subprocess.run([sw.python, "preprocess/make_demo.py", "--data-root", str(sw.data_root),
                        *sw.config("demo")], cwd=REPO, check=True)
    # what every cell's pretraining resolves to (also checks every cell's values before any work)
    cfgs = []
    for cell in cells:
        argv = [*sw.config("pretrain"), *stage_flags("pretrain", cell.settings, sw.overrides)]
        cfgs.append(parse(PretrainConfig, argv, prog="pretrain.py"))
    if sw.efficiency_epochs and min(c.epochs for c in cfgs) < max(sw.efficiency_epochs):
        raise UsageError("--efficiency-epochs", ",".join(map(str, sw.efficiency_epochs)),
                         f"must not exceed the pretraining epochs ({min(c.epochs for c in cfgs)}; raise them with "
                         f"pretrain.epochs=N)")
    decode = DecodeParams(cfgs[0].short_side, cfgs[0].jpeg_quality)
    needed: dict[tuple[int, float], set[int]] = {}
    for c in cfgs:
        if c.mask_source == "cache":
            needed.setdefault((c.lam, c.m), set()).update(c.strides)
    summary["mask_sets_needed"] = sum(len(s) for s in needed.values())
    base = ["preprocess/extract_masks.py", *sw.config("extract"), "--dataset", sw.dataset, "--data-root",
            str(sw.data_root), "--cache-dir", str(sw.cache_dir)]
    extra = presets.stage_flags("extract", sw.overrides)

    def cached(masks, strides) -> bool:
        try:
            open_cache(sw.cache_dir, sw.dataset, decode, masks, strides)
            return True
        except Exception:           # noqa: BLE001 - anything missing means: extract
            return False

    if cached(None, ()):
        summary["frames"] = "reused"
    jobs = [(lam, m, sorted(strides)) for (lam, m), strides in needed.items()]
    # no cell reads mask sets (the default, --mask-source clip): the frames alone (and the mask
    # statistics of the first cell's lambda, m), extract_masks.py's default
    for lam, m, strides in jobs or ([] if summary["frames"] else [(cfgs[0].lam, cfgs[0].m, [])]):
        missing = [s for s in strides if not cached(MaskParams(lam, m), (s,))]
        summary["mask_sets_reused"] += len(strides) - len(missing)
        if strides and not missing and summary["frames"]:
            continue
        argv = [*base, "--lambda", str(lam), "--m", str(m), *(["--strides", *map(str, missing)] if missing else []),
                *extra]
        p = subprocess.run([sw.python, *argv], cwd=REPO)
        if p.returncode not in (0, 1):                      # 1: some videos failed, the rest is cached
            raise UsageError("--dataset", sw.dataset, f"extraction failed (exit {p.returncode}); see above")
        summary["frames"] = summary["frames"] or "extracted"
        summary["mask_sets_extracted"] += len(missing)
    sw.say(f"data: frames {summary['frames']}; mask sets needed {summary['mask_sets_needed']}, reused "
           f"{summary['mask_sets_reused']}, extracted {summary['mask_sets_extracted']}")
    return summary


# --------------------------------------------------------------------------------------------
# Results: cells -> table, efficiency curve
# --------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def collect_cell(cell: Cell) -> dict:
    """What a cell's stages left: accuracies, the pretext accuracy, retrieval, provenance."""
    ev = _read_json(cell.dir / "evaluate" / "metrics.json")
    res: dict = {}
    if ev:
        res["video_top1"] = ev.get("metrics", {}).get("video_top1")
        res["cache_hash"] = (ev.get("cache") or {}).get("manifest_hash")
    ret = _read_json(cell.dir / "retrieve" / "metrics.json")
    if ret:
        res["R@1"] = (ret.get("metrics") or ret).get("R@1")
    ft = cell.dir / "finetune" / "metrics.jsonl"
    if ft.exists():       # the validation split's accuracy (preset with --val-fraction): what to choose on
        vals = [json.loads(line) for line in ft.read_text().splitlines() if '"val_acc"' in line]
        vals = [r for r in vals if r.get("val_split") == "val"]
        if vals:
            res["val_clip_top1"] = 100 * vals[-1]["val_acc"]
    cfg = _read_json(cell.dir / "pretrain" / "config.json")
    if cfg:
        res["git"] = (cfg.get("git") or {}).get("commit")
    metrics = cell.dir / "pretrain" / "metrics.jsonl"
    if metrics.exists():
        epochs = [json.loads(line) for line in metrics.read_text().splitlines() if '"kind": "epoch"' in line]
        tested = [r for r in epochs if "test_acc" in r]
        if tested:
            res["pretext_test_acc"] = 100 * tested[-1]["test_acc"]
            res["pretext_chance"] = 100 * tested[-1].get("chance", float("nan"))
    for d in sorted(cell.dir.glob("evaluate_e*")) + [cell.dir / "evaluate_random"]:
        m = _read_json(d / "metrics.json")
        if m:
            res.setdefault("efficiency", {})[d.name[len("evaluate_"):]] = m.get("metrics", {}).get("video_top1")
    return res


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd


def paper_number(settings: dict[str, str]) -> tuple[str, float] | None:
    """(table, UCF101 accuracy) when the setting is one the paper reports."""
    plain = {k.split(".")[-1]: v for k, v in settings.items()}
    for table, (keys, rows) in PAPER.items():
        if set(plain) == set(keys):
            hit = rows.get(tuple(_canon(plain[k]) for k in keys))
            if hit is not None:
                return table, hit
    return None


def _canon(v: str) -> str:
    try:
        return f"{float(v):g}"
    except ValueError:
        return v


def build_table(cells: list[Cell], grid_keys: list[str], retrieval: bool) -> tuple[str, list[list[str]]]:
    """(table.md text, table.csv rows): one row per setting, mean +- std over its seeds."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault(tuple(c.settings.get(k, "") for k in grid_keys), []).append(c)
    header = [*grid_keys, "seeds", "val clip top-1 (choose on this)", "test video top-1 (mean +- std)",
              *(["R@1"] if retrieval else []),
              "pretext test acc (chance)", "paper (UCF101)", "provenance"]
    md = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    rows = [[*grid_keys, "seeds", "val_clip_top1_mean", "val_clip_top1_std", "video_top1_mean", "video_top1_std", *(["R@1_mean", "R@1_std"] if retrieval else []),
             "pretext_test_acc_mean", "pretext_chance", "paper_table", "paper_ucf101", "failed", "cells"]]
    for values, group in groups.items():
        done = [c for c in group if c.status == "done"]
        top1 = mean_std([c.results.get("video_top1") for c in done])
        val = mean_std([c.results.get("val_clip_top1") for c in done])
        r1 = mean_std([c.results.get("R@1") for c in done])
        pre = mean_std([c.results.get("pretext_test_acc") for c in done])
        chance = next((c.results.get("pretext_chance") for c in done if c.results.get("pretext_chance") is not None), None)
        paper = paper_number(dict(zip(grid_keys, values)))
        prov = "; ".join(f"{c.dir.name}: {c.status}" + (f", git {str(c.results.get('git'))[:8]}" if c.results.get("git") else "")
                         + (f", cache {c.results.get('cache_hash')}" if c.results.get("cache_hash") else "")
                         + (f" ({c.error[:80]})" if c.status == "failed" else "") for c in group)

        def fmt(ms):
            return "n/a" if math.isnan(ms[0]) else f"{ms[0]:.1f} +- {ms[1]:.1f}"
        md.append("| " + " | ".join([*values, f"{len(done)}/{len(group)}", fmt(val), fmt(top1),
                                     *([fmt(r1)] if retrieval else []),
                                     (fmt(pre) + (f" ({chance:.1f})" if chance is not None else "")),
                                     f"{paper[1]:.1f} ({paper[0]})" if paper else "", prov]) + " |")
        rows.append([*values, str(len(done)), f"{val[0]:.4g}", f"{val[1]:.4g}", f"{top1[0]:.4g}", f"{top1[1]:.4g}",
                     *([f"{r1[0]:.4g}", f"{r1[1]:.4g}"] if retrieval else []), f"{pre[0]:.4g}",
                     "" if chance is None else f"{chance:.4g}", paper[0] if paper else "",
                     f"{paper[1]}" if paper else "", str(len(group) - len(done)),
                     " ".join(str(c.dir) for c in group)])
    return "\n".join(md) + "\n", rows


def efficiency_curve(cells: list[Cell], out_png: Path, out_csv: Path) -> list[list[str]]:
    """Video top-1 after finetuning the pretraining checkpoint of each epoch (mean over cells),
    against pretraining epochs, with the random-init line (supplementary Figure 1)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_epoch: dict[int, list[float]] = {}
    random_init: list[float] = []
    for c in cells:
        for name, acc in (c.results.get("efficiency") or {}).items():
            if acc is None:
                continue
            if name == "random":
                random_init.append(acc)
            elif name.startswith("e"):
                per_epoch.setdefault(int(name[1:]), []).append(acc)
    epochs = sorted(per_epoch)
    rows = [["pretraining_epochs", "video_top1_mean", "video_top1_std", "runs"]]
    for e in epochs:
        m, sd = mean_std(per_epoch[e])
        rows.append([str(e), f"{m:.4g}", f"{sd:.4g}", str(len(per_epoch[e]))])
    rm, rsd = mean_std(random_init)
    rows.append(["random", f"{rm:.4g}", f"{rsd:.4g}", str(len(random_init))])
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    atomic.write_text(out_csv, buf.getvalue())
    fig, ax = plt.subplots(figsize=(5, 3.4))
    if epochs:
        ms = [mean_std(per_epoch[e]) for e in epochs]
        ax.errorbar(epochs, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3, label="MAC-pretrained")
    if random_init:
        ax.axhline(rm, color="grey", linestyle="--", label=f"random init ({rm:.1f})")
    ax.set_xlabel("pretraining epochs")
    ax.set_ylabel("video top-1 after finetuning (%)")
    ax.set_title("pretraining efficiency", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic.atomic_open(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return rows


def write_outputs(sw: Sweep, cells: list[Cell], grid_keys: list[str], data: dict | None) -> str:
    table, rows = build_table(cells, grid_keys, sw.retrieval)
    atomic.write_text(sw.dir / "table.md", f"# Sweep {sw.dir.name}: {sw.dataset}, preset {sw.preset}\n\n{table}")
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    atomic.write_text(sw.dir / "table.csv", buf.getvalue())
    if sw.efficiency_epochs:
        efficiency_curve(cells, sw.dir / "efficiency.png", sw.dir / "efficiency.csv")
    atomic.write_json(sw.dir / "sweep.json", {
        "preset": sw.preset, "dataset": sw.dataset, "grid_keys": grid_keys,
        "overrides": [f"{s}.{n}={v}" for s, n, v in sw.overrides], "data": data,
        "cells": [{"dir": str(c.dir), "settings": c.settings, "seed": c.seed, "status": c.status, "error": c.error,
                   "results": c.results} for c in cells]})
    return table


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

@dataclass
class SweepFlags(Flags):
    """sweep.py's flags (the grid, the seeds, where the sweep lies); the stages' own flags come
    from the preset's files, the grid and the overrides."""
    preset: str = flag("demo", "configs/<preset>/ holds the stage files (demo, ucf101, ...)")
    dataset: str | None = flag(None, "default: the preset's dataset (demo for demo*, else the preset)")
    data_root: Path | None = flag(None, "default data/<dataset>", type=Path)
    cache_dir: Path = flag(Path("data_cache"), "the cache root")
    grid: list = flag([], "key=v1,v2 ... (see above)")
    seeds: str = flag("0", "comma-separated training seeds; every cell runs each")
    retrieval: bool = flag(False, "also run retrieval (R@k) for every cell")
    efficiency_epochs: str = flag("", "e.g. 5,15,30,80: finetune those pretraining epochs' checkpoints and random "
                                  "init, plot accuracy against epochs")
    parallel: int = flag(1, "cells at once (one GPU each when there are GPUs)", lo=1)
    gpus: str | None = flag(None, "GPU ids for --parallel (default: all visible)")
    name: str | None = flag(None, "sweep directory name (default: from the grid)")
    sweep_dir: Path | None = flag(None, "default runs/<dataset>/sweeps/<name>", type=Path)
    table_only: bool = flag(False, "rebuild table.md/csv from finished cells; run nothing")
    overrides: list = flag([], "stage.flag=value for every cell (as in run_all.sh)", positional=True, nargs="*")
    config_file = False           # no --config: the preset's files are the stages' configs

    def check(self) -> None:
        presets.require(self.preset)
        self.grid_map, self.override_list = parse_grid(self.grid), parse_overrides(self.overrides)
        try:
            self.seed_list = [int(s) for s in self.seeds.split(",")]
            self.eff = tuple(int(e) for e in self.efficiency_epochs.split(",")) if self.efficiency_epochs else ()
        except ValueError:
            raise UsageError("--seeds/--efficiency-epochs", f"{self.seeds} / {self.efficiency_epochs}",
                             "must be comma-separated integers") from None
        if min(self.seed_list) < 0 or len(set(self.seed_list)) != len(self.seed_list):
            raise UsageError("--seeds", self.seeds, "must be distinct integers >= 0")
        if self.eff and (min(self.eff) < 1 or len(set(self.eff)) != len(self.eff)):
            raise UsageError("--efficiency-epochs", self.efficiency_epochs, "must be distinct integers >= 1")


def parse_args(argv=None) -> SweepFlags:
    return parse(SweepFlags, argv, description=__doc__, prog="sweep.py")


def main(argv=None) -> int:
    args = parse_args(argv)
    dataset = args.dataset or ("demo" if args.preset.startswith("demo") else args.preset)
    name = args.name or ("_".join(args.grid_map) or "base") + ("_efficiency" if args.eff else "")
    sw = Sweep(args.preset, dataset, args.data_root or Path("data") / dataset, args.cache_dir,
               args.sweep_dir or Path("runs") / dataset / "sweeps" / name, args.override_list, args.retrieval, args.eff)
    cells = make_cells(args.grid_map, args.seed_list, sw.dir)
    grid_keys = list(args.grid_map)
    for c in cells:                                     # what earlier runs of this sweep finished
        prev = _read_json(c.dir / "cell.json")
        c.status = prev.get("status", "pending")
        c.results = collect_cell(c)
    if args.table_only:
        print(write_outputs(sw, cells, grid_keys, None), end="")
        sw.say(f"table rebuilt from {sum(c.status == 'done' for c in cells)} finished cell(s): {sw.dir / 'table.md'}")
        return 0
    sw.dir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(sw, cells)
    todo = [c for c in cells if c.status != "done"]
    sw.say(f"{len(cells)} cell(s) in {sw.dir}: {len(cells) - len(todo)} finished before, {len(todo)} to run"
           + (f", {args.parallel} at once" if args.parallel > 1 else ""))
    gpus = _gpus(args.gpus)
    t0 = time.time()

    def job(i_cell):
        i, cell = i_cell
        env = {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus and args.parallel > 1 else None
        sw.say(f"cell {cell.key}: start" + (f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if env else ""))
        run_cell(sw, cell, env)
        top1 = cell.results.get("video_top1")
        sw.say(f"cell {cell.key}: {cell.status}" + (f", video top-1 {top1:.1f}" if top1 is not None else "")
               + (f" ({cell.error})" if cell.status == "failed" else ""))
        return cell

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(job, enumerate(todo)))
    table = write_outputs(sw, cells, grid_keys, data)
    print(table, end="")
    failed = [c for c in cells if c.status != "done"]
    sw.say(f"done in {time.time() - t0:.0f} s: {sw.dir / 'table.md'}" + (f"; {len(failed)} cell(s) failed: "
           + ", ".join(c.key for c in failed) if failed else ""))
    return 1 if failed else 0


def _gpus(spec: str | None) -> list[str]:
    if spec:
        return [g.strip() for g in spec.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:           # noqa: BLE001
        return []


def console() -> None:
    """The ``mac-sweep`` console command (pyproject.toml): the same as ``python train/sweep.py``."""
    exit_with(main, "sweep.py")


if __name__ == "__main__":
    console()
