"""Collect one run of the pipeline into results.json and summary.md, and print the results table.

    python train/report.py --run-dir runs/<dataset>/<run-id> [--preset demo] [--pretrain-dir DIR]
    python train/report.py --aggregate RUN_DIR RUN_DIR ... --out-dir DIR    # mean +- std over runs (seeds)

Reads what the stages left in the run directory (run_all.sh's layout):
  stages/<stage>.done            wall time and command of each finished stage (run_all.sh)
  pretrain/ finetune/ finetune_random/ finetune_scratch/ linear/ linear_random/
                                 config.json, metrics.jsonl (train/pretrain.py, finetune.py; linear*:
                                 finetune.py --freeze-backbone, the linear probe)
  evaluate/ evaluate_random/ evaluate_scratch/ evaluate_linear/ evaluate_linear_random/
                                 metrics.json (train/evaluate.py)
  retrieve/ retrieve_random/     metrics.json (train/retrieve.py)
and writes
  results.json        resolved config of every stage, git commit, cache manifest hash and mask
                      parameters, seeds, devices, metrics, wall time per stage
  summary.md          results table, wall times, loss/accuracy curves (curves_<stage>.png) and pictures
                      (train/visualize.py), each drawn when its inputs exist: preview_train.png (the first
                      training samples of the pretraining: frames | mask | MAC clip), the confusion matrix
                      of evaluate/, cam_test.png (Grad-CAM of the finetuned model on a few test videos);
                      a picture that cannot be drawn leaves a warning line, never a failed report
  results_table.md    the table alone (run_all.sh prints it)
The pretraining may live outside the run directory (the hmdb51 preset reuses a UCF101 one):
--pretrain-dir. Missing stages are reported, not fatal; `results["missing"]` lists every expected
metric that is absent.
"""
from __future__ import annotations

import datetime
import json
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):   # run as `python train/report.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import atomic, presets
from core.errors import UsageError, exit_with
from core.flags import Flags, flag, parse

EVAL_KEYS = ("clip_top1", "clip_top5", "video_top1", "video_top5", "mean_class_acc")
RETRIEVAL_KEYS = ("R@1", "R@5", "R@10", "R@20", "R@50")
TRAIN_STAGES = ("pretrain", "finetune", "finetune_random", "finetune_scratch", "linear", "linear_random")
EVAL_STAGES = ("evaluate", "evaluate_random", "evaluate_scratch", "evaluate_linear", "evaluate_linear_random")
RETRIEVE_STAGES = ("retrieve", "retrieve_random")
STAGE_ORDER = ("data", "preflight_ucf101", "preflight", "extract_ucf101", "extract", "pretrain", "finetune",
               "finetune_random", "finetune_scratch", "linear", "linear_random", "evaluate", "evaluate_random",
               "evaluate_scratch", "evaluate_linear",
               "evaluate_linear_random", "retrieve", "retrieve_random", "summary")
# (label, training stage, evaluation stage): the recognition rows
VARIANTS = (("MAC-pretrained, finetuned", "finetune", "evaluate"),
            ("from scratch, MAC's total steps", "finetune_scratch", "evaluate_scratch"),
            ("random init, finetuning steps only", "finetune_random", "evaluate_random"),
            ("MAC-pretrained, linear probe", "linear", "evaluate_linear"),
            ("random features, linear probe", "linear_random", "evaluate_linear_random"))
# (label, retrieval stage): the backbone before any finetuning
RETRIEVALS = (("MAC-pretrained", "retrieve"), ("random features", "retrieve_random"))
# MAC minus its baselines, the numbers a reader wants first (the compute-matched one first):
# (what, against, stage, key, stage, key); the gains' keys read "<what> vs <against>"
GAINS = (("finetuned video top-1", "from scratch, same total steps", "evaluate", "video_top1",
          "evaluate_scratch", "video_top1"),
         ("finetuned video top-1", "random init, finetuning steps only", "evaluate", "video_top1",
          "evaluate_random", "video_top1"),
         ("linear probe video top-1", "random features", "evaluate_linear", "video_top1",
          "evaluate_linear_random", "video_top1"),
         ("retrieval R@1", "random features", "retrieve", "R@1", "retrieve_random", "R@1"))
