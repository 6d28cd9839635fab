"""train/pretrain.py + train/utils/ on a tiny synthetic cache (CPU, gloo).

Covers: overfitting a fixed batch, the MoCo queue/pointer/momentum math and shuffle-BN order,
MSE / MSE-n targets and loss, the missing-mask-set message, SIGKILL + --resume reproducing the
uninterrupted run exactly, and a 2-process torchrun (gloo) run with identical ranks.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from preprocess.cache import MaskParams, open_cache, write_cache_from_arrays
from core.errors import UsageError
from train.utils.checkpoint import load_checkpoint, save_checkpoint
from train.utils.guards import NonFiniteLossError, check_finite
from train.utils.log import read_metrics
from train.utils.random import rng_state, set_rng_state
from core import flags
from train.data import PretrainClips, make_loader
from train.mac import MACTransform, alpha_values
from train.pretrain import (MACModel, PretrainConfig, at_chance, check_config, compute_losses, mac_config, main,
                            pretext_chance, pretext_loss)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("MoveLeft", "MoveRight")


def synthetic_video(n_frames: int, seed: int, direction: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Textured background with a bright square moving horizontally: uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 90, size=(h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    out = np.repeat(bg[None], n_frames, 0)
    for t in range(n_frames):
        x = (8 + direction * 4 * t) % (w - 12)
        out[t, 16:28, x:x + 12] = (230, 200, 60)
    return out


def build_tiny_cache(root: Path) -> Path:
    """12 videos (6 per class); split s tests group s, trains the other 5 groups."""
    vids = []
    for ci, c in enumerate(CLASSES):
        for g in range(1, 7):
            splits = tuple(2 if g == s else 1 for s in (1, 2, 3))
            vids.append((f"{c}/v_{c}_g{g:02d}_c01.avi", ci, splits,
                         synthetic_video(12, ci * 100 + g, 1 if ci == 0 else -1), 25.0))
    write_cache_from_arrays(root, "ucf101", CLASSES, vids, videos_per_shard=8)
    return root


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    return build_tiny_cache(tmp_path_factory.mktemp("pretrain_cache"))


def tiny_args(cache: Path, *extra: str) -> list[str]:
    """pretrain.py's flags for a run of a few seconds: the narrow R(2+1)D-10 (width 32, the demo's;
    what these tests check does not depend on the width, and its checkpoints are ~16x smaller)."""
    return ["--cache-dir", str(cache), "--frames", "4", "--crop", "16", "--scales", "16", "20",
            "--batch-size", "4", "--workers", "0", "--backbone", "r2plus1d_10_w32", "--queue-size", "16",
            "--eval-every", "0", "--no-progress", "--log-every", "1", *extra]


def tiny_batch(cache: Path, **cfg_overrides) -> tuple[dict, PretrainConfig]:
    cfg = PretrainConfig(**{"cache_dir": str(cache), "frames": 4, "crop": 16, "scales": (16, 20),
                            "backbone": "r2plus1d_10", **cfg_overrides})
    index = open_cache(cache, "ucf101", masks=MaskParams())
    mcfg = mac_config(cfg)
    loader = make_loader(PretrainClips(index, 1, "train", mcfg), 4, 0, shuffle=True, seed=0)
    return MACTransform(mcfg, "cpu")(next(iter(loader))), cfg


# --------------------------------------------------------------------------------------------


def test_overfits_a_fixed_batch(tiny_cache):
    b, cfg = tiny_batch(tiny_cache, method="mac-s")
    torch.manual_seed(0)
    model = MACModel("r2plus1d_10", 16, dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(12):
        terms = compute_losses(model(b["query"]), b, cfg)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    assert losses[0] > 2.0                        # ~ln 16 at init
    assert min(losses[-3:]) < 0.3 * losses[0], losses
    assert terms["acc"].item() == 1.0             # train-mode BN: eval stats lag after 12 steps


def test_moco_queue_pointer_and_momentum():
    torch.manual_seed(0)
    m = MACModel("r2plus1d_10", 16, contrastive=True, proj_dim=8, queue_size=8, momentum=0.9)
    assert torch.allclose(m.queue.norm(dim=1), torch.ones(8))
    k1, k2, k3 = (torch.nn.functional.normalize(torch.randn(4, 8), dim=1) for _ in range(3))
    m.enqueue(k1)
    assert int(m.queue_ptr) == 4 and torch.equal(m.queue[:4], k1)
    m.enqueue(k2)
    assert int(m.queue_ptr) == 0 and torch.equal(m.queue[4:], k2)      # wrapped
    m.enqueue(k3)
    assert int(m.queue_ptr) == 4 and torch.equal(m.queue[:4], k3) and torch.equal(m.queue[4:], k2)
    with pytest.raises(RuntimeError, match="divisible"):
        m.enqueue(k1[:3])

    # momentum update: theta_k <- 0.9 theta_k + 0.1 theta_q, for every key parameter
    with torch.no_grad():
        for p in [*m.backbone.parameters(), *m.proj.parameters()]:
            p.fill_(1.0)
        for p in [*m.backbone_k.parameters(), *m.proj_k.parameters()]:
            p.fill_(-1.0)
    m.momentum_update()
    keys = [*m.backbone_k.parameters(), *m.proj_k.parameters()]
    assert len(keys) == len(list(m.proj.parameters())) + len(list(m.backbone.parameters())) - 2  # no fc
    for p in keys:
        assert torch.allclose(p, torch.full_like(p, 0.9 * -1.0 + 0.1 * 1.0))

    # shuffle BN returns keys in the input order (eval mode: BN stats do not depend on the split)
    m2 = MACModel("r2plus1d_10", 16, contrastive=True, proj_dim=8, queue_size=8, shuffle_bn_groups=2).eval()
    x = torch.randn(4, 3, 4, 16, 16)
    plain = torch.nn.functional.normalize(m2.proj_k(m2.backbone_k.forward_features(x)), dim=1)
    assert torch.allclose(m2.encode_keys(x, shuffle_seed=3), plain, atol=1e-5)

    # a training forward: momentum update, InfoNCE logits [B, 1 + K], enqueue of B keys
    m2.train()
    out = m2(x, x, shuffle_seed=1)
    assert out["con_logits"][0].shape == (4, 9) and int(m2.queue_ptr) == 4
    assert torch.allclose(m2.queue[:4].norm(dim=1), torch.ones(4), atol=1e-5)

    with pytest.raises(UsageError, match="--queue-size 100: must be divisible"):
        PretrainConfig(queue_size=100, batch_size=32)            # refused when the config is made
    check_config(PretrainConfig(queue_size=65536, batch_size=32), world=8)
    with pytest.raises(UsageError, match=r"32 per process x 2 process\(es\) = 64"):
        check_config(PretrainConfig(queue_size=96, batch_size=32), world=2)    # fine alone, not under DDP


def test_mse_and_mse_n_targets_and_loss(tiny_cache, tmp_path):
    presets = torch.tensor(alpha_values(4))
    b, cfg = tiny_batch(tiny_cache, method="mac-s", loss="mse")
    assert b["alpha_target"].shape == (4, 2)
    assert torch.isin(b["alpha_target"], presets).all()
    assert torch.equal(presets[b["alpha_idx"]], b["alpha_target"])
    bn, _ = tiny_batch(tiny_cache, method="mac-s", loss="mse-n")
    t = bn["alpha_target"]
    assert (t > 0).all() and (t <= 1).all() and (bn["label"] == -1).all()

    # the loss: sigmoid of n outputs, MSE to the alphas; "correct" = nearest preset is the true one
    head = torch.logit(b["alpha_target"].clamp(1e-4, 1 - 1e-4))
    loss, correct, seg = pretext_loss(head, b, "mse", 4, 2)
    assert loss.item() < 1e-6 and correct.all() and seg.all()
    head2 = torch.zeros(4, 2)                                  # sigmoid -> 0.5 everywhere
    loss2, _, _ = pretext_loss(head2, bn, "mse-n", 4, 2)
    assert torch.allclose(loss2, ((0.5 - t) ** 2).mean())

    # end to end: the head has n outputs
    res = main(tiny_args(tiny_cache, "--method", "mac-s", "--loss", "mse-n", "--epochs", "1",
                         "--max-steps", "1", "--run-dir", str(tmp_path / "run")))
    ck = load_checkpoint(res["checkpoint"])
    assert ck["model"]["backbone.fc.weight"].shape == (2, 256) and ck["num_classes"] == 2
    assert ck["partial"] and ck["epoch"] == 0 and ck["step"] == 1


def test_missing_mask_set_prints_the_extract_command(tiny_cache, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(tiny_args(tiny_cache, "--lambda", "60", "--mask-source", "cache", "--run-dir", str(tmp_path / "run")))
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    assert (f"python preprocess/extract_masks.py --dataset ucf101 --cache-dir {tiny_cache} "
            f"--lambda 60 --m 0.5") in err, err
    assert not (tmp_path / "run" / "last.pt").exists()


def _state_equal(a: dict, b: dict, path: str = "") -> list[str]:
    """Paths where two nested checkpoint structures differ (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        return [] if torch.equal(a, b) else [path]
    if isinstance(a, np.ndarray):
        return [] if np.array_equal(a, b) else [path]
    if isinstance(a, dict):
        if set(a) != set(b):
            return [path + " keys"]
        return [p for k in a for p in _state_equal(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _state_equal(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def test_sigkill_then_resume_reproduces_uninterrupted_run(tiny_cache, tmp_path):
    args = tiny_args(tiny_cache, "--epochs", "4", "--steps-per-epoch", "1", "--eval-every", "2", "--seed", "3")
    # Every part runs in a fresh process with the same thread count: the test process's own
    # state (thread pools, oneDNN caches left by earlier tests) may change the last bits of a
    # float reduction, which says nothing about resuming.
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    script = [sys.executable, "train/pretrain.py", *args]
    subprocess.run([*script, "--run-dir", str(tmp_path / "full")], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    full = {"checkpoint": tmp_path / "full" / "last.pt"}

    run = tmp_path / "killed"
    sigkill_when([sys.executable, "train/pretrain.py", *args, "--run-dir", str(run)], env,
                 lambda: (run / "last.pt").exists())                  # kill once a checkpoint exists
    ck = load_checkpoint(run / "last.pt")
    assert 1 <= ck["epoch"] < 4, ck["epoch"]                      # really interrupted
    subprocess.run([*script, "--run-dir", str(run), "--resume"], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    resumed = {"checkpoint": run / "last.pt"}

    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert a["epoch"] == b["epoch"] == 4 and a["step"] == b["step"] == 4
    for key in ("model", "optimizer", "scheduler", "moco", "rng"):
        assert not _state_equal(a[key], b[key]), (key, _state_equal(a[key], b[key])[:5])
    assert a["metrics"]["test_acc"] == b["metrics"]["test_acc"]
    epochs = [r["epoch"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs == [0, 1, 2, 3]                                # the redone epoch is logged once
    assert not list(run.glob(".*.tmp"))                          # no torn temp checkpoint left
    with pytest.raises(SystemExit, match="--resume"):           # never silently overwrite a run
        main([*args, "--run-dir", str(run)])


def sigkill_when(cmd: list[str], env: dict, ready, timeout: float = 120.0) -> None:
    """Start `cmd` in the repository and SIGKILL it as soon as `ready()` holds (it must not end before)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.005)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shuffle_bn_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)                                      # same model on both ranks
        m = MACModel("r2plus1d_10", 16, contrastive=True, proj_dim=8, queue_size=8).eval()
        torch.manual_seed(10 + rank)                              # different clips per rank
        x = torch.randn(3, 3, 4, 16, 16)
        plain = torch.nn.functional.normalize(m.proj_k(m.backbone_k.forward_features(x)), dim=1)
        keys = m.encode_keys(x, shuffle_seed=5)                   # gathered, permuted, encoded, un-permuted
        m.enqueue(keys[:2])                                       # enqueues both ranks' keys
        torch.save({"ok": torch.allclose(keys, plain, atol=1e-5), "ptr": int(m.queue_ptr),
                    "queue": m.queue[:4].clone(), "keys": keys[:2]}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_shuffle_bn_unpermutes_and_enqueues_all_ranks(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_shuffle_bn_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert r0["ok"] and r1["ok"]                                  # each rank gets its own keys back
    assert r0["ptr"] == r1["ptr"] == 4
    assert torch.equal(r0["queue"], r1["queue"])
    assert torch.equal(r0["queue"], torch.cat([r0["keys"], r1["keys"]]))


def test_torchrun_two_process_gloo(tiny_cache, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "train/pretrain.py",
           *tiny_args(tiny_cache, "--epochs", "1", "--eval-every", "1", "--run-dir", str(run))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ck = load_checkpoint(run / "last.pt")
    assert ck["world_size"] == 2 and ck["global_batch"] == 8 and len(ck["rng"]) == 2
    assert ck["moco"]["ptr"] == 8                                 # both ranks' keys were enqueued
    final = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "final"][-1]
    hashes = final["rank_param_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["global_batch"] == 8
    epoch = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch"][-1]
    assert epoch["test_videos"] == 2                              # padded duplicates not counted


def test_non_finite_guard_names_step_and_terms(tmp_path):
    check_finite({"loss_cls": torch.tensor(1.5), "loss": torch.tensor(2.0)}, epoch=0, step=0)
    with pytest.raises(NonFiniteLossError, match=r"epoch 3 step 17: loss_cls=nan, loss_con=0\.5, loss=inf"):
        check_finite({"loss_cls": torch.tensor(float("nan")), "loss_con": torch.tensor(0.5),
                        "loss": torch.tensor(float("inf"))}, epoch=3, step=17)


def test_atomic_checkpoint_and_config_parsing(tmp_path):
    p = save_checkpoint({"a": torch.arange(3), "rng": rng_state()}, tmp_path / "x.pt")
    assert load_checkpoint(p)["a"].tolist() == [0, 1, 2] and not list(tmp_path.glob(".*.tmp"))
    set_rng_state(load_checkpoint(p)["rng"])                   # weights_only round trip
    cfg = flags.parse(PretrainConfig, ["--no-bf16", "--milestones", "5", "7", "--lambda", "10", "--symmetric"])
    assert cfg.bf16 is False and cfg.milestones == (5, 7) and cfg.lam == 10 and cfg.symmetric is True
    assert flags.parse(PretrainConfig, []).bf16 is True


def test_pretext_accuracy_per_segment_and_chance():
    """ce: a clip is right when the tuple is; each segment when its own alpha is (the tuple's
    digits in base k, first segment most significant). Chance: 1/k^n per clip, 1/k per segment."""
    k, n = 3, 2
    label = torch.tensor([0, 5, 7, 8])                    # (0,0) (1,2) (2,1) (2,2)
    pred = torch.tensor([0, 3, 8, 2])                     # (0,0) (1,0) (2,2) (0,2)
    head = torch.nn.functional.one_hot(pred, k ** n).float() * 10
    _, correct, seg = pretext_loss(head, {"label": label}, "ce", k, n)
    assert correct.tolist() == [True, False, False, False]
    assert seg.tolist() == [[True, True], [True, False], [True, False], [False, True]]
    assert pretext_chance(PretrainConfig(k=2, n=2)) == (0.25, 0.5)
    assert pretext_chance(PretrainConfig(k=4, n=4)) == (1 / 256, 0.25)
    assert at_chance(0.27, 0.25, 200) and not at_chance(0.40, 0.25, 200) and not at_chance(0.3, None, 10)


def test_warns_when_the_pretext_is_still_at_chance(tiny_cache, tmp_path, capsys):
    """After a quarter of the epochs at chance (lr 0: nothing can be learned) the run says so,
    names the likely causes with the samples' measured mask coverage per stride, and records it in
    metrics.jsonl; per-segment accuracies and the chance level are logged every epoch."""
    res = main(tiny_args(tiny_cache, "--method", "mac-s", "--k", "2", "--epochs", "4", "--lr", "0",
                         "--run-dir", str(tmp_path / "run")))
    out = capsys.readouterr().out
    assert "guessing scores 0.25 per clip, 0.5 per segment" in out
    assert "WARNING: after a quarter of the pretraining (epoch 1/4" in out
    assert "mask coverage" in out and "--lambda 30" in out and "the training samples is stride " in out
    recs = [json.loads(l) for l in (res["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    warn = [r for r in recs if r["kind"] == "warning"]
    assert len(warn) == 1 and warn[0]["epoch"] == 0
    ep = [r for r in recs if r["kind"] == "epoch"]
    assert all(r["chance"] == 0.25 and r["chance_seg"] == 0.5 and "acc_seg0" in r and "acc_seg1" in r for r in ep)
    assert any(k.startswith("mask_mean_s") and 0 < ep[0][k] < 1 for k in ep[0])


def test_pretext_curve_is_read_on_validation_and_the_test_split_once_at_the_end(tiny_cache, tmp_path):
    """With a validation split held out, every periodic pretext evaluation reads the validation
    videos (val_*); the test split is read at the last epoch only. Without one, on the test split."""
    from train.data import validation_split

    run = tmp_path / "val"
    assert main(tiny_args(tiny_cache, "--epochs", "3", "--steps-per-epoch", "1", "--eval-every", "1",
                          "--val-fraction", "0.4", "--run-dir", str(run)))["step"] == 3
    epochs = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch"]
    index = open_cache(tiny_cache, "ucf101", masks=MaskParams())
    _, val = validation_split(index, 1, 0.4, 0)
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert all(r["val_videos"] == len(val) == 4 and 0 <= r["val_acc"] <= 1 for r in epochs)
    assert ["test_acc" in r for r in epochs] == [False, False, True]
    assert epochs[-1]["test_videos"] == len(index.subset(1, "test")) == 2
    from train.report import pretext_summary

    summary = pretext_summary(read_metrics(run / "metrics.jsonl"))           # what summary.md states
    assert (summary["val_acc"], summary["test_acc"]) == (epochs[-1]["val_acc"], epochs[-1]["test_acc"])
    assert summary["val_videos"] == 4 and summary["test_epoch"] == 3

    run = tmp_path / "noval"
    assert main(tiny_args(tiny_cache, "--epochs", "2", "--steps-per-epoch", "1", "--eval-every", "1",
                          "--val-fraction", "0", "--run-dir", str(run)))["step"] == 2
    epochs = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch"]
    assert all("test_acc" in r and "val_acc" not in r for r in epochs)
