"""The whole pipeline through run_all.sh on tiny generated datasets in the real layouts (the demo:
make_demo, 2 classes x 3 groups x 1 clip), tiny config: demo-seeds over two seeds, one of its runs
again (every finished stage skipped via its marker, an interrupted one resumed), the guards
(changed settings, missing dataset), demo-large, and k400-ucf101."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["demo.classes=2", "demo.groups=3", "demo.clips=1", "demo.frames=16",
        "train.frames=4", "train.crop=32", "train.scales=32,36", "train.batch-size=2", "train.epochs=1",
        "train.workers=0", "train.progress=false", "pretrain.queue-size=16",
        "evaluate.num-clips=2", "evaluate.workers=0", "retrieve.num-clips=2", "retrieve.workers=0",
        "extract.workers=1"]
STAGES = ["data", "preflight", "extract", "pretrain", "finetune", "finetune_random", "finetune_scratch", "linear",
          "linear_random", "evaluate", "evaluate_random", "evaluate_scratch", "evaluate_linear",
          "evaluate_linear_random", "retrieve", "retrieve_random", "summary"]


def run_all(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(["bash", str(REPO / "run_all.sh"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_chain_demo_seeds_then_resume(tmp_path):
    """demo-seeds --seeds 0,2: the tiny demo chain for each seed on one generated dataset and cache
    (two seeds keep it short; the default list is 0, 1, 2), then mean +- std of every number; the
    seed-0 run's results and summary in detail; then that run again, directly (bash run_all.sh
    demo, the command demo-seeds ran for it): every stage skipped via its marker, an interrupted
    stage resumed, and other settings refused."""
    from train.report import EVAL_KEYS, RETRIEVAL_KEYS

    common = ["--data-root", str(tmp_path / "data"), "--runs-root", str(tmp_path / "runs"),
              "--cache-dir", str(tmp_path / "cache")]
    bad = run_all(tmp_path, "demo-seeds", "--seeds", "3", *common, *TINY)
    assert bad.returncode == 2 and "--seeds wants two or more" in bad.stderr and not (tmp_path / "data").exists()
    r = run_all(tmp_path, "demo-seeds", "--seeds", "0,2", *common, *TINY)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    runs = tmp_path / "runs" / "demo"

    # the aggregate over the seeds
    agg = json.loads((runs / "demo-seeds" / "results.json").read_text())
    assert agg["seeds"] == [0, 2] and len(agg["runs"]) == 2
    assert agg["metrics"]["evaluate"]["video_top1"]["n"] == 2 and "std" in agg["gains"]["finetuned video top-1 vs from scratch, same total steps"]
    per_seed = [json.loads((runs / f"demo-seed{s}" / "results.json").read_text()) for s in (0, 2)]
    assert [p["seeds"]["finetune"] for p in per_seed] == [0, 2]
    assert [p["configs"]["retrieve_random"]["seed"] for p in per_seed] == [0, 2]
    assert not (runs / "demo-seed1").exists()
    assert r.stdout.count("videos (2 classes") == 1                 # the data is made once ...
    assert r.stdout.count("(same parameters): nothing to do") == 1  # ... and found by the other run
    assert "Mean +- std over 2 runs" in r.stdout

    # one run in detail
    run = runs / "demo-seed0"
    res = per_seed[0]
    assert res["missing"] == []
    for stage in ("evaluate", "evaluate_random", "evaluate_scratch", "evaluate_linear", "evaluate_linear_random"):
        for k in EVAL_KEYS:
            assert 0.0 <= res["metrics"][stage][k] <= 100.0, (stage, k)
    for stage in ("retrieve", "retrieve_random"):
        assert set(RETRIEVAL_KEYS) <= set(res["metrics"][stage])
    for stage in ("pretrain", "finetune", "finetune_random", "linear", "linear_random"):
        assert {"loss", "acc", "epochs"} <= set(res["metrics"][stage]) and res["configs"][stage]["epochs"] == 1
        assert res["seeds"][stage] == 0 and res["devices"][stage]
    assert res["configs"]["linear"]["freeze_backbone"] and not res["configs"]["finetune"]["freeze_backbone"]
    # the scratch baseline: random init, as many epochs as the pretraining and the finetuning together
    assert res["configs"]["finetune_scratch"]["init"] == "random" and res["configs"]["finetune_scratch"]["epochs"] == 2
    # every evaluation with its interval over the test videos, each gain with its paired test
    for stage in ("evaluate", "evaluate_scratch", "evaluate_random"):
        ci = res["intervals"]["video_top1"][stage]
        assert ci["lo"] <= res["metrics"][stage]["video_top1"] <= ci["hi"]
    g = res["intervals"]["gains"]["finetuned video top-1 vs from scratch, same total steps"]
    assert g["lo"] <= res["gains"]["finetuned video top-1 vs from scratch, same total steps"] <= g["hi"]
    assert 0 <= g["mcnemar"]["p"] <= 1 and g["mcnemar"]["n"] == res["metrics"]["evaluate"]["num_videos"]
    # the validation split: carved from the training groups, excluded from pretraining and finetuning
    assert res["configs"]["finetune"]["val_fraction"] == 0.2 == res["configs"]["pretrain"]["val_fraction"]
    # the pretext against chance (k 2, n 2: 4 alpha tuples), and the MAC-minus-random gains
    assert res["pretext"]["chance"] == 0.25 and 0.0 <= res["pretext"]["test_acc"] <= 1.0
    assert set(res["gains"]) == {"finetuned video top-1 vs from scratch, same total steps",
                                 "finetuned video top-1 vs random init, finetuning steps only",
                                 "linear probe video top-1 vs random features", "retrieval R@1 vs random features"}
    assert res["configs"]["pretrain"]["crop"] == 32 and res["configs"]["finetune"]["init"].endswith("last.pt")
    # the preset files (configs/demo/*.json) reach every stage; the overrides above win over them
    assert res["configs"]["pretrain"]["method"] == "mac-s" and res["configs"]["pretrain"]["optimizer"] == "adamw"
    assert res["configs"]["linear"]["dropout"] == 0 and res["configs"]["finetune"]["backbone"] == "r2plus1d_10_w32"
    assert res["configs"]["evaluate"]["config_file"] == "configs/demo/evaluate.json"
    assert "configs/demo/pretrain.json" in json.loads((run / "pretrain" / "config.json").read_text())["argv"]
    assert res["mask_params"]["lambda"] == 30 and res["mask_params"]["m"] == 0.5
    assert res["cache_manifest_hash"] and "commit" in res["git"]
    assert set(STAGES) - {"summary"} <= set(res["wall_seconds"])
    # the random baseline retrieval saw the same clips as the pretrained one
    assert res["configs"]["retrieve_random"]["crop"] == res["configs"]["retrieve"]["crop"] == 32
    summary = (run / "summary.md").read_text()
    assert summary.count("| MAC-pretrained, finetuned |") == 1 and "| random features, linear probe |" in summary
    assert "against chance 25.0" in summary
    assert (run / "curves_pretrain.png").exists() and (run / "curves_finetune.png").exists()
    assert (run / "evaluate" / "confusion.png").exists()
    assert "| random init, finetuning steps only |" in r.stdout and "| from scratch, MAC's total steps |" in r.stdout
    markers = {s: (run / "stages" / f"{s}.done").stat().st_mtime_ns for s in STAGES}

    # the seed-0 run again, as demo-seeds ran it: every stage skipped via its marker, nothing
    # recomputed, the table printed again
    again = ["demo", "--run-id", "demo-seed0", *common, *TINY, "train.seed=0", "retrieve.seed=0"]
    r2 = run_all(tmp_path, *again)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    for s in STAGES:
        assert f"stage {s}: done already" in r2.stdout
    assert "=== stage" not in r2.stdout and "| MAC-pretrained, finetuned |" in r2.stdout
    assert markers == {s: (run / "stages" / f"{s}.done").stat().st_mtime_ns for s in STAGES}

    # an interrupted stage resumes: drop the last two markers and the summary, rerun
    for s in ("retrieve_random", "summary"):
        (run / "stages" / f"{s}.done").unlink()
    r3 = run_all(tmp_path, *again)
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert "=== stage retrieve_random" in r3.stdout and "=== stage pretrain" not in r3.stdout

    # the same run id with other settings is refused before anything runs
    r4 = run_all(tmp_path, *again, "finetune.lr=0.5")
    assert r4.returncode != 0 and "started with other settings" in r4.stderr




def test_missing_dataset_explains_layout(tmp_path):
    r = run_all(tmp_path, "ucf101", "--data-root", str(tmp_path / "nope"), "--runs-root", str(tmp_path / "runs"),
                "--cache-dir", str(tmp_path / "cache"), "--allow-cpu")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "Expected layout" in out and "ucfTrainTestlist" in out and "bash run_all.sh demo" in out
    assert "crcv.ucf.edu" in out


@pytest.mark.slow
def test_demo_large_preset_runs_on_tiny_settings(tmp_path):
    """demo-large (a GPU preset) wired end to end, here on CPU with tiny overrides: its own
    dataset root and cache, MAC-SC, its stages and the summary; its pretraining reads stored mask
    sets (--mask-source cache), so the extract stage stores those of its strides. The baselines
    and probes the demo chain above runs already are switched off by chain.* overrides, which
    this checks too (the stages that ran)."""
    small = [o for o in TINY if not o.startswith("extract.")] + ["extract.workers=1", "train.backbone=r2plus1d_10_w16",
                                                                 "retrieve.backbone=r2plus1d_10_w16",
                                                                 "pretrain.mask-source=cache", "pretrain.strides=1,2",
                                                                 "chain.random-baseline=false",
                                                                 "chain.linear-probe=false"]
    r = run_all(tmp_path, "demo-large", "--allow-cpu", "--data-root", str(tmp_path / "data"),
                "--runs-root", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), *small)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    res = json.loads((tmp_path / "runs" / "demo" / "demo-large" / "results.json").read_text())
    assert res["missing"] == [] and res["configs"]["pretrain"]["method"] == "mac-sc"
    assert res["configs"]["pretrain"]["mask_source"] == "cache"
    frame_set = next((tmp_path / "cache").glob("*/s*_q*/frames")).parent
    assert sorted(p.name for p in frame_set.glob("masks-*")) == ["masks-lam30_m0.5_stride1", "masks-lam30_m0.5_stride2"]
    assert res["configs"]["pretrain"]["dataset"] == "demo" and res["configs"]["pretrain"]["frames"] == 4
    stages = {p.stem for p in (tmp_path / "runs" / "demo" / "demo-large" / "stages").glob("*.done")}
    assert stages == {"data", "preflight", "extract", "pretrain", "finetune", "evaluate", "retrieve", "summary"}
    assert res["gains"] == {}            # no scratch run (chain.json), no random one, no probe (the overrides)


@pytest.mark.slow
def test_chain_k400_to_ucf101_on_tiny_trees(tmp_path, ffmpeg_exe):
    """k400-ucf101: pretraining on a Kinetics tree in the official layout (missing and broken
    clips reported, not fatal; a class subset cached under its own name), then finetuning and
    evaluation on a UCF101 tree."""
    from tests.conftest import make_ucf_layout
    from tests.test_kinetics import CLASSES as K_CLASSES, make_kinetics

    k400 = make_kinetics(tmp_path / "k400", ffmpeg_exe, per_class=True)
    ucf = make_ucf_layout(tmp_path / "ucf", ffmpeg_exe)
    subset = tmp_path / "two.txt"
    subset.write_text("".join(c + "\n" for c in sorted(K_CLASSES)[:2]))
    tiny = [o for o in TINY if not o.startswith("demo.")]
    args = ["k400-ucf101", "--allow-cpu", "--k400-root", str(k400["root"]), "--k400-subset", str(subset),
            "--data-root", str(ucf), "--runs-root", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--run-id", "tiny", *tiny, "pretrain.eval-every=0"]
    r = run_all(tmp_path, *args)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    run = tmp_path / "runs" / "ucf101" / "tiny"
    stages = {p.stem for p in (run / "stages").glob("*.done")}
    assert {"preflight_kinetics-two", "extract_kinetics-two", "extract", "pretrain", "finetune", "evaluate",
            "retrieve", "summary"} <= stages, stages
    pre = json.loads((run / "pretrain" / "config.json").read_text())["config"]
    assert pre["dataset"] == "kinetics-two" and pre["method"] == "mac-sc"
    assert (tmp_path / "cache" / "kinetics-two").is_dir() and not (tmp_path / "cache" / "kinetics").exists()
    assert "failed to decode" in r.stdout                        # the broken clip: reported, left out
    res = json.loads((run / "results.json").read_text())
    assert 0.0 <= res["metrics"]["evaluate"]["video_top1"] <= 100.0
    assert res["configs"]["finetune"]["dataset"] == "ucf101"
