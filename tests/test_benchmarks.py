"""benchmarks/bench_train_step.py and benchmarks/bench_pretrain.py on CPU at tiny sizes.

What is timed must be the product: the step benchmark's model is `MACModel` as pretrain.py builds
it (same modules, parameter names, shapes and counts as one built from `PretrainConfig`), and its
first step gives pretrain.py's first logged loss on the same data to float precision. The
end-to-end benchmark runs the real pretrain.py and reads back what it logged; its arithmetic is
checked on hand-made metrics records, with and without the records pretrain.py may not write.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench_pretrain as BP
from benchmarks import bench_train_step as BT
from preprocess.cache import DecodeParams, MaskParams, open_cache
from train.utils.log import read_metrics
from core import flags
from train.mac_model import MACModel
from train.pretrain import PretrainConfig, mac_config
from train.pretrain import main as pretrain_main

REPO = Path(__file__).resolve().parents[1]


def product_model(cfg: PretrainConfig) -> MACModel:
    """MACModel with the arguments pretrain.train() passes (one process)."""
    mcfg = mac_config(cfg)
    n_out = mcfg.num_classes if cfg.loss == "ce" else cfg.n
    return MACModel(cfg.backbone, n_out, cfg.dropout, cfg.method == "mac-sc", cfg.proj_hidden, cfg.proj_dim,
                    cfg.queue_size, cfg.moco_momentum, cfg.temperature, cfg.shuffle_bn_groups, cfg.seed)


def signature(model: torch.nn.Module) -> list[tuple[str, str, tuple]]:
    mods = [(n, type(m).__name__, ()) for n, m in model.named_modules()]
    return mods + [(n, "tensor", tuple(t.shape)) for n, t in model.state_dict().items()]


# --------------------------------------------------------------------------------------------
# the synthetic cache


def test_synthetic_cache_is_a_pretrain_cache_and_is_reused(tmp_path):
    logs = []
    info = BP.build_synthetic_cache(tmp_path / "c", 5, 9, 40, 53, jobs=2, videos_per_shard=2, log=logs.append)
    assert not info["reused"] and info["shards"] == 3 and info["frames_total"] == 45
    index = open_cache(tmp_path / "c", "ucf101", DecodeParams(), MaskParams(), ())
    assert len(index) == 5 and len(index.subset(1, "train")) == 5 and len(index.subset(1, "test")) == 0
    assert set(index.n_frames.tolist()) == {9} and set(index.heights.tolist()) == {40}
    again = BP.build_synthetic_cache(tmp_path / "c", 5, 9, 40, 53, jobs=2, videos_per_shard=2, log=logs.append)
    assert again["reused"] and "reusing" in logs[-1]
    other = BP.build_synthetic_cache(tmp_path / "c", 6, 9, 40, 53, jobs=1, videos_per_shard=2, log=logs.append)
    assert not other["reused"] and len(open_cache(tmp_path / "c", "ucf101", DecodeParams(), MaskParams(), ())) == 6


def test_synthetic_video_moves_and_has_real_footage_jpeg_size():
    v = BP.synthetic_video(8, seed=3)
    assert v.shape == (8, 128, 171, 3) and v.dtype.name == "uint8"
    assert (BP.synthetic_video(8, seed=3) == v).all() and not (BP.synthetic_video(8, seed=4) == v).all()
    assert abs(v[4].astype(int) - v[0].astype(int)).mean() > 2        # objects and camera move
    from preprocess.cache import encode_frame
    kb = sum(len(encode_frame(f, DecodeParams())) for f in v) / len(v) / 1e3
    assert 4.0 < kb < 12.0, kb      # real footage: ~7 KB a 128x171 frame at q90 (README)


# --------------------------------------------------------------------------------------------
# bench_train_step: the product's step


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench_cache")
    BP.build_synthetic_cache(root, 8, 16, 40, 53, jobs=1, log=lambda *a: None)
    return root


def tiny_argv(cache: Path, method: str, run_dir: Path) -> list[str]:
    return ["--cache-dir", str(cache), "--method", method, "--frames", "4", "--crop", "16", "--scales", "16", "20",
            "--batch-size", "4", "--workers", "0", "--backbone", "r2plus1d_10", "--queue-size", "16",
            "--eval-every", "0", "--no-progress", "--log-every", "1", "--epochs", "1", "--max-steps", "1",
            "--device", "cpu", "--run-dir", str(run_dir)]


@pytest.mark.parametrize("method", ["mac-s", "mac-sc"])
def test_step_is_pretrain_py_first_step(tiny_cache, tmp_path, method):
    """Same config, same first batch: the benchmark's step computes pretrain.py's first loss."""
    argv = tiny_argv(tiny_cache, method, tmp_path / "run")
    pretrain_main(argv)
    logged = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert logged[0]["step"] == 1
    cfg = flags.parse(PretrainConfig, argv)
    step = BT.MacStep(cfg, "cpu", BT.first_batch(cfg))
    loss = float(step())
    assert math.isclose(loss, logged[0]["loss"], rel_tol=1e-5), (loss, logged[0]["loss"])
    if method == "mac-sc":
        assert int(step.model.queue_ptr) == cfg.batch_size      # the product's enqueue ran


def test_step_model_is_the_product_model(tmp_path):
    cfg = BT.mac_pretrain_config("mac-sc", 4, 4, 32, "r2plus1d_18", queue=64, device="cpu")
    assert (cfg.method, cfg.n, cfg.k, cfg.crop, cfg.scales, cfg.frames) == ("mac-sc", 2, 4, 32, (32, 37, 41), 4)
    batch = BT.synthetic_cache_batch(cfg, tmp_path / "c")
    assert batch["frames"].shape == (4, 4, 32, 32, 3) and batch["key_frames"].dtype == torch.uint8
    assert batch["masks"].shape == (4, 4, 32, 32) and batch["label"].max() < 16
    step = BT.MacStep(cfg, "cpu", batch)
    assert type(step.model) is MACModel and step.prefetch == "train.loop.PrefetchLoader"
    ref = product_model(cfg)
    assert signature(step.model) == signature(ref)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)   # noqa: E731
    assert count(step.model) == count(ref) == sum(p.numel() for p in step.params)
    assert "backbone_k.layer4.1.conv2.0.0.weight" in ref.state_dict() and ref.state_dict()["queue"].shape == (64, 128)
    before = {k: v.clone() for k, v in step.model.state_dict().items()}
    frames = batch["frames"].clone()
    losses = [float(step()) for _ in range(2)]
    assert all(math.isfinite(x) for x in losses)
    after = step.model.state_dict()
    assert not torch.equal(before["backbone.fc.weight"], after["backbone.fc.weight"])          # SGD step
    assert not torch.equal(before["backbone_k.stem.0.weight"], after["backbone_k.stem.0.weight"])  # momentum
    assert int(after["queue_ptr"]) == 8 and step.mask_n and torch.equal(batch["frames"], frames)

    s_cfg = BT.mac_pretrain_config("mac-s", 4, 4, 32, device="cpu")
    s_step = BT.MacStep(s_cfg, "cpu", BT.synthetic_cache_batch(s_cfg, tmp_path / "s"))
    assert signature(s_step.model) == signature(product_model(s_cfg)) and not hasattr(s_step.model, "backbone_k")


@pytest.mark.slow
def test_bench_train_step_smoke_cli(tmp_path):
    out = tmp_path / "ts.json"
    p = subprocess.run([sys.executable, "benchmarks/bench_train_step.py", "--smoke", "--tasks", "mac_s,mac_sc,ours_cls",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = {r["task"]: r for r in json.loads(out.read_text())["results"]}
    assert set(res) == {"mac_s", "mac_sc", "ours_cls"}
    for r in res.values():
        assert r["error"] is None and r["clips_per_s"] > 0 and r["steps"] == 2 and r["batch"] == 4
        assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"])
    for task, method in (("mac_s", "mac-s"), ("mac_sc", "mac-sc")):
        cfg = PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in res[task]["pretrain_config"].items()})
        assert cfg.method == method and (cfg.frames, cfg.crop, cfg.batch_size) == (4, 32, 4)
        assert res[task]["params"] == sum(p.numel() for p in product_model(cfg).parameters() if p.requires_grad)
        assert res[task]["host_inspect_ms"] is not None
    assert res["mac_sc"]["params"] > res["mac_s"]["params"]            # + the projection head
    assert "MACModel/r2plus1d_18 MAC-SC-2" in p.stdout


# --------------------------------------------------------------------------------------------
# bench_pretrain


def _records(with_optional: bool) -> list[dict]:
    t0 = 1000.0
    recs = []
    if with_optional:
        recs.append({"kind": "first_step", "time": t0 + 3.0, "step": 1, "seconds": 2.5})
    # epoch 0: windows of 2 and 2 steps; epoch 1: 2 and 2
    recs += [{"kind": "train", "epoch": 0, "step": 2, "time": t0 + 4.0, "data_time": 0.5, "step_time": 1.5},
             {"kind": "train", "epoch": 0, "step": 4, "time": t0 + 5.0, "data_time": 0.0, "step_time": 0.5},
             {"kind": "epoch", "epoch": 0, "step": 4, "epoch_time": 4.0, "loss": 3.0, "acc": 0.1, "time": t0 + 5.0}]
    if with_optional:
        recs += [{"kind": "checkpoint", "step": 4, "seconds": 0.2},
                 {"kind": "checkpoint_written", "step": 4, "write_seconds": 0.6}]
    recs += [{"kind": "train", "epoch": 1, "step": 6, "time": t0 + 6.0, "data_time": 0.05, "step_time": 0.5,
              **({"max_memory_gb": 3.5} if with_optional else {})},
             {"kind": "train", "epoch": 1, "step": 8, "time": t0 + 7.0, "data_time": 0.05, "step_time": 0.5,
              **({"max_memory_gb": 3.75} if with_optional else {})},
             {"kind": "epoch", "epoch": 1, "step": 8, "epoch_time": 2.0, "loss": 2.5, "acc": 0.2, "time": t0 + 7.0}]
    if with_optional:
        recs += [{"kind": "checkpoint", "step": 8, "seconds": 0.4}]
    return recs


def test_summarise_reads_what_pretrain_logs():
    s = BP.summarise(_records(True), wall_s=10.0, started_unix=1000.0, batch=4)
    assert (s["steps"], s["clips"], s["epochs"], s["steps_per_epoch"]) == (8, 32, 2, [4, 4])
    assert s["clips_per_s_overall"] == pytest.approx(3.2) and s["clips_per_s_loop"] == pytest.approx(32 / 6)
    assert s["clips_per_s_steady"] == pytest.approx(16 / 2.0)
    assert s["data_wait_share"] == pytest.approx((2 * 0.5 + 2 * 0.1) / (2 * 1.5 + 2 * 0.5 + 4 * 0.5))
    assert s["data_wait_share_steady"] == pytest.approx(0.1)
    assert s["checkpoint_s"] == pytest.approx(0.3) and s["checkpoint_s_max"] == 0.4 and s["checkpoint_write_s"] == 0.6
    assert s["first_step_s"] == 2.5 and s["first_step_source"].startswith("metrics")
    assert s["max_memory_gb"] == 3.75 and s["final_loss"] == 2.5 and s["outside_loop_s"] == pytest.approx(4.0)
    assert s["startup_s"] == pytest.approx(1.0)           # first window ended at +4 s after 2 x 1.5 s


def test_summarise_falls_back_without_the_optional_records():
    s = BP.summarise(_records(False), wall_s=10.0, started_unix=1000.0, batch=4)
    assert s["checkpoint_s"] is None and s["checkpoint_write_s"] is None and s["max_memory_gb"] is None
    assert s["first_step_source"].startswith("est.")
    assert s["first_step_s"] == pytest.approx(2 * (1.5 - 0.5))     # first window over the steady step time
    assert BP.summarise([], 5.0, 0.0, 4)["clips_per_s_overall"] is None


def test_targets_are_judged_only_in_their_setting():
    args = BP.parse_args([])
    assert (args.batch_size, args.frames, args.crop, args.backbone, args.workers, args.videos) == \
        (64, 16, 112, "r2plus1d_18", 8, 9537) and args.scales == [112, 128, 144]
    assert BP.target_setting_gaps(args, "cuda:0", 149) == []
    assert BP.judge(1200.0, 1200.0 >= 1000, []) == "PASS" and BP.judge(900.0, False, []) == "FAIL"
    smoke = BP.parse_args(["--smoke"])
    gaps = BP.target_setting_gaps(smoke, "cpu", 4)
    assert "device cpu" in gaps and BP.judge(1.0, False, gaps).startswith("n/a")
    cmd = BP.pretrain_command("mac-sc", args, Path("c"), Path("r"))
    assert cmd[1].endswith("train/pretrain.py") and "--eval-every" in cmd and "--no-compile" in cmd
    assert cmd[cmd.index("--batch-size") + 1] == "64" and cmd[cmd.index("--workers") + 1] == "8"


@pytest.mark.slow
def test_bench_pretrain_smoke_runs_the_real_pretrain(tmp_path):
    out = tmp_path / "bp.json"
    p = subprocess.run([sys.executable, "benchmarks/bench_pretrain.py", "--smoke", "--json", str(out),
                        "--work-dir", str(tmp_path / "w")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["steps_per_epoch"] == 4 and rep["cache"]["frames_total"] == 16 * 12
    assert [r["method"] for r in rep["results"]] == ["mac-s", "mac-sc"]
    for r in rep["results"]:
        assert r["returncode"] == 0 and r["device"] == "cpu"
        assert (r["steps"], r["clips"], r["steps_per_epoch"]) == (8, 32, [4, 4])
        assert r["clips_per_s_overall"] == pytest.approx(32 / r["wall_s"])
        assert 0 < r["clips_per_s_overall"] < r["clips_per_s_loop"]       # the process does more than its loops
        assert r["clips_per_s_steady"] > 0 and 0 <= r["data_wait_share"] < 1
        assert r["first_step_s"] > 0 and r["checkpoint_mb"] > 0 and math.isfinite(r["final_loss"])
        assert (tmp_path / "w" / "runs" / f"{r['method']}-2" / "last.pt").exists()
        assert "train/pretrain.py" in r["command"][1] and "--run-dir" in r["command"]
    assert len(rep["checks"]) == 4 and all(c["verdict"].startswith("n/a (device cpu") for c in rep["checks"])
    assert "MAC-SC-2" in p.stdout and "[targets]" in p.stdout and ">= 1000 clips/s" in p.stdout


def test_bench_pretrain_includes_the_evaluation_and_mid_epoch_saves(tmp_path):
    """The end-to-end benchmark times what a pretraining does: test videos for the pretext
    evaluation (UCF101 split 1's 3,783 by default), --save-every-min passed on, and the figures of
    the evaluation, the mid-epoch checkpoints and the allocated memory per epoch read back."""
    info = BP.build_synthetic_cache(tmp_path / "c", 5, 9, 40, 53, jobs=1, videos_per_shard=4, log=lambda *a: None,
                                    test_videos=3)
    index = open_cache(tmp_path / "c", "ucf101", DecodeParams(), MaskParams(), ())
    assert info["shards"] == 2 and len(index.subset(1, "train")) == 5 and len(index.subset(1, "test")) == 3
    assert set(index.subset(1, "train")).isdisjoint(index.subset(2, "test"))
    args = BP.parse_args(["--save-every-min", "0.5"])
    assert (args.test_videos, args.eval_every) == (3783, 10) and BP.parse_args(["--smoke"]).test_videos == 0
    cmd = BP.pretrain_command("mac-sc", args, Path("c"), Path("r"))
    assert cmd[cmd.index("--eval-every") + 1] == "10" and cmd[cmd.index("--save-every-min") + 1] == "0.5"
    recs = _records(True)
    assert [r["kind"] for r in recs[1:4]] == ["train", "train", "epoch"] and recs[-3]["kind"] == "train"
    recs[3].update(test_videos=8, eval_time=2.0, test_acc=0.5)             # epoch 0, evaluated
    recs[1]["memory_gb"], recs[2]["memory_gb"], recs[-3]["memory_gb"] = 1.0, 2.0, 2.1   # epoch ends: 2.0, 2.1
    recs.insert(2, {"kind": "checkpoint", "step": 2, "batch": 2, "seconds": 0.1})      # mid-epoch
    s = BP.summarise(recs, wall_s=10.0, started_unix=1000.0, batch=4)
    assert (s["evaluations"], s["eval_s"], s["eval_videos"], s["eval_clips_per_s"]) == (1, 2.0, 8, 4.0)
    assert s["checkpoints_mid_epoch"] == 1 and s["memory_gb_epoch_end"] == [2.0, 2.1]
    assert s["memory_growth_gb"] == pytest.approx(0.1) and s["test_acc"] == 0.5


# --------------------------------------------------------------------------------------------
# bench_preprocess: the documented extract command against bare ffmpeg, sizes, mask agreement


@pytest.mark.slow
def test_bench_preprocess_runs_the_product_command_and_reports(tmp_path):
    out = tmp_path / "bp.json"
    p = subprocess.run([sys.executable, "benchmarks/bench_preprocess.py", "--only", "generated", "--videos", "2",
                        "--frames", "30", "--rounds", "1", "--long-minutes", "0", "--clips", "3", "--workers", "1",
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rep = json.loads(out.read_text())
    (row,) = rep["throughput"]
    assert row["videos"] == 2 and row["frames"] == 60
    s = row["seconds"]
    assert 0 < s["startup"] < s["default"] and s["bare_rgb"] > 0 and s["bare_yuv"] > 0
    assert row["ratio_rgb"] == pytest.approx(s["bare_rgb"] / s["default"])
    z = row["sizes"]                                     # the default stores frames and statistics only
    assert 2_000 < z["frames"] < 20_000 and 0 < z["stats"] < 100 and sorted(z["masks"], key=int) == ["1", "2", "3", "4"]
    assert all(0.5 < a["corr"] <= 1 and 0.5 < a["corr_rgb_jpeg"] <= 1 for a in rep["mask_agreement"].values())
    assert "x bare RGB" in p.stdout and "UCF101" in p.stdout


# --------------------------------------------------------------------------------------------
# bench_step_flops: what the compute-matched baselines match


def test_bench_step_flops_counts_the_demo_steps(tmp_path):
    out = tmp_path / "flops.json"
    p = subprocess.run([sys.executable, "benchmarks/bench_step_flops.py", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["supervised"]["gflops_per_step"] > 1 and r["supervised"]["batch"] == 8
    assert abs(r["mac-s"]["ratio_to_supervised_step"] - 1) < 0.01
    assert 1.25 < r["mac-sc"]["ratio_to_supervised_step"] < 1.45
    assert r["mac-sc"]["total_ratio_to_scratch"] == pytest.approx(
        (1100 * r["mac-sc"]["ratio_to_supervised_step"] + 440) / 1540)
    assert "mac-sc:" in p.stdout