PRETEXT_KEYS = ("acc", "test_acc", "chance", "loss_cls", "test_loss")
# docs/method.md section 6: UCF101 top-1 after finetuning, MAC-SC-2 R(2+1)D-18 UCF101 pretraining; HMDB51 (R(2+1)D-10)
PAPER = {"ucf101": "paper (MAC-SC-2, R(2+1)D-18, UCF101 pretraining): video top-1 84.8",
         "hmdb51": "paper (MAC-SC-2, R(2+1)D-10, Table 1): HMDB51 top-1 53.2"}


# --------------------------------------------------------------------------------------------
# Reading


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:          # a line cut by a kill: skip it
            continue
    return out


def read_markers(run_dir: Path) -> dict:
    out = {}
    for p in sorted((run_dir / "stages").glob("*.done")):
        out[p.name[:-len(".done")]] = read_json(p) or {}
    return out


def training_summary(records: list[dict]) -> dict:
    """Final numbers of a training stage from its metrics.jsonl: the last full-epoch record
    (train loss/acc averages, validation) plus the epoch count and the best validation."""
    epochs = [r for r in records if r.get("kind") == "epoch" and not r.get("partial")]
    if not epochs:
        return {}
    last = epochs[-1]
    out = {k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
           and k not in ("time", "partial")}
    out["epochs"] = int(last.get("epoch", len(epochs) - 1)) + 1
    vals = [r["val_acc"] for r in epochs if "val_acc" in r]
    if vals:
        out["best_val_acc"] = max(vals)
    out["train_seconds"] = round(sum(r.get("epoch_time", 0.0) for r in epochs), 2)
    return out


def cache_info(cfg: dict, cache_dir: str | None) -> dict:
    """Manifest hash and parameters of the cache a training stage read (re-derived from its config)."""
    from preprocess.cache import CacheError, DecodeParams, MaskParams, open_cache

    decode = DecodeParams(int(cfg.get("short_side", 128)), int(cfg.get("jpeg_quality", 90)))
    masks, strides = None, ()
    if "lam" in cfg:
        masks = MaskParams(int(cfg["lam"]), float(cfg["m"]))
        if cfg.get("mask_source", "cache") == "cache":   # runs from before the option read mask sets
            strides = tuple(sorted(set(int(s) for s in cfg.get("strides", (1, 2, 3, 4)))))
    out = {"dataset": cfg.get("dataset"), "decode": decode.key(),
           "masks": None if masks is None else {"key": masks.key(), "lambda": masks.lam, "m": masks.m,
                                                "strides": list(strides), "source": cfg.get("mask_source", "cache"),
                                                "mode": cfg.get("mask_mode", "soft"), "dilate": cfg.get("dilate", True),
                                                "mask_set": cfg.get("mask_set") or None}}
    try:
        index = open_cache(cache_dir or cfg.get("cache_dir", "data_cache"), cfg.get("dataset", "ucf101"), decode,
                           masks, strides, mask_set=cfg.get("mask_set") or "")
        out.update(manifest_hash=index.manifest_hash, root=str(index.root), videos=len(index))
    except (CacheError, OSError, KeyError, ValueError) as e:
        out.update(manifest_hash=None, error=str(e).splitlines()[0])
    return out


