"""What MAC itself contributes: MAC beside controls that each differ from it in one thing, on several
generated data instances and training seeds, through the same downstream chain, with intervals
and paired tests (docs/demo.md, "Controls").

    bash run_all.sh demo-controls                                   # 3 instances x 2 seeds, every arm
    python train/controls.py --instances 0 --seeds 0                # one slice (~1 h on 2 CPU cores)
    python train/controls.py --instances 1 --seeds 0,1 --arms mac,no-mask,scratch
    python train/controls.py --table-only                           # the table of what has finished
    python train/controls.py --table-only --ledger docs/results/controls --seeds 0   # the measured cells
    python train/controls.py --plan --ledger docs/results/controls  # what the design still needs

Arms (pretraining flags on top of the preset's pretrain.json; docs/method.md section 2):

    mac          the preset's MAC pretraining (MAC-S), the reference
    no-mask      --mask-variant none: every alpha tuple gives the same input (pretext at chance)
    full-frame   --mask-variant full-frame: the whole frame attenuated, a pretext without motion
    displaced    --mask-variant displaced: the masks moved by half the crop (same statistics, off
                 the objects)
    mac-sc       MAC-SC (MAC-S + MoCo v2)
    moco         MoCo v2 alone (--method mac-sc --cls-weight 0 --mask-variant none), beside mac-sc
    random       no pretraining: random features with BN statistics estimated on training clips
                 (linear probe, retrieval) and finetuning from random init with the finetuning
                 steps only
    scratch      supervised from random init with MAC's total number of steps (pretraining +
                 finetuning), for every label fraction; a MAC-S step costs what a supervised step
                 costs (train/flops.py), so this is MAC-S's compute too
    scratch-sc   the same with MAC-SC's compute: each pretraining step counted as the FLOPs of a
                 MAC-SC step over a supervised one (its key encoder; x1.34 on the demo)

Every pretrained arm then runs: finetuning on all training labels and on each --label-fractions
fraction, a linear probe, the 10-clip test of each, retrieval; "mac" and "scratch" also the test
played backwards (evaluate.py --reverse-time). The demo preset's validation split (configs/demo,
val-fraction) is carved out of the training groups and excluded from every stage; nothing is
chosen on the test split, which each evaluation reads once.

Data instances are make_demo.py --seed values, each generated into <data-root>/seed<S> and cached
under <cache-dir>/seed<S> once. Everything lives under --dir (default runs/demo/controls):
cells/seed<S>/train<T>/<arm>/<stage> with stage markers, so an interrupted run resumes, a finished
stage is never rerun, and slices run on different machines merge by copying their cells/ folders
together and running --table-only. A failed stage is reported and the other arms go on.

With --ledger DIR every finished cell is also recorded as one small JSON file in DIR
(train/ledger.py: per-video predictions, pretext accuracy, commit, frame cache content hash), and the
tables pool those records with the cells under --dir: the project's measured cells are kept in
docs/results/controls, so slices measured in different sittings make one table. A cell recorded
there with this run's settings (the preset's files, the overrides, the label fractions: the
record's "settings" hash) and frames, and with no folder under --dir, is taken from its record,
not trained again.

Outputs: table.md / table.csv (per arm and metric: mean with a 95 % hierarchical-bootstrap interval
over instances and videos, the difference to MAC with its paired interval, McNemar's exact test of
MAC against the arm on the same videos, instances x seeds; pretext accuracy against chance),
cells.md (every cell's own accuracies and pretext, arm by cell), per_class.csv (per-class test
accuracy of every arm), reverse_time.md (MoveUp/MoveDown under time reversal), controls.json (every
number and where it came from).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):   # run as `python train/controls.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import atomic, presets
from core.errors import UsageError, exit_with
from core.flags import Flags, flag, parse

REPO = Path(__file__).resolve().parents[1]

# arm -> pretraining flags on top of the preset's pretrain.json (None: no pretraining)
ARMS: dict[str, dict[str, str] | None] = {
    "mac": {},
    "no-mask": {"mask-variant": "none"},
    "full-frame": {"mask-variant": "full-frame"},
    "displaced": {"mask-variant": "displaced"},
    "mac-sc": {"method": "mac-sc"},
    "moco": {"method": "mac-sc", "cls-weight": "0", "mask-variant": "none"},
    "random": None,
    "scratch": None,
    "scratch-sc": None,
}
# the scratch arms: whose pretraining's compute each matches (its arm in ARMS)
SCRATCH = {"scratch": "mac", "scratch-sc": "mac-sc"}
LABELS = {"mac": "MAC (MAC-S)", "no-mask": "no mask", "full-frame": "full-frame attenuation",
          "displaced": "displaced masks", "mac-sc": "MAC-SC", "moco": "MoCo v2 alone",
          "random": "random init / random features", "scratch": "from scratch, MAC's total steps",
          "scratch-sc": "from scratch, MAC-SC's compute"}
# MoCo arms: a queue the demo's 1,100 steps of 8 keys fill (the recipe's 65,536 would stay mostly empty)
MOCO_DEMO = {"queue-size": "1024"}
REVERSED = ("mac", "scratch")
# arms whose pretext head is not trained (cls weight 0): their pretext accuracy reads an untrained head
UNTRAINED_HEAD = ("moco",)
# minutes one cell of the demo preset takes on two idle CPU cores (measured 2026-12-04, docs/demo.md;
# displaced estimated from its ratio to no mask on a busier day), for --plan
DEMO_CELL_MINUTES = {"mac": 6, "no-mask": 7, "full-frame": 7, "displaced": 6, "mac-sc": 8, "moco": 7,
                     "random": 3, "scratch": 8, "scratch-sc": 12}


def fraction_tag(f: float) -> str:
    return "all" if f >= 1.0 else f"labels{f:g}"


@dataclass
class Slot:
    """One (instance, training seed, arm): its directory and what its stages left."""

    instance: int
    seed: int
    arm: str
    dir: Path
    status: str = "pending"
    errors: list = field(default_factory=list)


def cell_dir(root: Path, instance: int, seed: int, arm: str) -> Path:
    """A cell's folder under --dir: cells/seed<instance>/train<seed>/<arm>."""
    return Path(root) / "cells" / f"seed{instance}" / f"train{seed}" / arm


