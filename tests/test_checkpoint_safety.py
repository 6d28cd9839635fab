"""Checkpoints are data, not code: every script that reads one uses the weights-only unpickler,
refuses a file that needs more (naming it and the flag), and reads it fully only with
--trust-checkpoint for that file."""
from __future__ import annotations

import argparse
import pathlib

import pytest
import torch

from core import errors as cli
from tests.test_pretrain import build_tiny_cache, tiny_args
from train.utils.checkpoint import CheckpointError, load_checkpoint
from train.models import backbone_state_dict, build_backbone


class Planted:
    """What a hostile .pth can carry: unpickling it calls pathlib.Path.touch(marker)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return build_tiny_cache(tmp_path_factory.mktemp("ckpt_cache"))


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "hostile.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Planted(marker)}, path)
    return path, marker


def _loaders(cache, tmp_path, path):
    """Every CLI that reads a checkpoint, pointed at `path`."""
    from train import evaluate, finetune, pretrain, retrieve

    geo = ["--cache-dir", str(cache), "--frames", "4", "--crop", "16", "--scales", "16", "20"]
    return {
        "finetune --init": (finetune.main, [*geo, "--init", str(path), "--workers", "0", "--no-progress",
                                            "--run-dir", str(tmp_path / "ft")]),
        "evaluate --checkpoint": (evaluate.main, ["--checkpoint", str(path), "--cache-dir", str(cache)]),
        "retrieve --checkpoint": (retrieve.main, ["--checkpoint", str(path), "--cache-dir", str(cache)]),
        "retrieve --config-from": (retrieve.main, ["--init", "random", "--backbone", "r2plus1d_10",
                                                   "--config-from", str(path), "--cache-dir", str(cache)]),
    }


def test_a_planted_pickle_is_refused_by_every_loader(cache, hostile, tmp_path, capsys):
    path, marker = hostile
    for what, (main, argv) in _loaders(cache, tmp_path, path).items():
        assert cli.run(main, what, argv) == cli.EXIT_USAGE, what
        err = capsys.readouterr().err
        assert f"{path}: refused" in err and "--trust-checkpoint" in err and "Traceback" not in err, (what, err)
        assert not marker.exists(), f"{what} ran code from the file"
    # resuming a run whose last.pt was replaced by such a file: refused the same way
    from train.pretrain import main as pretrain

    run = tmp_path / "pre"
    run.mkdir()
    (run / "last.pt").write_bytes(path.read_bytes())
    assert cli.run(pretrain, "pretrain.py", tiny_args(cache, "--resume", "--run-dir", str(run))) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists()


def test_trust_checkpoint_is_the_only_way_to_unpickle_fully(cache, hostile, tmp_path, capsys):
    path, marker = hostile
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
    obj = load_checkpoint(path, trust=True)     # the user vouched for this file: its code runs
    assert marker.exists() and torch.equal(obj["state_dict"]["w"], torch.zeros(1))

    # a foreign checkpoint that keeps its training args (an argparse.Namespace): refused, then
    # finetuned from once the user passes --trust-checkpoint
    from train.finetune import main as finetune

    tv = backbone_state_dict(build_backbone("r2plus1d_10"))
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": tv, "args": argparse.Namespace(lr=0.1, arch="r2plus1d_10")}, foreign)
    argv = ["--cache-dir", str(cache), "--frames", "4", "--crop", "16", "--scales", "16", "20",
            "--batch-size", "2", "--workers", "0", "--no-progress", "--backbone", "r2plus1d_10",
            "--epochs", "1", "--max-steps", "1", "--init", str(foreign), "--run-dir", str(tmp_path / "ft")]
    assert cli.run(finetune, "finetune.py", argv) == 2
    assert "argparse.Namespace" in capsys.readouterr().err and not (tmp_path / "ft").exists()
    res = finetune([*argv, "--trust-checkpoint"])
    assert res["init"]["report"]["loaded"] == len(tv) and (tmp_path / "ft" / "last.pt").is_file()


def test_damaged_checkpoint_is_a_message(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:200])              # truncated download
    with pytest.raises(CheckpointError, match="bad.pt: not a readable checkpoint"):
        load_checkpoint(bad)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(CheckpointError, match="garbage.pt: not a readable checkpoint"):
        load_checkpoint(garbage, trust=True)