def collect(run_dir: Path, preset: str | None = None, pretrain_dir: Path | None = None,
            cache_dir: str | None = None) -> dict:
    from train.utils.log import git_commit

    run_dir = Path(run_dir)
    markers = read_markers(run_dir)
    dirs = {s: run_dir / s for s in TRAIN_STAGES}
    if pretrain_dir is not None:
        dirs["pretrain"] = Path(pretrain_dir)
    run_args = (run_dir / "run_args.txt").read_text().strip() if (run_dir / "run_args.txt").exists() else None
    if preset is None and run_args:
        preset = presets.read_signature(run_args).get("preset")

    res: dict = {"run_dir": str(run_dir), "run_id": run_dir.name, "dataset": run_dir.parent.name, "preset": preset,
                 "run_args": run_args, "generated": datetime.datetime.now().isoformat(timespec="seconds"),
                 "git": git_commit(), "stages": {}, "configs": {}, "seeds": {}, "devices": {}, "cache": {},
                 "metrics": {}, "wall_seconds": {}}
    for stage, d in dirs.items():
        cj = read_json(d / "config.json")
        if cj is None:
            continue
        cfg = cj.get("config", {})
        res["configs"][stage] = cfg
        res["seeds"][stage] = cfg.get("seed")
        res["devices"][stage] = cj.get("device")
        res["stages"][stage] = {"dir": str(d), "git": cj.get("git"), "world_size": cj.get("world_size"),
                                "torch": cj.get("torch"), "backbone": cj.get("backbone", cfg.get("backbone")),
                                "init": (cj.get("init") or {}).get("path") or (cj.get("init") or {}).get("kind")}
        res["metrics"][stage] = training_summary(read_jsonl(d / "metrics.jsonl"))
        res["cache"][stage] = cache_info(cfg, cache_dir)
    for stage in (*EVAL_STAGES, *RETRIEVE_STAGES):
        m = read_json(run_dir / stage / "metrics.json")
        if m is None:
            continue
        res["metrics"][stage] = m.get("metrics", {})
        res["configs"][stage] = {k: v for k, v in m.items() if k not in ("metrics", "wall_seconds")}
        res["devices"][stage] = m.get("device")
        res["stages"][stage] = {"dir": str(run_dir / stage), "source": m.get("checkpoint") or m.get("source")}
    pt_cache = res["cache"].get("pretrain", {})
    res["mask_params"] = pt_cache.get("masks")
    res["cache_manifest_hash"] = pt_cache.get("manifest_hash") or res["cache"].get("finetune", {}).get("manifest_hash")

    for name, rec in sorted(markers.items(), key=lambda kv: _stage_rank(kv[0])):
        if "wall_seconds" in rec:
            res["wall_seconds"][name] = rec["wall_seconds"]
        res["stages"].setdefault(name, {})["finished"] = rec.get("finished")
        res["stages"][name]["command"] = rec.get("command")
    res["wall_seconds"]["total"] = round(sum(v for k, v in res["wall_seconds"].items() if k != "total"), 2)
    pre = read_jsonl(dirs["pretrain"] / "metrics.jsonl")
    res["pretext"] = pretext_summary(pre)
    res["warnings"] = [r.get("message") for r in pre if r.get("kind") == "warning"]
    res["intervals"] = intervals(run_dir)
    res["gains"] = {f"{what} vs {against}": round(res["metrics"][a][ka] - res["metrics"][b][kb], 2)
                    for what, against, a, ka, b, kb in GAINS
                    if ka in (res["metrics"].get(a) or {}) and kb in (res["metrics"].get(b) or {})}
    res["chain"] = chain_switches(preset, run_args)
    res["missing"] = missing_metrics(res)
    return res


def chain_switches(preset: str | None, run_args: str | None) -> dict | None:
    """Which baselines and probes the run's chain ran: the preset's chain.json, then the run's
    chain.* overrides (run_args.txt); None where the preset's file cannot be read."""
    if not preset:
        return None
    try:
        chain = presets.read_chain(presets.stage_file(preset, "chain"))
    except Exception:                  # noqa: BLE001 - an unknown preset: guess from the stages present
        return None
    overrides = presets.read_signature(run_args or "").get("overrides", [])
    try:
        chain.update(presets.chain_overrides([o for o in overrides if o.startswith("chain.")]))
    except UsageError:
        return None
    return chain


def intervals(run_dir: Path) -> dict:
    """95 % bootstrap intervals over the test videos of every evaluation's video top-1, and for each
    gain of GAINS between two evaluations the paired interval of the difference and McNemar's
    exact test on the same videos (train/stats.py); {} where scores.npz files are missing."""
    import numpy as np

    from train import stats

    correct = {}
    for stage in EVAL_STAGES:
        path = Path(run_dir) / stage / "scores.npz"
        if path.is_file():
            names, c, _, _ = stats.load_correct(path)
            order = np.argsort(names)
            correct[stage] = (names[order], c[order])
    out: dict = {"video_top1": {}, "gains": {}}
    for stage, (_, c) in correct.items():
        ci = stats.bootstrap_ci({0: c[None]}, n_boot=10000)
        out["video_top1"][stage] = {"lo": round(ci["lo"], 2), "hi": round(ci["hi"], 2)}
    for what, against, a, ka, b, kb in GAINS:
        if ka == kb == "video_top1" and a in correct and b in correct and np.array_equal(correct[a][0], correct[b][0]):
            ca, cb = correct[a][1], correct[b][1]
            d = stats.paired_bootstrap_diff({0: ca[None]}, {0: cb[None]}, n_boot=10000)
            mc = stats.mcnemar(cb, ca)                 # b01: the baseline wrong where MAC is right
            out["gains"][f"{what} vs {against}"] = {"lo": round(d["lo"], 2), "hi": round(d["hi"], 2),
                                                     "mcnemar": mc}
    return out


