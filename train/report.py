"""Collect one run of the pipeline into results.json and summary.md, and print the results table.

    python train/report.py --run-dir runs/<dataset>/<run-id> [--preset demo] [--pretrain-dir DIR]

Reads what the stages left in the run directory (run_all.sh's layout):
  stages/<stage>.done            wall time and command of each finished stage (run_all.sh)
  pretrain/ finetune/ finetune_random/      config.json, metrics.jsonl (train/pretrain.py, finetune.py)
  evaluate/ evaluate_random/     metrics.json (train/evaluate.py)
  retrieve/ retrieve_random/     metrics.json (train/retrieve.py)
and writes
  results.json        resolved config of every stage, git commit, cache manifest hash and mask
                      parameters, seeds, devices, metrics, wall time per stage
  summary.md          results table, wall times, loss/accuracy curves (curves_<stage>.png)
  results_table.md    the table alone (run_all.sh prints it)
The pretraining may live outside the run directory (the hmdb51 preset reuses a UCF101 one):
--pretrain-dir. Missing stages are reported, not fatal; `results["missing"]` lists every expected
metric that is absent.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

EVAL_KEYS = ("clip_top1", "clip_top5", "video_top1", "video_top5", "mean_class_acc")
RETRIEVAL_KEYS = ("R@1", "R@5", "R@10", "R@20", "R@50")
TRAIN_STAGES = ("pretrain", "finetune", "finetune_random")
STAGE_ORDER = ("data", "preflight_ucf101", "preflight", "extract_ucf101", "extract", "pretrain", "finetune",
               "finetune_random", "evaluate", "evaluate_random", "retrieve", "retrieve_random", "summary")
# (label, finetuning stage, evaluation stage, retrieval stage)
VARIANTS = (("MAC-pretrained", "finetune", "evaluate", "retrieve"),
            ("random init", "finetune_random", "evaluate_random", "retrieve_random"))
# SPEC section 6: UCF101 top-1 after finetuning, MAC-SC-2 R(2+1)D-18 UCF101 pretraining; HMDB51 (R(2+1)D-10)
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
                                                "mode": cfg.get("mask_mode", "soft"), "dilate": cfg.get("dilate", True)}}
    try:
        index = open_cache(cache_dir or cfg.get("cache_dir", "data_cache"), cfg.get("dataset", "ucf101"), decode,
                           masks, strides)
        out.update(manifest_hash=index.manifest_hash, root=str(index.root), videos=len(index))
    except (CacheError, OSError, KeyError, ValueError) as e:
        out.update(manifest_hash=None, error=str(e).splitlines()[0])
    return out


def collect(run_dir: Path, preset: str | None = None, pretrain_dir: Path | None = None,
            cache_dir: str | None = None) -> dict:
    from train.engine import git_commit

    run_dir = Path(run_dir)
    markers = read_markers(run_dir)
    dirs = {s: run_dir / s for s in TRAIN_STAGES}
    if pretrain_dir is not None:
        dirs["pretrain"] = Path(pretrain_dir)
    run_args = (run_dir / "run_args.txt").read_text().strip() if (run_dir / "run_args.txt").exists() else None
    if preset is None and run_args and run_args.startswith("preset="):
        preset = run_args.split()[0].split("=", 1)[1]

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
    for stage in ("evaluate", "evaluate_random", "retrieve", "retrieve_random"):
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
    res["missing"] = missing_metrics(res)
    return res


def _stage_rank(name: str) -> int:
    return STAGE_ORDER.index(name) if name in STAGE_ORDER else len(STAGE_ORDER)


def expected_metrics(res: dict) -> dict:
    want = {"pretrain": ("loss",), "finetune": ("loss", "acc"), "evaluate": EVAL_KEYS, "retrieve": RETRIEVAL_KEYS}
    if res.get("preset") == "demo" or any(s.endswith("_random") for s in res["stages"]):
        want.update({"finetune_random": ("loss", "acc"), "evaluate_random": EVAL_KEYS,
                     "retrieve_random": RETRIEVAL_KEYS})
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


def results_table(res: dict) -> str:
    m = res["metrics"]
    rows = [v for v in VARIANTS if v[2] in m or v[3] in m or v[1] in m]
    head = ("| backbone init | clip top-1 | clip top-5 | video top-1 | video top-5 | mean class acc | "
            + " | ".join(RETRIEVAL_KEYS) + " |")
    lines = [f"Results: {res['dataset']} run {res['run_id']} (split "
             f"{(res['configs'].get('evaluate') or {}).get('split', 1)}, test set; percent)", "",
             head, "|" + "---|" * (1 + len(EVAL_KEYS) + len(RETRIEVAL_KEYS))]
    for label, _, ev, rt in rows:
        e, r = m.get(ev) or {}, m.get(rt) or {}
        cells = [_fmt(e.get(k)) for k in EVAL_KEYS] + [_fmt(r.get(k)) for k in RETRIEVAL_KEYS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Classification: the finetuned model, 10-clip test protocol. Retrieval (R@k): the backbone "
                  "before finetuning (pretrained, or random init), test videos as queries, train videos as gallery."]
    a, b = (m.get("evaluate") or {}).get("video_top1"), (m.get("evaluate_random") or {}).get("video_top1")
    if a is not None and b is not None:
        lines += ["", f"Finetuned video top-1: MAC-pretrained {a:.1f} vs random init {b:.1f} "
                      f"({a - b:+.1f} points from pretraining)"]
    if res.get("dataset") in PAPER and res.get("preset") != "demo":
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
    acc_keys = sorted({k for r in train for k in r if k.startswith("acc")})
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
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_report(res: dict, pretrain_dir: Path | None = None) -> str:
    run_dir = Path(res["run_dir"])
    table = results_table(res)
    (run_dir / "results_table.md").write_text(table)
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
    for stage in ("pretrain", "finetune", "finetune_random"):
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
    (run_dir / "summary.md").write_text("\n".join(md) + "\n")
    return table


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--preset", default=None, help="default: from run_args.txt")
    p.add_argument("--pretrain-dir", type=Path, default=None, help="default: <run-dir>/pretrain")
    p.add_argument("--cache-dir", default=None, help="default: each stage's config")
    p.add_argument("--strict", action="store_true", help="exit 1 when an expected metric is missing")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.run_dir.is_dir():
        raise SystemExit(f"no run directory {args.run_dir}")
    res = collect(args.run_dir, args.preset, args.pretrain_dir, args.cache_dir)
    table = write_report(res, args.pretrain_dir)
    print(table, end="")
    print(f"[report] wrote {args.run_dir / 'results.json'} and {args.run_dir / 'summary.md'}"
          + (f"; missing metrics: {', '.join(res['missing'])}" if res["missing"] else ""))
    if args.strict and res["missing"]:
        sys.exit(1)
    return res


if __name__ == "__main__":
    main()