def cell_finished(d: Path) -> bool:
    """Whether the cell folder ``d`` finished every stage (its slot.json says done)."""
    try:
        return json.loads((d / "slot.json").read_text()).get("status") == "done"
    except (OSError, ValueError):
        return False


def instance_sweep(args: "ControlsFlags", instance: int):
    """train/sweep.py's runner for one data instance: its data root and cache, the run's overrides."""
    from train.sweep import Sweep

    return Sweep(args.preset, "demo", args.data_root / f"seed{instance}", args.cache_dir / f"seed{instance}",
                 args.dir, args.override_list)


def _stage_overrides(stage: str, overrides) -> list[str]:
    return presets.stage_flags(stage, overrides)


def arm_flags(sw, arm: str) -> list[str]:
    """The arm's pretraining flags and the run's pretrain overrides (after the preset's file)."""
    extra = dict(ARMS[arm] or {})
    if extra.get("method") == "mac-sc":
        extra = {**MOCO_DEMO, **extra}
    return [*(a for k, v in extra.items() for a in presets.flag_args(k, v)), *_stage_overrides("pretrain", sw.overrides)]


def pretrain_argv(sw, slot: Slot) -> list[str]:
    return ["train/pretrain.py", *sw.config("pretrain"), "--dataset", "demo", "--split", "1", "--cache-dir",
            str(sw.cache_dir), "--run-dir", str(slot.dir / "pretrain"), "--resume", "--seed", str(slot.seed),
            "--no-progress", *arm_flags(sw, slot.arm)]


def finetune_argv(sw, slot: Slot, init: str, run_dir: Path, fraction: float, linear: bool = False,
                  extra: list[str] = ()) -> list[str]:
    stage = "linear" if linear else "finetune"
    return ["train/finetune.py", *sw.config(stage), "--dataset", "demo", "--split", "1",
            "--cache-dir", str(sw.cache_dir), "--init", init, "--run-dir", str(run_dir), "--resume",
            "--seed", str(slot.seed), "--no-progress", "--label-fraction", str(fraction),
            *_stage_overrides(stage, sw.overrides), *extra]


def evaluate_argv(sw, checkpoint: Path, out_dir: Path, reverse: bool = False) -> list[str]:
    return ["train/evaluate.py", *sw.config("evaluate"), "--checkpoint", str(checkpoint), "--cache-dir",
            str(sw.cache_dir), "--out-dir", str(out_dir), *(["--reverse-time"] if reverse else []),
            *_stage_overrides("evaluate", sw.overrides)]


def retrieve_argv(sw, slot: Slot, source: list[str], out_dir: Path) -> list[str]:
    return ["train/retrieve.py", *sw.config("retrieve"), *source, "--dataset", "demo", "--split", "1",
            "--cache-dir", str(sw.cache_dir), "--out-dir", str(out_dir), "--seed", str(slot.seed),
            *_stage_overrides("retrieve", sw.overrides)]


def random_retrieval_source(sw) -> list[str]:
    """retrieve.py's flags for random features that see the clips MAC's retrieval sees: the
    backbone, clip geometry and normalisation of the preset's pretraining (what MAC's checkpoint
    stores), so that the random arm does not depend on MAC's cell."""
    from train.inference import clip_geometry

    pt = arm_pretrain_config(sw, "mac")
    geo = clip_geometry(asdict(pt))
    return ["--init", "random", "--backbone", pt.backbone, "--norm", pt.norm,
            *[x for k in ("frames", "stride", "crop") for x in (f"--{k}", str(geo[k]))]]


def arm_pretrain_config(sw, arm: str):
    """The PretrainConfig an arm's pretraining runs (the preset's, the arm's flags, the overrides)."""
    from train.pretrain import PretrainConfig

    return parse(PretrainConfig, [*sw.config("pretrain"), *arm_flags(sw, arm)], prog="pretrain.py")


def step_cost(sw, arm: str) -> float:
    """What one pretraining step of ``arm`` costs in supervised finetuning steps (FLOPs, counted
    on the trainers' modules: train/flops.py); 1 for MAC-S by construction of the ratio."""
    from preprocess.cache import DecodeParams, open_cache
    from train import flops
    from train.finetune import FinetuneConfig

    ft = parse(FinetuneConfig, [*sw.config("finetune"), *_stage_overrides("finetune", sw.overrides)],
               prog="finetune.py")
    classes = len(open_cache(sw.cache_dir, "demo", DecodeParams(), None).classes)
    return flops.pretrain_step_ratio(arm_pretrain_config(sw, arm), ft, classes)


def scratch_extra(sw, fraction: float, cost: float = 1.0) -> list[str]:
    """--epochs / --milestones of the compute-matched scratch run at ``fraction`` of the labels (as
    many steps as the pretraining, on all training videos, times ``cost`` supervised steps per
    pretraining step, plus the finetuning on the fraction) and the preset's scratch.json (its
    learning rate), exactly as run_all.sh's scratch stage."""
    from train.pretrain import PretrainConfig

    pt = parse(PretrainConfig, [*sw.config("pretrain"), *_stage_overrides("pretrain", sw.overrides)], prog="pretrain.py")
    return [*presets.scratch_flags(sw.preset, pt, sw.overrides, video_ratio=1.0 / fraction, step_cost=cost),
            *_stage_overrides("scratch", sw.overrides)]


