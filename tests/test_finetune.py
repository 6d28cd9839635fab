"""train/finetune.py on a tiny synthetic cache (CPU): strict backbone init from a pretraining
checkpoint and from a torchvision-format state dict, what the checkpoint records for the
evaluator, resume/best bookkeeping, and a 2-process torchrun (gloo) run."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from preprocess.cache import open_cache, write_cache_from_arrays
from train.utils.checkpoint import load_checkpoint
from train.utils.log import read_metrics
from core import flags
from train.finetune import default_run_dir, main, read_init
from train.models import backbone_state_dict, build_backbone

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("Left", "Right", "Still")


def synthetic_video(n_frames: int, seed: int, direction: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 90, size=(h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    out = np.repeat(bg[None], n_frames, 0)
    for t in range(n_frames):
        x = (24 + direction * 4 * t) % (w - 12)
        out[t, 16:28, x:x + 12] = (230, 200, 60)
    return out


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """3 classes x 4 groups; split s tests group s."""
    root = tmp_path_factory.mktemp("finetune_cache")
    vids = [(f"{c}/v_{c}_g{g:02d}_c01.avi", ci, tuple(2 if g == s else 1 for s in (1, 2, 3)),
             synthetic_video(12, ci * 10 + g, (1, -1, 0)[ci]), 25.0)
            for ci, c in enumerate(CLASSES) for g in range(1, 5)]
    write_cache_from_arrays(root, "ucf101", CLASSES, vids, videos_per_shard=6)
    return root


def args(cache: Path, *extra: str) -> list[str]:
    return ["--cache-dir", str(cache), "--frames", "4", "--crop", "16", "--scales", "16", "20",
            "--batch-size", "3", "--workers", "0", "--no-progress", "--log-every", "1", *extra]


@pytest.fixture(scope="session")
def pretrain_ckpt(cache, tmp_path_factory) -> Path:
    """A real (one-step) MAC-SC pretraining checkpoint on the same cache (masks present)."""
    from train.pretrain import main as pretrain

    run = tmp_path_factory.mktemp("pre") / "runs" / "ucf101" / "tinyrun" / "pretrain"
    res = pretrain(["--cache-dir", str(cache), "--frames", "4", "--crop", "16", "--scales", "16", "20",
                    "--batch-size", "3", "--workers", "0", "--backbone", "r2plus1d_10", "--queue-size", "6",
                    "--epochs", "1", "--max-steps", "1", "--eval-every", "0", "--no-progress",
                    "--run-dir", str(run)])
    return res["checkpoint"]


def _params_equal(model_sd: dict, backbone_sd: dict) -> bool:
    """Every learnable backbone tensor (not BN running stats, which training updates) matches."""
    keys = [k for k in backbone_sd if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    return all(torch.equal(model_sd[k], backbone_sd[k]) for k in keys)


def test_init_from_pretrain_checkpoint_is_strict_and_recorded(cache, pretrain_ckpt, tmp_path):
    pre = load_checkpoint(pretrain_ckpt)
    # lr 0 and no weight decay: the backbone parameters stay exactly the loaded ones
    res = main(args(cache, "--init", str(pretrain_ckpt), "--epochs", "1", "--lr", "0", "--weight-decay", "0",
                    "--run-dir", str(tmp_path / "ft")))
    rep = res["init"]["report"]
    assert rep["missing"] == [] and rep["unexpected"] == [] and rep["mismatched"] == []
    assert rep["loaded"] == len(pre["backbone"])
    ck = load_checkpoint(res["checkpoint"])
    assert ck["kind"] == "finetune" and ck["backbone_name"] == "r2plus1d_10"
    assert _params_equal(ck["model"], pre["backbone"])
    # what train/evaluate.py relies on
    index = open_cache(cache, "ucf101")
    assert ck["dataset"] == "ucf101" and ck["split"] == 1 and ck["classes"] == list(CLASSES)
    assert sorted(ck["train_videos"]) == sorted(index.names[index.subset(1, "train")].astype(str))
    assert not set(ck["train_videos"]) & set(index.names[index.subset(1, "test")].astype(str))
    model = build_backbone(ck["backbone_name"], num_classes=len(ck["classes"]))
    model.load_state_dict(ck["model"], strict=True)               # plain torchvision names
    assert (tmp_path / "ft" / "best.pt").exists() and ck["metrics"]["val_videos"] == 3
    # the default run dir sits beside the pretraining stage
    _, info = read_init(str(pretrain_ckpt))
    from train.finetune import FinetuneConfig
    assert default_run_dir(FinetuneConfig(), info) == Path(pretrain_ckpt).parent.parent / "finetune"
    assert default_run_dir(FinetuneConfig(dataset="hmdb51", split=2), info).name == "finetune_hmdb51_split2"


def test_init_from_torchvision_state_dict(cache, tmp_path):
    torch.manual_seed(1)
    tv = build_backbone("r2plus1d_10", num_classes=400).state_dict()     # torchvision format, 400-way fc
    path = tmp_path / "tv.pth"
    torch.save(tv, path)
    res = main(args(cache, "--init", str(path), "--backbone", "r2plus1d_10", "--epochs", "1", "--lr", "0",
                    "--weight-decay", "0", "--run-dir", str(tmp_path / "ft")))
    rep = res["init"]["report"]
    assert rep["missing"] == [] and rep["unexpected"] == [] and sorted(rep["dropped"]) == ["fc.bias", "fc.weight"]
    ck = load_checkpoint(res["checkpoint"])
    assert ck["model"]["fc.weight"].shape == (3, 512)
    assert _params_equal(ck["model"], backbone_state_dict(build_backbone("r2plus1d_10")) | {
        k: v for k, v in tv.items() if not k.startswith("fc.")})

    # a backbone that does not match is refused, naming the keys
    bad = dict(tv)
    bad["layer1.0.conv1.0.0.weight"] = bad["layer1.0.conv1.0.0.weight"][:, :1]    # wrong shape
    bad["layer9.weight"] = bad.pop("stem.0.weight")                               # missing + unexpected
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(SystemExit) as exc:
        main(args(cache, "--init", str(tmp_path / "bad.pth"), "--backbone", "r2plus1d_10", "--epochs", "1",
                  "--run-dir", str(tmp_path / "bad")))
    msg = str(exc.value)
    assert "stem.0.weight" in msg and "layer9.weight" in msg and "layer1.0.conv1.0.0.weight" in msg
    with pytest.raises(SystemExit, match="--init random"):
        main(args(cache, "--run-dir", str(tmp_path / "noinit")))


def test_random_init_resume_and_best(cache, tmp_path):
    run = tmp_path / "rand"
    base = args(cache, "--init", "random", "--backbone", "r2plus1d_10", "--val-every", "1", "--run-dir", str(run))
    r1 = main([*base, "--epochs", "1"])
    ck1 = load_checkpoint(r1["checkpoint"])
    assert ck1["epoch"] == 1 and ck1["step"] == 3 and ck1["init"] == {"kind": "random"}
    assert ck1["best"]["epoch"] == 0 and (run / "best.pt").exists()
    with pytest.raises(SystemExit, match="--resume"):
        main([*base, "--epochs", "2"])
    r2 = main([*base, "--epochs", "2", "--resume"])
    ck2 = load_checkpoint(r2["checkpoint"])
    assert ck2["epoch"] == 2 and ck2["step"] == 6 and ck2["best"]["epoch"] in (0, 1)
    epochs = [r["epoch"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs == [0, 1]


def test_torchrun_two_process_gloo(cache, pretrain_ckpt, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "train/finetune.py",
           *args(cache, "--init", str(pretrain_ckpt), "--epochs", "1", "--run-dir", str(run))]
    p = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ck = load_checkpoint(run / "last.pt")
    assert ck["world_size"] == 2 and ck["global_batch"] == 6 and ck["metrics"]["val_videos"] == 3
    final = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "final"][-1]
    assert len(set(final["rank_param_hashes"])) == 1 and len(final["rank_param_hashes"]) == 2


def test_linear_probe_trains_only_the_classifier(cache, pretrain_ckpt, tmp_path):
    """--freeze-backbone: every backbone tensor, BN running statistics included, ends exactly as
    loaded (no gradient reaches it), while the classifier learns; the normalisation is the
    pretraining's."""
    pre = load_checkpoint(pretrain_ckpt)
    res = main(args(cache, "--init", str(pretrain_ckpt), "--freeze-backbone", "--epochs", "2", "--lr", "0.1",
                    "--run-dir", str(tmp_path / "lp")))
    ck = load_checkpoint(res["checkpoint"])
    assert ck["config"]["freeze_backbone"] and ck["config"]["norm"] == pre["mac"]["norm"] == "imagenet"
    for k, v in pre["backbone"].items():
        assert torch.equal(ck["model"][k], v), k
    fresh = build_backbone("r2plus1d_10", len(CLASSES))
    torch.manual_seed(0)
    assert not torch.equal(ck["model"]["fc.weight"], fresh.fc.weight)
    from train.finetune import FinetuneConfig

    cfg = flags.parse(FinetuneConfig, ["--freeze-backbone", "--init", "random", "--label-fraction", "0.5"])
    assert default_run_dir(cfg, {"kind": "random"}).name == "linear_random_labels0.5"


