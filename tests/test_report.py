"""train/report.py: the per-run table (pretext against chance, gains) and the aggregation of
several runs into mean +- std, on fabricated run directories."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from train import report


def _run(root: Path, name: str, ft: float, rnd: float, lp: float, lpr: float, pretext: float, seed: int) -> Path:
    run = root / name
    run.mkdir(parents=True)
    ev = lambda top1: {"clip_top1": top1 - 2, "clip_top5": 99.0, "video_top1": top1, "video_top5": 100.0,
                       "mean_class_acc": top1, "num_videos": 108}
    res = {"metrics": {"evaluate": ev(ft), "evaluate_random": ev(rnd), "evaluate_linear": ev(lp),
                       "evaluate_linear_random": ev(lpr), "retrieve": {"R@1": 40.0 + seed, "R@5": 80.0},
                       "retrieve_random": {"R@1": 12.0, "R@5": 60.0}},
           "pretext": {"test_acc": pretext, "chance": 0.25, "test_acc_over_chance": pretext / 0.25, "acc": 0.8},
           "gains": {"finetuned video top-1": ft - rnd}, "wall_seconds": {"total": 700.0 + 10 * seed},
           "seeds": {"pretrain": seed}}
    (run / "results.json").write_text(json.dumps(res))
    return run


def test_aggregate_mean_std_and_table(tmp_path):
    runs = [_run(tmp_path, "s0", 90.0, 20.0, 60.0, 15.0, 0.80, 0),
            _run(tmp_path, "s1", 94.0, 18.0, 70.0, 17.0, 0.82, 1),
            _run(tmp_path, "s2", 98.0, 22.0, 80.0, 13.0, 0.84, 2)]
    agg, table = report.aggregate(runs, tmp_path / "agg")
    v = agg["metrics"]["evaluate"]["video_top1"]
    assert v["mean"] == pytest.approx(94.0) and v["std"] == pytest.approx(4.0) and v["values"] == [90.0, 94.0, 98.0]
    assert agg["gains"]["finetuned video top-1"]["mean"] == pytest.approx(74.0)
    assert agg["pretext"]["test_acc"]["mean"] == pytest.approx(0.82)
    assert agg["seeds"] == [0, 1, 2]
    assert "| MAC-pretrained, finetuned | 92.0 +- 4.0 | 99.0 +- 0.0 | 94.0 +- 4.0 |" in table
    assert "| random features, linear probe |" in table and "82.0 +- 2.0 against chance 25.0" in table
    assert "+74.0 +- 3.5 points (per run: +70.0, +76.0, +76.0)" in table
    assert json.loads((tmp_path / "agg" / "results.json").read_text())["runs"] == [str(r) for r in runs]
    with pytest.raises(SystemExit, match="no results.json"):
        report.aggregate([tmp_path / "missing"], tmp_path / "agg2")


def test_run_table_states_pretext_against_chance_and_gains(tmp_path):
    res = {"dataset": "demo", "run_id": "r", "preset": "demo", "configs": {}, "warnings": [],
           "metrics": json.loads((_run(tmp_path, "x", 90.0, 20.0, 60.0, 15.0, 0.8, 0) / "results.json").read_text())["metrics"],
           "pretext": {"test_acc": 0.8, "chance": 0.25, "chance_seg": 0.5, "test_acc_over_chance": 3.2,
                       "test_acc_seg0": 0.85, "test_acc_seg1": 0.9, "acc": 0.7, "epochs": 50, "steps": 1350},
           "gains": {"finetuned video top-1": 70.0}}
    table = report.results_table(res)
    assert "108 test videos" in table
    assert "test accuracy 80.0 against chance 25.0 (3.2x chance; per segment 85.0 / 90.0 against 50.0)" in table
    assert "finetuned video top-1: +70.0 points" in table
    res["warnings"] = ["WARNING: after a quarter of the pretraining ...\n  - mask coverage ..."]
    assert "**WARNING: after a quarter of the pretraining ...**" in report.results_table(res)


def test_the_expected_metrics_follow_the_presets_chain_and_its_overrides():
    """What counts as missing follows what the chain ran: the preset's chain.json, then the run's
    chain.* overrides as run_args.txt records them."""
    sig = "preset=demo pretrain_run=ucf101 cache_dir=c overrides=train.epochs=1 chain.linear-probe=false"
    demo = report.chain_switches("demo", sig)
    assert demo == {"random-baseline": True, "linear-probe": False, "scratch-baseline": True}
    want = report.expected_metrics({"chain": demo, "stages": {}})
    assert {"finetune_random", "finetune_scratch", "retrieve_random"} <= set(want)
    assert not {"linear", "linear_random", "evaluate_linear"} & set(want)
    ucf = report.chain_switches("ucf101", "preset=ucf101 pretrain_run=ucf101 cache_dir=c overrides=")
    assert set(report.expected_metrics({"chain": ucf, "stages": {}})) == {"pretrain", "finetune", "evaluate",
                                                                        "retrieve"}
    full = report.expected_metrics({"chain": report.chain_switches("demo", None), "stages": {}})
    assert {"linear_random", "evaluate_linear_random", "evaluate_scratch"} <= set(full)
    assert report.chain_switches("no-such-preset", sig) is None