def run_slot(sw, slot: Slot, fractions: list[float]) -> Slot:
    """Every stage of one slot; a failed stage is recorded and the slot's other stages go on."""
    def step(name: str, argv: list[str]) -> bool:
        try:
            sw.run(slot, name, argv)           # Sweep.run needs the slot's dir only
            return True
        except Exception as e:          # noqa: BLE001 - reported, the others go on
            slot.errors.append(f"{name}: {e}")
            return False

    arm = slot.arm
    if ARMS[arm] is not None:                                       # a pretrained arm
        if not step("pretrain", pretrain_argv(sw, slot)):
            return _done(slot)
        init = str(slot.dir / "pretrain" / "last.pt")
        for f in fractions:
            tag = fraction_tag(f)
            if step(f"finetune_{tag}", finetune_argv(sw, slot, init, slot.dir / f"finetune_{tag}", f)):
                ck = slot.dir / f"finetune_{tag}" / "last.pt"
                step(f"evaluate_{tag}", evaluate_argv(sw, ck, slot.dir / f"evaluate_{tag}"))
                if arm in REVERSED and f >= 1.0:
                    step("evaluate_reversed", evaluate_argv(sw, ck, slot.dir / "evaluate_reversed", reverse=True))
        if step("linear", finetune_argv(sw, slot, init, slot.dir / "linear", 1.0, linear=True)):
            step("evaluate_linear", evaluate_argv(sw, slot.dir / "linear" / "last.pt", slot.dir / "evaluate_linear"))
        step("retrieve", retrieve_argv(sw, slot, ["--checkpoint", init], slot.dir / "retrieve"))
    elif arm == "random":
        for f in fractions:
            tag = fraction_tag(f)
            if step(f"finetune_{tag}", finetune_argv(sw, slot, "random", slot.dir / f"finetune_{tag}", f)):
                step(f"evaluate_{tag}", evaluate_argv(sw, slot.dir / f"finetune_{tag}" / "last.pt",
                                                      slot.dir / f"evaluate_{tag}"))
        if step("linear", finetune_argv(sw, slot, "random", slot.dir / "linear", 1.0, linear=True)):
            step("evaluate_linear", evaluate_argv(sw, slot.dir / "linear" / "last.pt", slot.dir / "evaluate_linear"))
        step("retrieve", retrieve_argv(sw, slot, random_retrieval_source(sw), slot.dir / "retrieve"))
    else:                                                           # scratch, compute-matched
        cost = 1.0
        if SCRATCH[arm] != "mac":
            cost = step_cost(sw, SCRATCH[arm])
            atomic.write_json(slot.dir / "step_cost.json", {"matches": SCRATCH[arm], "step_cost": cost,
                                                            "source": "train/flops.py (FLOPs per step)"})
            sw.say(f"{arm}: a {SCRATCH[arm]} pretraining step = {cost:.3f} supervised steps (FLOPs)")
        for f in fractions:
            tag = fraction_tag(f)
            if step(f"finetune_{tag}", finetune_argv(sw, slot, "random", slot.dir / f"finetune_{tag}", f,
                                                     extra=scratch_extra(sw, f, cost))):
                ck = slot.dir / f"finetune_{tag}" / "last.pt"
                step(f"evaluate_{tag}", evaluate_argv(sw, ck, slot.dir / f"evaluate_{tag}"))
                if f >= 1.0:
                    step("evaluate_reversed", evaluate_argv(sw, ck, slot.dir / "evaluate_reversed", reverse=True))
    return _done(slot)


def _done(slot: Slot) -> Slot:
    slot.status = "failed" if slot.errors else "done"
    atomic.write_json(slot.dir / "slot.json", {"instance": slot.instance, "seed": slot.seed, "arm": slot.arm,
                                               "status": slot.status, "errors": slot.errors})
    return slot


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

def metric_names(fractions: list[float]) -> list[tuple[str, str]]:
    """(metric key, its column title), in the table's order."""
    out = [(f"evaluate_{fraction_tag(f)}", "finetuned, all labels" if f >= 1.0 else f"finetuned, {100 * f:g} % labels")
           for f in fractions]
    return out + [("evaluate_linear", "linear probe"), ("retrieve", "retrieval R@1")]


def gather(root: Path, arms: list[str], instances: list[int], seeds: list[int],
           ledger: Path | None = None) -> tuple[dict, list[str]]:
    """Every cell's record (train/ledger.py) for these instances, seeds and arms: from its folder
    under ``root``/cells when it has finished any stage (a fresh run wins), else from the ledger.
    Returns ({(instance, seed, arm): record}, [problems]): a damaged ledger file, or one
    instance's cells evaluated on different frame caches, is named and left out of the table."""
    from train import ledger as L

    want = {(i, s, a) for i in instances for s in seeds for a in arms}
    recs, problems = L.load_dir(ledger) if ledger is not None else ({}, [])
    recs = {k: r for k, r in recs.items() if k in want}
    for inst, seed, arm in sorted(want):
        d = cell_dir(root, inst, seed, arm)
        if d.is_dir():
            try:
                r = L.from_cell(d, inst, seed, arm)
            except ValueError as e:
                problems.append(str(e))
                continue
            if r is not None:
                recs[(inst, seed, arm)] = r
    for inst in instances:      # one instance's cells must have seen the same frames
        caches: dict = {}
        for (i, _, _), r in recs.items():
            if i == inst and L.frames_identity(r):
                caches.setdefault(L.frames_identity(r), []).append(r["_source"])
        if len(caches) > 1:
            majority = max(caches, key=lambda c: len(caches[c]))
            for c, srcs in caches.items():
                if c != majority:
                    problems.append(f"instance {inst}: {', '.join(srcs)} evaluated on frame cache {c}, the other "
                                    f"{len(caches[majority])} on {majority}; left out (regenerate or rerun them)")
                    recs = {k: r for k, r in recs.items() if r["_source"] not in srcs}
    return recs, problems