def pretext_summary(records: list[dict]) -> dict:
    """The pretext's numbers: the last epoch's train accuracy (per segment too), the last validation
    and test accuracies measured, and the chance levels, so that learning can be judged against
    guessing."""
    epochs = [r for r in records if r.get("kind") == "epoch" and not r.get("partial")]
    if not epochs:
        return {}
    last = epochs[-1]
    tested = [r for r in epochs if "test_acc" in r]
    out = {k: last[k] for k in last if k.startswith(("acc", "chance", "mask_mean")) and k != "acc_con"}
    out["epochs"] = last.get("epoch", 0) + 1
    out["steps"] = last.get("step")
    if tested:
        out.update({k: tested[-1][k] for k in tested[-1] if k.startswith("test_acc")})
        out["test_videos"] = tested[-1].get("test_videos")
        out["test_epoch"] = tested[-1].get("epoch", 0) + 1
    validated = [r for r in epochs if "val_acc" in r]
    if validated:
        out["val_acc"] = validated[-1]["val_acc"]
        out["val_videos"] = validated[-1].get("val_videos")
    if out.get("chance") and "test_acc" in out:
        out["test_acc_over_chance"] = out["test_acc"] / out["chance"]
    return out


def _stage_rank(name: str) -> int:
    return STAGE_ORDER.index(name) if name in STAGE_ORDER else len(STAGE_ORDER)


def expected_metrics(res: dict) -> dict:
    want = {"pretrain": ("loss",), "finetune": ("loss", "acc"), "evaluate": EVAL_KEYS, "retrieve": RETRIEVAL_KEYS}
    chain = res.get("chain")
    if chain is not None:              # what the chain ran: chain.json and the chain.* overrides
        if chain["random-baseline"]:
            want.update({"finetune_random": ("loss", "acc"), "evaluate_random": EVAL_KEYS,
                         "retrieve_random": RETRIEVAL_KEYS})
        if chain["scratch-baseline"]:
            want.update({"finetune_scratch": ("loss", "acc"), "evaluate_scratch": EVAL_KEYS})
        if chain["linear-probe"]:
            want.update({"linear": ("loss", "acc"), "evaluate_linear": EVAL_KEYS})
            if chain["random-baseline"]:
                want.update({"linear_random": ("loss", "acc"), "evaluate_linear_random": EVAL_KEYS})
        return want
    if str(res.get("preset") or "").startswith("demo") or any(s.endswith("_random") for s in res["stages"]):
        want.update({"finetune_random": ("loss", "acc"), "evaluate_random": EVAL_KEYS,
                     "retrieve_random": RETRIEVAL_KEYS})
    if res.get("preset") == "demo" or "finetune_scratch" in res["stages"]:
        want.update({"finetune_scratch": ("loss", "acc"), "evaluate_scratch": EVAL_KEYS})
    if str(res.get("preset") or "").startswith("demo") or "linear" in res["stages"]:
        want.update({"linear": ("loss", "acc"), "linear_random": ("loss", "acc"), "evaluate_linear": EVAL_KEYS,
                     "evaluate_linear_random": EVAL_KEYS})
    return want


def missing_metrics(res: dict) -> list[str]:
    out = []
    for stage, keys in expected_metrics(res).items():
        got = res["metrics"].get(stage) or {}
        out += [f"{stage}.{k}" for k in keys if k not in got]
    return out


# --------------------------------------------------------------------------------------------
# Writing