def test_label_fraction_is_balanced_seeded_and_disjoint_from_test(cache, tmp_path):
    from train.data import label_subset

    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    videos = np.arange(100)
    a = label_subset(videos, labels, 0.1, seed=3)
    assert np.bincount(labels[a]).tolist() == [1, 2, 3, 4]                  # balanced: 10 % of each class
    np.testing.assert_array_equal(a, label_subset(videos, labels, 0.1, seed=3))   # seeded
    assert not np.array_equal(a, label_subset(videos, labels, 0.1, seed=4))
    assert np.bincount(labels[label_subset(videos, labels, 0.01, seed=0)]).tolist() == [1, 1, 1, 1]  # >= 1 each
    assert len(label_subset(videos, labels, 1.0)) == 100
    # through finetune.py: the recorded training videos are the subset, never a test video
    res = main(args(cache, "--init", "random", "--backbone", "r2plus1d_10", "--label-fraction", "0.34",
                    "--epochs", "1", "--run-dir", str(tmp_path / "lf")))
    ck = load_checkpoint(res["checkpoint"])
    index = open_cache(cache, "ucf101")
    train = set(index.names[index.subset(1, "train")])
    test = set(index.names[index.subset(1, "test")])
    got = set(ck["train_videos"])
    assert len(got) == len(CLASSES) and got <= train and not got & test       # one per class of 3
    assert sorted(index.labels[[list(index.names).index(n) for n in got]].tolist()) == [0, 1, 2]
    with pytest.raises(SystemExit) as exc:     # refused before any work: status 2, one line
        main(args(cache, "--init", "random", "--label-fraction", "0", "--run-dir", str(tmp_path / "bad")))
    assert exc.value.code == 2 and not (tmp_path / "bad").exists()