def per_video(rec: dict | None, key: str):
    """(names, correct) of one metric of a cell's record: video top-1 correctness of an evaluation,
    or R@1 hits for ``retrieve``; None when the cell has no such stage."""
    import numpy as np

    s = (rec or {}).get("stages", {}).get(key)
    if s is None:
        return None
    names = np.asarray(s.get("names", rec["videos"])).astype(str)
    return names, np.asarray(s["labels"]) == np.asarray(s["preds"])


def collect(recs: dict, arms: list[str], instances: list[int], seeds: list[int], fractions: list[float]) -> dict:
    """Per metric and arm: {instance: [seeds, videos] correctness}, aligned by video name across
    arms, seeds and instances' own test sets; plus the pretext accuracies."""
    import numpy as np

    data: dict = {}
    pretext: dict = {}
    for key, _ in metric_names(fractions):
        for arm in arms:
            per_inst = {}
            for inst in instances:
                rows, names0 = [], None
                for seed in seeds:
                    got = per_video(recs.get((inst, seed, arm)), key)
                    if got is None:
                        rows = None
                        break
                    names, correct = got
                    order = np.argsort(names)
                    names, correct = names[order], correct[order]
                    if names0 is not None and not np.array_equal(names, names0):
                        raise ValueError(f"{arm} seed {seed} instance {inst}: {key} was evaluated on other videos")
                    names0 = names
                    rows.append(correct.astype(bool))
                if rows:
                    per_inst[inst] = (names0, np.stack(rows))
            if per_inst:
                data.setdefault(key, {})[arm] = per_inst
    for arm in arms:         # the pretraining's last test-split pretext accuracy, as sweep.py reads it
        accs = [recs[(i, s, arm)]["pretext"] for i in instances for s in seeds
                if "pretext" in recs.get((i, s, arm), {})]
        accs = [(a["pretext_test_acc"], a.get("pretext_chance")) for a in accs]
        if accs:
            pretext[arm] = {"mean": sum(a for a, _ in accs) / len(accs), "chance": accs[0][1], "runs": len(accs)}
    return {"data": data, "pretext": pretext}


def build_table(root: Path, arms: list[str], instances: list[int], seeds: list[int], fractions: list[float],
                n_boot: int = 10000, ledger: Path | None = None,
                recs: dict | None = None, problems: list[str] = ()) -> tuple[str, list[list[str]], dict]:
    """table.md text, table.csv rows and the JSON record of every number, from the cells under
    ``root`` and the records in ``ledger`` (or the records ``recs`` gathered already, with their
    ``problems``)."""
    from train import stats

    problems = list(problems)
    if recs is None:
        recs, problems = gather(root, arms, instances, seeds, ledger)
    got = collect(recs, arms, instances, seeds, fractions)
    data, pretext = got["data"], got["pretext"]
    md = ["| arm | metric | mean [95 % CI] | minus MAC [95 % CI] | McNemar vs MAC | instances x seeds | test videos |",
          "|---|---|---|---|---|---|---|"]
    rows = [["arm", "metric", "mean", "ci_lo", "ci_hi", "diff_vs_mac", "diff_lo", "diff_hi", "mcnemar_b01",
             "mcnemar_b10", "mcnemar_p", "instances", "seeds", "videos"]]
    record: dict = {"instances": instances, "seeds": seeds, "fractions": fractions, "metrics": {}, "pretext": pretext,
                    "cells": sorted(f"seed{i}/train{s}/{a}: {r['_source']}" for (i, s, a), r in recs.items()),
                    "commits": sorted({r.get("git") or "unknown" for r in recs.values()}), "problems": problems}
    for key, title in metric_names(fractions):
        for arm in arms:
            cur = (data.get(key) or {}).get(arm)
            if not cur:
                continue
            arrays = {i: a for i, (_, a) in cur.items()}
            ci = stats.bootstrap_ci(arrays, n_boot=n_boot)
            rec = {"mean": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "instances": sorted(arrays),
                   "seeds": int(next(iter(arrays.values())).shape[0]),
                   "videos": int(sum(a.shape[1] for a in arrays.values()))}
            diff_s = mc_s = "-"
            pair = _paired(data, key, arm, "mac", n_boot) if arm != "mac" else None
            if pair:
                rec.update(diff=pair["diff"], mcnemar=pair["mcnemar"])
                diff_s, mc_s = pair["diff_text"], pair["mcnemar_text"]
            record["metrics"].setdefault(key, {})[arm] = rec
            md.append(f"| {LABELS[arm]} | {title} | {stats.format_ci(ci)} | {diff_s} | {mc_s} | "
                      f"{len(arrays)} x {rec['seeds']} | {rec['videos'] // max(len(arrays), 1)} |")
            dd = rec.get("diff", {})
            mcr = rec.get("mcnemar", {})
            rows.append([arm, title, f"{ci['mean']:.2f}", f"{ci['lo']:.2f}", f"{ci['hi']:.2f}",
                         *(f"{dd[k]:.2f}" if dd else "" for k in ("mean", "lo", "hi")),
                         *(str(mcr.get(k, "")) for k in ("b01", "b10")),
                         f"{mcr['p']:.4g}" if mcr else "", str(len(arrays)), str(rec["seeds"]),
                         str(rec["videos"])])
    # every pretrained arm against the compute-matched scratch model: where pretraining pays
    vs = ["", "Against supervised training from scratch with MAC's total number of steps (= MAC-S's FLOPs) and, "
          "for MAC-SC, with its FLOPs (the arm minus the scratch model on the same videos and seeds, paired "
          "bootstrap; McNemar b01:b10 = videos the scratch model gets right and the arm wrong : the reverse; per "
          "cell: the difference on each instance/seed, to see whether the pooled one holds in every cell):", "",
          "| arm | metric | scratch model | minus it [95 % CI] | McNemar | instances x seeds | per cell (instance/seed) |",
          "|---|---|---|---|---|---|---|"]
    n_vs = len(vs)
    pairs = [(a, "scratch") for a in arms if a not in SCRATCH and a != "random"]
    pairs += [(a, s) for s, a in SCRATCH.items() if s != "scratch" and a in arms and s in arms]
    for key, title in metric_names(fractions):
        if not key.startswith("evaluate_") or key == "evaluate_linear":
            continue
        for arm, ref in pairs:
            pair = _paired(data, key, arm, ref, n_boot)
            if pair:
                cells = {f"{i}/{seeds[j]}": d for i, per_seed in pair["cells"].items() for j, d in enumerate(per_seed)}
                record["metrics"][key][arm]["vs_" + ref.replace("-", "_")] = {"diff": pair["diff"],
                                                                              "mcnemar": pair["mcnemar"],
                                                                              "cells": cells}
                ahead = sum(d > 0 for d in cells.values())
                per_cell = ", ".join(f"{d:+.1f} ({c})" for c, d in cells.items())
                vs.append(f"| {LABELS[arm]} | {title} | {LABELS[ref]} | {pair['diff_text']} | "
                          f"{pair['mcnemar_text']} | {pair['instances']} x {pair['seeds']} | "
                          f"{per_cell}{f'; ahead in {ahead} of {len(cells)}' if len(cells) > 1 else ''} |")
    if len(vs) == n_vs:
        vs = []
    pt = ["", "| arm | pretext test accuracy (mean over runs) | chance | runs |", "|---|---|---|---|"]
    for arm in arms:
        if arm in pretext:
            p = pretext[arm]
            pt.append(f"| {LABELS[arm]} | {p['mean']:.1f} | {p['chance']:.1f} | {p['runs']} |")
    text = "\n".join([
        f"Controls on the demo: data instances {','.join(map(str, instances))} x training seeds "
        f"{','.join(map(str, seeds))} (where finished); test split 1 of each instance (chance 16.7 %); percent.",
        "Intervals: 95 % hierarchical bootstrap over instances and test videos; 'minus MAC': the arm's accuracy "
        "minus MAC's on the same videos and seeds, paired bootstrap; McNemar: exact test on the discordant pairs "
        "(videos MAC gets right and the arm wrong : the reverse), pooled over instances and seeds (a video counts "
        "once per seed, so p is optimistic where seeds agree; the paired interval is the stronger evidence).",
        f"Cells: {len(recs)} ({sum(1 for r in recs.values() if r['_source'].endswith('.json'))} from the ledger), "
        f"trained by commit(s) {', '.join(c[:10] for c in record['commits'])}; an arm enters an instance's row "
        "when all the seeds are there.",
        *([""] + [f"Left out: {p}" for p in problems] if problems else []), "",
        *md, *vs, *pt]) + "\n"
    return text, rows, record