def _fmt(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _test_size(res: dict) -> str:
    n = [(res["metrics"].get(s) or {}).get("num_videos") for s in EVAL_STAGES]
    n = [x for x in n if x]
    return f", {n[0]} test videos" if n else ""


def results_table(res: dict) -> str:
    m = res["metrics"]
    split = (res["configs"].get("evaluate") or {}).get("split", 1)
    lines = [f"Results: {res['dataset']} run {res['run_id']} (split {split}, test set{_test_size(res)}; percent)", ""]
    rows = [v for v in VARIANTS if v[2] in m or v[1] in m]
    if rows:
        pt_steps = (m.get("pretrain") or {}).get("step")
        lines += ["| recognition | " + " | ".join(EVAL_KEYS) + " | training steps |",
                  "|" + "---|" * (2 + len(EVAL_KEYS))]
        for label, tr, ev in rows:
            e = m.get(ev) or {}
            st = (m.get(tr) or {}).get("step")
            pre = pt_steps if label.startswith("MAC") and pt_steps else None
            steps = "-" if st is None else (f"{pre} + {st}" if pre else f"{st}")
            ci = ((res.get("intervals") or {}).get("video_top1") or {}).get(ev)
            cells = [_fmt(e.get(k)) + (f" [{ci['lo']:.1f}, {ci['hi']:.1f}]" if k == "video_top1" and ci else "")
                     for k in EVAL_KEYS]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {steps} |")
        lines += ["", "Recognition: 10-clip test protocol, read once at the end (every choice is made on the "
                      "validation split where the preset has one); video top-1 with its 95 % bootstrap interval over "
                      "the test videos (one data instance, one seed: `bash run_all.sh demo-controls` for more); "
                      "finetuned = every layer trained on the labels, linear probe = a linear classifier on the "
                      "frozen backbone (random features: BN statistics estimated on training clips); training steps "
                      "= pretraining + labelled (the step count of each stage's last epoch).", ""]
    rrows = [v for v in RETRIEVALS if v[1] in m]
    if rrows:
        lines += ["| retrieval (backbone before finetuning) | " + " | ".join(RETRIEVAL_KEYS) + " |",
                  "|" + "---|" * (1 + len(RETRIEVAL_KEYS))]
        for label, rt in rrows:
            lines.append(f"| {label} | " + " | ".join(_fmt((m.get(rt) or {}).get(k)) for k in RETRIEVAL_KEYS) + " |")
        lines += ["", "Retrieval: test videos as queries, train videos as gallery, a hit is the same class in the top k.", ""]
    p = res.get("pretext") or {}
    if p:
        seg = " / ".join(f"{100 * p[f'test_acc_seg{j}']:.1f}" for j in range(8) if f"test_acc_seg{j}" in p)
        lines += [f"Pretext (alpha-tuple classification): test accuracy {_fmt(100 * p['test_acc'] if 'test_acc' in p else None)} "
                  f"against chance {_fmt(100 * p['chance'] if p.get('chance') else None)}"
                  + (f" ({p['test_acc_over_chance']:.1f}x chance; per segment {seg} against "
                     f"{100 * p['chance_seg']:.1f})" if "test_acc_over_chance" in p else "")
                  + (f"; validation accuracy {_fmt(100 * p['val_acc'])} ({p.get('val_videos')} videos)"
                     if "val_acc" in p else "")
                  + f"; train accuracy {_fmt(100 * p['acc'] if 'acc' in p else None)} at the last epoch "
                  f"({p.get('epochs')} epochs, {p.get('steps')} steps).", ""]
    for label, gain in (res.get("gains") or {}).items():
        what, _, against = label.partition(" vs ")
        g = ((res.get("intervals") or {}).get("gains") or {}).get(label)
        extra = ""
        if g:
            mc = g["mcnemar"]
            p = "p < 0.001" if mc["p"] < 0.001 else f"p = {mc['p']:.3f}"
            extra = (f" (95 % CI [{g['lo']:+.1f}, {g['hi']:+.1f}], paired over the test videos; McNemar "
                     f"{mc['b01']}:{mc['b10']}, {p})")
        lines.append(f"- MAC-pretrained minus {against or 'random init'}, {what}: {gain:+.1f} points{extra}")
    for w in res.get("warnings") or []:
        lines += ["", "**" + w.splitlines()[0] + "** (see the pretraining log)"]
    if res.get("dataset") in PAPER and not str(res.get("preset") or "").startswith("demo"):
        lines += ["", PAPER[res["dataset"]]]
    return "\n".join(lines) + "\n"


def wall_table(res: dict) -> str:
    lines = ["| stage | wall time |", "|---|---|"]
    for k, v in res["wall_seconds"].items():
        lines.append(f"| {k} | {v:.0f} s ({v / 60:.1f} min) |")
    return "\n".join(lines) + "\n"


def plot_curves(records: list[dict], title: str, path: Path) -> bool:
    """Losses and accuracies against the step: one panel each. False when there is nothing to plot."""
    train = [r for r in records if r.get("kind") == "train"]
    epochs = [r for r in records if r.get("kind") == "epoch" and not r.get("partial")]
    if not train and not epochs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_keys = sorted({k for r in train for k in r if k.startswith("loss")})
    acc_keys = sorted({k for r in train for k in r if k.startswith("acc") and not k.startswith("acc_seg")})
    for k in loss_keys:
        ax1.plot([r["step"] for r in train if k in r], [r[k] for r in train if k in r], label=k, lw=1.2)
    for k in ("val_loss", "test_loss"):
        pts = [(r["step"], r[k]) for r in epochs if k in r]
        if pts:
            ax1.plot(*zip(*pts), "o--", label=k, ms=4)
    for k in acc_keys:
        ax2.plot([r["step"] for r in train if k in r], [100 * r[k] for r in train if k in r], label=f"train {k}", lw=1.2)
    for k in ("val_acc", "test_acc"):
        pts = [(r["step"], 100 * r[k]) for r in epochs if k in r]
        if pts:
            ax2.plot(*zip(*pts), "o--", label=k, ms=4)
    chance = next((r["chance"] for r in epochs if r.get("chance")), None)
    if chance:
        ax2.axhline(100 * chance, color="grey", ls=":", lw=1.2, label=f"chance ({100 * chance:.3g} %)")
    ax1.set(xlabel="step", ylabel="loss", title=f"{title}: loss")
    ax2.set(xlabel="step", ylabel="accuracy (%)", title=f"{title}: accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_json(path: Path, obj) -> None:
    atomic.write_json(path, obj)


def _picture_failed(what: str, e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    why = f"{type(e).__name__}: {msg[0] if msg else ''}".rstrip(": ")
    print(f"[report] warning: {what} not drawn ({why})", file=sys.stderr, flush=True)
    return f"- ({what} not drawn: {why})"


def pictures(run_dir: Path, pretrain_dir: Path | None = None, cache_dir: str | None = None,
             num: int = 3) -> list[str]:
    """The summary's pictures (markdown lines), each only if its inputs exist: the first `num`
    training samples of the pretraining as the trainer drew them (frames | mask | MAC clip), the
    confusion matrix of the evaluation, and Grad-CAMs of the finetuned model on `num` test videos.
    A picture that fails to draw becomes a warning line: it never fails the report."""
    run_dir = Path(run_dir)
    pt = Path(pretrain_dir) if pretrain_dir else run_dir / "pretrain"
    md: list[str] = []
    if (pt / "config.json").is_file():
        try:
            from train.visualize import preview_training_samples

            png = preview_training_samples(pt / "config.json", run_dir / "preview_train.png", num=num,
                                           cache_dir=cache_dir)
            md += ["### Training samples", "",
                   f"The first {num} samples of pretraining epoch 0 as the trainer drew them: frames, mask, MAC clip "
                   "(the network's input, normalisation undone; alpha written on each segment's first frame). "
                   "Other mask sets side by side, one block per stride: `python train/visualize.py preview "
                   f"--pretrain-config {pt / 'config.json'}{f' --cache-dir {cache_dir}' if cache_dir else ''} "
                   "--lambda 10 30 60`.", "", f"![training samples]({png.name})", ""]
        except Exception as e:   # noqa: BLE001 - a picture must never fail the report
            md += [_picture_failed("training-sample preview", e), ""]
    conf = run_dir / "evaluate" / "confusion.png"
    if conf.is_file():
        md += ["### Confusion matrix (MAC-pretrained, finetuned)", "", "![confusion](evaluate/confusion.png)", ""]
    ckpt, preds = run_dir / "finetune" / "last.pt", run_dir / "evaluate" / "predictions.csv"
    if ckpt.is_file() and preds.is_file():
        try:
            from train.visualize import cam_strip

            png = cam_strip(ckpt, run_dir / "cam_test.png", preds, num=num, cache_dir=cache_dir)
            cmp = run_dir / "finetune_random" / "last.pt"
            cd = f" --cache-dir {cache_dir}" if cache_dir else ""
            more = (f" Beside random init, picked by right and wrong: `python train/visualize.py cam --checkpoint {ckpt} "
                    f"--compare {cmp}{cd}`." if cmp.is_file() else "")
            md += ["### Class activation maps (finetuned, test videos)", "",
                   "Grad-CAM on the last convolutional stage for the predicted class, beside the frames and their "
                   f"change masks (right and wrong predictions).{more}", "", f"![class activation maps]({png.name})", ""]
        except Exception as e:   # noqa: BLE001 - a picture must never fail the report
            md += [_picture_failed("class activation maps", e), ""]
    return md


def write_report(res: dict, pretrain_dir: Path | None = None, cache_dir: str | None = None,
                 draw_pictures: bool = True) -> str:
    run_dir = Path(res["run_dir"])
    table = results_table(res)
    atomic.write_text(run_dir / "results_table.md", table)
    write_json(run_dir / "results.json", res)
    plots = []
    for stage in TRAIN_STAGES:
        d = Path(pretrain_dir) if (stage == "pretrain" and pretrain_dir) else run_dir / stage
        png = run_dir / f"curves_{stage}.png"
        if plot_curves(read_jsonl(d / "metrics.jsonl"), stage, png):
            plots.append((stage, png.name))
    md = [f"# MAC run `{res['run_id']}` ({res['dataset']}, preset {res.get('preset')})", "",
          f"Generated {res['generated']}; git {(res['git'] or {}).get('commit')}"
          f"{' (dirty)' if (res['git'] or {}).get('dirty') else ''}; devices "
          + ", ".join(f"{k}: {v}" for k, v in res["devices"].items() if v), "",
          table, "## Provenance", "",
          f"- cache manifest hash: `{res.get('cache_manifest_hash')}`; masks: `{res.get('mask_params')}`",
          f"- seeds: {res['seeds']}",
          f"- run arguments: `{res.get('run_args')}`",
          "- resolved configs: `results.json` -> `configs`", ""]
    for stage in TRAIN_STAGES:
        s = res["metrics"].get(stage)
        if s:
            keys = [k for k in ("epochs", "loss", "acc", "loss_cls", "loss_con", "acc_con", "val_acc", "best_val_acc")
                    if k in s]
            md.append(f"- {stage} (last epoch): " + ", ".join(
                f"{k} {s[k]:.4g}" if isinstance(s[k], float) else f"{k} {s[k]}" for k in keys))
    if res.get("missing"):
        md += ["", f"**Missing metrics**: {', '.join(res['missing'])}"]
    md += ["", "## Wall time per stage", "", wall_table(res), "## Curves", ""]
    md += [f"![{s}]({p})" for s, p in plots] or ["(no metrics.jsonl found)"]
    if draw_pictures:
        pics = pictures(run_dir, pretrain_dir, cache_dir)
        if pics:
            md += ["", "## Pictures", ""] + pics
    atomic.write_text(run_dir / "summary.md", "\n".join(md) + "\n")
    return table


# --------------------------------------------------------------------------------------------
# Several runs of one preset (seeds): mean +- std of every number


def _stats(values: list[float]) -> dict:
    import statistics

    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def aggregate(run_dirs: list[Path], out_dir: Path) -> tuple[dict, str]:
    """Combine the results.json of several runs (e.g. demo-seed0..2) into mean +- std (sample
    standard deviation over runs) of every metric, the pretext and the gains."""
    runs = []
    for d in run_dirs:
        r = read_json(Path(d) / "results.json")
        if r is None:
            raise SystemExit(f"{d}: no results.json (run its summary stage first)")
        runs.append(r)
    agg: dict = {"runs": [str(d) for d in run_dirs], "seeds": [r.get("seeds", {}).get("pretrain") for r in runs],
                 "generated": datetime.datetime.now().isoformat(timespec="seconds"), "metrics": {}, "pretext": {},
                 "gains": {}, "wall_seconds": {}}
    stages = sorted({s for r in runs for s in r["metrics"]}, key=_stage_rank)
    for stage in stages:
        keys = sorted({k for r in runs for k, v in (r["metrics"].get(stage) or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)})
        agg["metrics"][stage] = {k: _stats([r["metrics"][stage][k] for r in runs if k in (r["metrics"].get(stage) or {})])
                                 for k in keys}
    for section in ("pretext", "gains", "wall_seconds"):
        keys = sorted({k for r in runs for k, v in (r.get(section) or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)})
        agg[section] = {k: _stats([r[section][k] for r in runs if k in (r.get(section) or {})]) for k in keys}
    out_dir.mkdir(parents=True, exist_ok=True)
    table = aggregate_table(agg)
    write_json(out_dir / "results.json", agg)
    atomic.write_text(out_dir / "results_table.md", table)
    (out_dir / "summary.md").write_text(f"# MAC: {len(runs)} runs, mean +- std\n\nRuns: "
                                        + ", ".join(f"`{d}`" for d in agg["runs"]) + "\n\n" + table)
    return agg, table


def _ms(st: dict | None, scale: float = 1.0) -> str:
    if not st:
        return "-"
    return f"{scale * st['mean']:.1f} +- {scale * st['std']:.1f}"


def aggregate_table(agg: dict) -> str:
    m, n = agg["metrics"], len(agg["runs"])
    lines = [f"Mean +- std over {n} runs (seeds {agg['seeds']}); percent", ""]
    rows = [v for v in VARIANTS if v[2] in m]
    if rows:
        lines += ["| recognition | " + " | ".join(EVAL_KEYS) + " |", "|" + "---|" * (1 + len(EVAL_KEYS))]
        for label, _, ev in rows:
            lines.append(f"| {label} | " + " | ".join(_ms(m[ev].get(k)) for k in EVAL_KEYS) + " |")
        lines.append("")
    rrows = [v for v in RETRIEVALS if v[1] in m]
    if rrows:
        lines += ["| retrieval | " + " | ".join(RETRIEVAL_KEYS) + " |", "|" + "---|" * (1 + len(RETRIEVAL_KEYS))]
        for label, rt in rrows:
            lines.append(f"| {label} | " + " | ".join(_ms(m[rt].get(k)) for k in RETRIEVAL_KEYS) + " |")
        lines.append("")
    p = agg.get("pretext") or {}
    if "test_acc" in p:
        lines += [f"Pretext test accuracy {_ms(p['test_acc'], 100)} against chance {_ms(p.get('chance'), 100)} "
                  f"({_ms(p.get('test_acc_over_chance'))} x chance); train {_ms(p.get('acc'), 100)}.", ""]
    for label, st in (agg.get("gains") or {}).items():
        what, _, against = label.partition(" vs ")
        lines.append(f"- MAC-pretrained minus {against or 'random init'}, {what}: {st['mean']:+.1f} +- {st['std']:.1f} points "
                     f"(per run: {', '.join(f'{v:+.1f}' for v in st['values'])})")
    if "total" in (agg.get("wall_seconds") or {}):
        lines += ["", f"Wall time per run: {_ms(agg['wall_seconds']['total'], 1 / 60)} min"]
    return "\n".join(lines) + "\n"


@dataclass
class ReportFlags(Flags):
    """The flags of report.py: one run directory, or several to combine (--aggregate)."""

    run_dir: Path = flag(None, "the run directory (runs/<dataset>/<run-id>)", type=Path)
    aggregate: list = flag(None, "run directories to combine (mean +- std)", type=Path, nargs="+")
    out_dir: Path = flag(None, "with --aggregate: where to write the combined results", type=Path)
    preset: str = flag(None, "default: from run_args.txt")
    pretrain_dir: Path = flag(None, "default: <run-dir>/pretrain", type=Path)
    cache_dir: str = flag(None, "default: each stage's config")
    strict: bool = flag(False, "exit 1 when an expected metric is missing")
    pictures: bool = flag(True, "draw the pictures (training samples, confusion matrix, class activation maps); "
                                "--no-pictures skips them")

    def check(self) -> None:
        if self.aggregate:
            if self.out_dir is None:
                raise UsageError("--aggregate", self.aggregate, "needs --out-dir (where the combined results go)")
            for d in self.aggregate:
                if not (d / "results.json").is_file():
                    raise UsageError("--aggregate", d, "no results.json there (run that run's summary stage first)")
            return
        if self.run_dir is None:
            raise UsageError("--run-dir", "(none)", "pass a run directory (or --aggregate RUN_DIR ... --out-dir DIR)")
        if not self.run_dir.is_dir():
            raise UsageError("--run-dir", self.run_dir, "no such directory")


def parse_args(argv=None) -> ReportFlags:
    return parse(ReportFlags, argv, description=__doc__.split("\n\n")[0], prog="report.py")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.aggregate:
        agg, table = aggregate(args.aggregate, args.out_dir)
        print(table, end="")
        print(f"[report] wrote {args.out_dir / 'results.json'} and {args.out_dir / 'summary.md'}")
        return agg
    res = collect(args.run_dir, args.preset, args.pretrain_dir, args.cache_dir)
    table = write_report(res, args.pretrain_dir, args.cache_dir, args.pictures)
    print(table, end="")
    print(f"[report] wrote {args.run_dir / 'results.json'} and {args.run_dir / 'summary.md'}"
          + (f"; missing metrics: {', '.join(res['missing'])}" if res["missing"] else ""))
    if args.strict and res["missing"]:
        sys.exit(1)
    return res


def console() -> None:
    """The ``mac-report`` console command (pyproject.toml): the same as ``python train/report.py``."""
    exit_with(main, "report.py")


if __name__ == "__main__":
    console()
