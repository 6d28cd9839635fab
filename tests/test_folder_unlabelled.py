"""A folder of videos without split lists (``--dataset folder``, no ``splits/``): pretraining needs
no labels and uses every video, saying so; finetuning, evaluation and retrieval refuse with one
line that says how to add ``splits/``."""
from __future__ import annotations

import pytest

from core import errors as cli
from preprocess import extract_masks
from tests.conftest import moving_square_video, write_video
from train import finetune, pretrain, retrieve


@pytest.fixture
def folder_cache(tmp_path, ffmpeg_exe):
    root = tmp_path / "videos"
    for ci, c in enumerate(("left", "right")):
        for k in range(3):
            write_video(root / c / f"clip {k}.mp4", moving_square_video(20, seed=ci * 10 + k,
                                                                        direction=1 if ci == 0 else -1), ffmpeg_exe)
    cache = tmp_path / "cache"
    assert extract_masks.main(["--dataset", "folder", "--data-root", str(root), "--cache-dir", str(cache),
                               "--workers", "1", "--strides", "1"]) == 0
    return cache


COMMON = ["--frames", "4", "--crop", "16", "--scales", "16", "20", "--batch-size", "2", "--workers", "0",
          "--backbone", "r2plus1d_10", "--no-progress"]


@pytest.mark.slow
def test_pretrain_uses_every_video_and_the_labelled_tools_refuse(folder_cache, tmp_path, capsys):
    run = tmp_path / "pt"
    status = cli.run(pretrain.main, "pretrain.py", ["--dataset", "folder", "--cache-dir", str(folder_cache),
                                                     *COMMON, "--queue-size", "8", "--epochs", "1",
                                                     "--eval-every", "0", "--run-dir", str(run)])
    out = capsys.readouterr()
    assert status == 0, out.err[-2000:]
    assert "no split lists: pretraining on all 6 videos" in out.out
    assert (run / "last.pt").is_file()

    status = cli.run(finetune.main, "finetune.py", ["--dataset", "folder", "--cache-dir", str(folder_cache),
                                                     *COMMON, "--init", str(run / "last.pt"), "--epochs", "1",
                                                     "--run-dir", str(tmp_path / "ft")])
    err = capsys.readouterr().err
    assert status == cli.EXIT_USAGE and err.count("\n") == 1, err
    assert "no split lists for split 1: finetuning needs labelled train and test videos" in err
    assert "splits/trainlist01.txt" in err and not (tmp_path / "ft").exists()

    status = cli.run(retrieve.main, "retrieve.py", ["--checkpoint", str(run / "last.pt"), "--workers", "0",
                                                     "--out-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert status == cli.EXIT_USAGE and "retrieval needs labelled train and test videos" in err, err