def _paired(data: dict, key: str, arm: str, ref: str, n_boot: int):
    """``arm`` minus ``ref`` on metric ``key`` over the instances both have, on the same videos and
    seeds: {diff: {mean, lo, hi}, mcnemar, diff_text, mcnemar_text, instances, seeds, cells: {instance:
    [the difference in points for each seed]}}; None where
    either is missing or they differ in shape. McNemar's b01: ``arm`` wrong where ``ref`` is right."""
    import numpy as np

    from train import stats

    a_all, b_all = (data.get(key) or {}).get(ref), (data.get(key) or {}).get(arm)
    if not a_all or not b_all:
        return None
    common = sorted(set(a_all) & set(b_all))
    if not common or any(a_all[i][1].shape != b_all[i][1].shape for i in common):
        return None
    a = {i: a_all[i][1] for i in common}
    b = {i: b_all[i][1] for i in common}
    d = stats.paired_bootstrap_diff(b, a, n_boot=n_boot)
    mc = stats.mcnemar(np.concatenate([b[i].ravel() for i in common]), np.concatenate([a[i].ravel() for i in common]))
    return {"diff": {"mean": d["mean"], "lo": d["lo"], "hi": d["hi"]}, "mcnemar": mc,
            "diff_text": f"{d['mean']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]",
            "mcnemar_text": f"{mc['b01']}:{mc['b10']}, {stats.format_p(mc['p'])}",
            "instances": len(common), "seeds": int(a[common[0]].shape[0]),
            "cells": {i: [round(100 * float(b[i][j].mean() - a[i][j].mean()), 4) for j in range(a[i].shape[0])]
                      for i in common}}


def cells_table(recs: dict, arms: list[str], instances: list[int], seeds: list[int], fractions: list[float]) -> str:
    """One row per arm, one column per cell (instance/seed): each finetuned accuracy, the linear
    probe and the pretext, percent; how far single cells lie from the pooled means (a pretraining
    that left its plateau or did not)."""
    keys = [k for k, _ in metric_names(fractions) if k != "retrieve"]
    titles = [t for k, t in metric_names(fractions) if k != "retrieve"] + ["pretext"]
    cols = [(i, s) for i in instances for s in seeds]
    lines = [f"Each cell (data instance/training seed): {' / '.join(titles)}; percent of the instance's test "
             "videos (chance 16.7 %; pretext chance 1/k^n, 25 % on the demo); '-' where the cell has no such "
             "stage (scratch has no probe, MoCo alone an untrained pretext head), 'not run' where it is not recorded.",
             "", "| arm | " + " | ".join(f"{i}/{s}" for i, s in cols) + " |", "|---|" + "---|" * len(cols)]
    for arm in arms:
        row = []
        for i, s in cols:
            rec = recs.get((i, s, arm))
            if rec is None:
                row.append("not run")
                continue
            vals = []
            for key in keys:
                got = per_video(rec, key)
                vals.append(f"{100 * got[1].mean():.1f}" if got is not None and len(got[1]) else "-")
            pt = rec.get("pretext") if arm not in UNTRAINED_HEAD else None
            vals.append(f"{pt['pretext_test_acc']:.1f}" if pt else "-")
            row.append(" / ".join(vals))
        if any(c != "not run" for c in row):
            lines.append(f"| {LABELS[arm]} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def per_class_rows(recs: dict, arms: list[str], instances: list[int], seeds: list[int]) -> list[list[str]]:
    """Per-class test accuracy (all labels, finetuned) of every arm, mean over instances and seeds."""
    out = [["arm", "class", "accuracy", "runs"]]
    for arm in arms:
        acc: dict[str, list[float]] = {}
        for inst in instances:
            for seed in seeds:
                m = recs.get((inst, seed, arm), {}).get("stages", {}).get("evaluate_all", {})
                for c, a in (m.get("per_class_acc") or {}).items():
                    if a is not None:
                        acc.setdefault(c, []).append(a)
        for c, v in acc.items():
            out.append([arm, c, f"{sum(v) / len(v):.1f}", str(len(v))])
    return out


def reverse_table(recs: dict, instances: list[int], seeds: list[int]) -> str:
    """Where MoveUp and MoveDown test videos go when played backwards, per arm."""
    lines = ["| arm | played | MoveUp -> MoveUp | MoveUp -> MoveDown | MoveDown -> MoveDown | MoveDown -> MoveUp | runs |",
             "|---|---|---|---|---|---|---|"]
    for arm in REVERSED:
        for stage, played in (("evaluate_all", "forwards"), ("evaluate_reversed", "backwards")):
            tot: dict[tuple[str, str], int] = {}
            rows_n: dict[str, int] = {}
            runs = 0
            for inst in instances:
                for seed in seeds:
                    m = recs.get((inst, seed, arm), {}).get("stages", {}).get(stage, {})
                    conf = m.get("confusion")
                    if not conf:
                        continue
                    runs += 1
                    cls = conf["classes"]
                    for a in ("MoveUp", "MoveDown"):
                        if a not in cls:
                            continue
                        row = conf["counts"][cls.index(a)]
                        rows_n[a] = rows_n.get(a, 0) + sum(row)
                        for b in ("MoveUp", "MoveDown"):
                            tot[(a, b)] = tot.get((a, b), 0) + row[cls.index(b)]
            if runs:
                def pc(a, b):
                    return f"{100 * tot.get((a, b), 0) / max(rows_n.get(a, 0), 1):.0f} %"
                lines.append(f"| {LABELS[arm]} | {played} | {pc('MoveUp', 'MoveUp')} | {pc('MoveUp', 'MoveDown')} | "
                             f"{pc('MoveDown', 'MoveDown')} | {pc('MoveDown', 'MoveUp')} | {runs} |")
    return ("Time reversal (evaluate.py --reverse-time, finetuned on all labels): the share of each class's test "
            "videos predicted as MoveUp / MoveDown.\n\n" + "\n".join(lines) + "\n")


def write_outputs(root: Path, arms, instances, seeds, fractions, n_boot: int = 10000,
                  ledger: Path | None = None) -> tuple[str, list[str]]:
    """The tables of the cells under ``root`` and the records in ``ledger``; (table.md text, problems)."""
    recs, problems = gather(root, arms, instances, seeds, ledger)
    text, rows, record = build_table(root, arms, instances, seeds, fractions, n_boot, recs=recs, problems=problems)
    root.mkdir(parents=True, exist_ok=True)
    atomic.write_text(root / "table.md", text)
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    atomic.write_text(root / "table.csv", buf.getvalue())
    buf = io.StringIO()
    csv.writer(buf).writerows(per_class_rows(recs, arms, instances, seeds))
    atomic.write_text(root / "per_class.csv", buf.getvalue())
    atomic.write_text(root / "reverse_time.md", reverse_table(recs, instances, seeds))
    atomic.write_text(root / "cells.md", cells_table(recs, arms, instances, seeds, fractions))
    atomic.write_json(root / "controls.json", record)
    return text, problems


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def _ints(flag_name: str, s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise UsageError(flag_name, s, "must be comma-separated integers") from None
    if not out or min(out) < 0 or len(set(out)) != len(out):
        raise UsageError(flag_name, s, "must be distinct integers >= 0")
    return out


@dataclass
class ControlsFlags(Flags):
    """The flags of controls.py: which instances, seeds and arms, and where."""

    instances: str = flag("0,1,2", "data instances: make_demo.py --seed values, comma-separated")
    seeds: str = flag("0,1", "training seeds, comma-separated")
    arms: str = flag(",".join(ARMS), f"arms, comma-separated: {', '.join(ARMS)}")
    label_fractions: str = flag("0.25", "few-label finetunings besides all labels (comma-separated fractions)")
    preset: str = flag("demo", "the preset whose stage files every arm runs (configs/<preset>)")
    data_root: Path = flag(Path("data/demo-controls"), "instances are generated into <data-root>/seed<S>", type=Path)
    cache_dir: Path = flag(Path("data_cache/demo-controls"), "each instance is cached under <cache-dir>/seed<S>",
                           type=Path)
    dir: Path = flag(Path("runs/demo/controls"), "where the cells and the tables go", type=Path)
    ledger: Path = flag(None, "a folder of cell records (train/ledger.py; the measured ones: docs/results/controls): "
                               "every cell that finishes is recorded there, and the tables pool its records with the "
                               "cells under --dir", type=Path)
    bootstrap: int = flag(10000, "bootstrap resamples", lo=100)
    table_only: bool = flag(False, "rebuild the tables from what has finished; run nothing")
    plan: bool = flag(False, "say which cells of the design are recorded, done or still to run (with the "
                             "commands that run them, one per instance and seed); run nothing")
    overrides: list = flag([], "stage.flag=value for every stage (as in run_all.sh)", positional=True, nargs="*")
    config_file = False

    def check(self) -> None:
        presets.require(self.preset)
        self.instance_list = _ints("--instances", self.instances)
        self.seed_list = _ints("--seeds", self.seeds)
        self.arm_list = [a.strip() for a in self.arms.split(",") if a.strip()]
        bad = [a for a in self.arm_list if a not in ARMS]
        if bad or not self.arm_list:
            raise UsageError("--arms", self.arms, f"must be a comma-separated list of {', '.join(ARMS)}")
        if "mac" not in self.arm_list:
            self.arm_list.insert(0, "mac")          # every comparison is against MAC
        try:
            fr = [float(x) for x in self.label_fractions.split(",") if x.strip()]
        except ValueError:
            raise UsageError("--label-fractions", self.label_fractions, "must be comma-separated numbers") from None
        if any(not 0 < f < 1 for f in fr):  # "" (none): all labels only
            raise UsageError("--label-fractions", self.label_fractions, "each must be in (0, 1)")
        self.fractions = [1.0] + sorted(set(fr), reverse=True)
        self.override_list = presets.parse_overrides(self.overrides)
        self.settings = settings_hash(self.preset, self.overrides, self.fractions)


def settings_hash(preset: str, overrides, fractions) -> str:
    """What decides a cell's results besides its instance, seed, arm, frames and code: the preset's
    stage files, the overrides and the label fractions. A ledger record with the same hash and the
    same frames is the same experiment, so a later slice takes it instead of training it again."""
    d = presets.require(preset)
    files = {p.name: p.read_text() for p in sorted(d.glob("*.json"))}
    blob = json.dumps({"preset": preset, "files": files, "overrides": [str(o) for o in overrides],
                       "fractions": [float(f) for f in fractions]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def recorded_already(rec: dict | None, settings: str, frames_hash: str | None) -> str | None:
    """Why the cell whose ledger record is ``rec`` need not run again (None: it must run): the
    record has this run's settings and was evaluated on these frames."""
    if rec is None or rec.get("settings") != settings or frames_hash is None or rec.get("frames") != frames_hash:
        return None
    return f"recorded in {rec['_source']} (commit {str(rec.get('git'))[:10]}, the same settings and frames)"


def cells_to_take(args: "ControlsFlags", recorded: dict, inst: int, seed: int, frames_hash: str | None) -> dict:
    """{arm: why} for the arms of (instance, seed) whose ledger records stand for them (a slice
    measured in another sitting); a cell with a folder under --dir runs (resumes) as usual."""
    take = {}
    for arm in args.arm_list:
        d = cell_dir(args.dir, inst, seed, arm)
        why = None if d.exists() else recorded_already(recorded.get((inst, seed, arm)), args.settings, frames_hash)
        if why:
            take[arm] = why
    return take


def prepare_instance(sw, instance: int, overrides, cells: Path | None = None) -> str | None:
    """Generate the instance once and cache its frames once (the default masks are computed per
    clip); the frame cache's content hash (preprocess.cache.frames_content_hash; None when it
    cannot be opened). With ``cells`` (<dir>/cells), the manifest and content hashes are written
    to cells/seed<I>/frames.json, where train/ledger.py finds the content hash of a cell's cache."""
    import subprocess

    from preprocess.cache import DecodeParams, frames_content_hash, open_cache
    from train import ledger as L

    def identity() -> str | None:
        try:
            index = open_cache(sw.cache_dir, "demo", DecodeParams(), None)
            frames = frames_content_hash(index)
        except Exception:              # noqa: BLE001 - anything missing means: extract
            return None
        if cells is not None:
            atomic.write_json(cells / f"seed{instance}" / L.INSTANCE_FRAMES,
                              {"cache": index.manifest_hash, "frames": frames})
        return frames

    if not (sw.data_root / "ucfTrainTestlist").exists():
        sw.say(f"generating data instance {instance} in {sw.data_root}")
        subprocess.run([sys.executable, "preprocess/make_demo.py", "--data-root", str(sw.data_root), "--seed",
                        str(instance), *sw.config("demo"), *presets.stage_flags("demo", overrides)],
                       cwd=REPO, check=True)
    got = identity()
    if got is not None:
        return got
    p = subprocess.run([sys.executable, "preprocess/extract_masks.py", *sw.config("extract"), "--dataset", "demo",
                        "--data-root", str(sw.data_root), "--cache-dir", str(sw.cache_dir),
                        *presets.stage_flags("extract", overrides)], cwd=REPO)
    if p.returncode not in (0, 1):
        raise UsageError("--instances", instance, f"extraction of instance {instance} failed (exit {p.returncode})")
    return identity()                  # None: the stages will say what is wrong with the cache


def record_finished(args: "ControlsFlags", keys=None) -> list[str]:
    """Record the finished cells (slot.json status done) under --dir in --ledger, all of the run's
    or those of ``keys`` [(instance, seed, arm)]; the problems. A record already there with other
    results is kept and named (train/ledger.py: write)."""
    from train import ledger as L

    problems = []
    if keys is None:
        keys = [(i, s, a) for i in args.instance_list for s in args.seed_list for a in args.arm_list]
    for inst, seed, arm in keys:
        d = cell_dir(args.dir, inst, seed, arm)
        if not cell_finished(d):
            continue
        try:
            rec = L.from_cell(d, inst, seed, arm)
            if rec is not None:
                rec["settings"] = args.settings
                how, path = L.write(args.ledger, rec)
                if how == "written":
                    print(f"[controls] recorded {d} in {path}", flush=True)
        except ValueError as e:
            problems.append(str(e))
    return problems


def tables(args: "ControlsFlags") -> int:
    """Record what finished (with --ledger), write the tables, print table.md; 1 where something
    was left out or could not be recorded."""
    problems = record_finished(args) if args.ledger is not None else []
    text, left_out = write_outputs(args.dir, args.arm_list, args.instance_list, args.seed_list, args.fractions,
                                   args.bootstrap, args.ledger)
    print(text, end="")
    for p in problems + left_out:
        print(f"[controls] {p}", file=sys.stderr, flush=True)
    return 1 if problems or left_out else 0


def plan(args: "ControlsFlags") -> str:
    """What the design (--instances x --seeds x --arms) still needs: each cell is done or begun
    under --dir, recorded in --ledger with this run's settings (taken when its frames match the
    instance's, known once the instance is cached: cells/seed<I>/frames.json), or to run; then
    the commands that run the rest, one per (instance, seed), and their estimated time."""
    from train import ledger as L

    recorded, problems = L.load_dir(args.ledger) if args.ledger is not None else ({}, [])
    rows, todo = [], {}
    for inst in args.instance_list:
        try:
            known = json.loads((args.dir / "cells" / f"seed{inst}" / L.INSTANCE_FRAMES).read_text()).get("frames")
        except (OSError, ValueError):
            known = None
        for seed in args.seed_list:
            for arm in args.arm_list:
                d, rec = cell_dir(args.dir, inst, seed, arm), recorded.get((inst, seed, arm))
                # an instance not cached here yet: a record with these settings is taken if its frames match
                taken = rec is not None and (recorded_already(rec, args.settings, known) if known
                                             else rec.get("settings") == args.settings)
                if cell_finished(d):
                    state = f"done in {d}"
                elif d.exists():
                    state = f"begun in {d}: resumes"
                elif taken:
                    state = f"recorded in {rec['_source']}" + ("" if known else " (taken if the frames match)")
                elif rec is None:
                    state = "to run"
                else:
                    state = "to run (recorded with other settings)" if rec.get("settings") != args.settings \
                        else "to run (recorded on other frames)"
                if state.startswith(("begun", "to run")):
                    todo.setdefault((inst, seed), []).append(arm)
                rows.append(f"| {inst} | {seed} | {arm} | {state} |")
    minutes = {k: sum(DEMO_CELL_MINUTES[a] for a in arms) for k, arms in todo.items()}
    n_left = sum(len(a) for a in todo.values())
    estimate = (f", about {sum(minutes.values()) / 60:.1f} h on two CPU cores" if args.preset == "demo" and todo
                else "")
    out = [f"{len(rows)} cells: {len(rows) - n_left} recorded or done, {n_left} to run{estimate}", "",
           "| instance | seed | arm | state |", "|---|---|---|---|", *rows]
    if todo:
        ledger = f" --ledger {args.ledger}" if args.ledger is not None else ""
        extra = "".join(f" {o}" for o in args.overrides)
        fr = "" if args.label_fractions == "0.25" else f" --label-fractions {args.label_fractions}"
        out += ["", "To run the rest (each command is one sitting's slice; they may run on different machines and "
                "merge through the ledger):"]
        for (inst, seed), arms in todo.items():
            took = f"  # ~{minutes[(inst, seed)]} min" if args.preset == "demo" else ""
            out.append(f"  python train/controls.py --preset {args.preset} --instances {inst} --seeds {seed} "
                       f"--arms {','.join(arms)} --dir {args.dir}{ledger}{fr}{extra}{took}")
    return "\n".join(out + [f"[controls] {p}" for p in problems]) + "\n"


def main(argv=None) -> int:
    args = parse(ControlsFlags, argv, description=__doc__, prog="controls.py")
    if args.plan:
        print(plan(args), end="")
        return 0
    if args.table_only:
        return tables(args)
    from train import ledger as L

    t0 = time.time()
    failed = []
    recorded, problems = L.load_dir(args.ledger) if args.ledger is not None else ({}, [])
    for p in problems:
        print(f"[controls] {p}", file=sys.stderr, flush=True)
    for inst in args.instance_list:
        sw = instance_sweep(args, inst)
        frames_hash = prepare_instance(sw, inst, args.override_list, args.dir / "cells")
        for seed in args.seed_list:
            take = cells_to_take(args, recorded, inst, seed, frames_hash)
            for arm in args.arm_list:
                if arm in take:
                    sw.say(f"instance {inst} seed {seed} arm {arm}: {take[arm]}; not run again")
                    continue
                slot = Slot(inst, seed, arm, cell_dir(args.dir, inst, seed, arm))
                sw.say(f"instance {inst} seed {seed} arm {arm}: start")
                run_slot(sw, slot, args.fractions)
                sw.say(f"instance {inst} seed {seed} arm {arm}: {slot.status}"
                       + (f" ({'; '.join(slot.errors)})" if slot.errors else ""))
                if slot.errors:
                    failed.append(slot)
                elif args.ledger is not None:     # recorded as it finishes: an interrupted slice keeps it
                    for p in record_finished(args, [(inst, seed, arm)]):
                        print(f"[controls] {p}", file=sys.stderr, flush=True)
    status = tables(args)
    print(f"[controls] done in {time.time() - t0:.0f} s: {args.dir / 'table.md'}"
          + (f"; {len(failed)} slot(s) with failed stages" if failed else ""), flush=True)
    return 1 if failed else status


def console() -> None:
    """The ``mac-controls`` console command (pyproject.toml): the same as ``python train/controls.py``."""
    exit_with(main, "controls.py")


if __name__ == "__main__":
    console()
