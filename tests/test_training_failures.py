"""Expected training failures are the user's, not bugs: a diverging run and an out-of-memory step
end with status 2 and one line with the step / batch size and the advice, and the last good
checkpoint is kept untouched."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from core import errors as cli
from tests.test_loop import ENV, REPO
from tests.test_pretrain import tiny_args, tiny_cache  # noqa: F401 (fixture)
from train import pretrain
from train.utils.checkpoint import load_checkpoint


def _all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


@pytest.mark.slow
def test_divergence_is_a_usage_error_and_writes_no_non_finite_checkpoint(tiny_cache, tmp_path):
    """--lr 1e9 diverges within a few steps; with a checkpoint after every step (--save-every-min
    1e-9) the last one on disk is the last good step's, finite, and none is written after it."""
    run = tmp_path / "run"
    args = tiny_args(tiny_cache, "--epochs", "3", "--batch-size", "2", "--queue-size", "8", "--lr", "1e9",
                     "--clip-grad", "0", "--save-every-min", "1e-9", "--run-dir", str(run))
    p = subprocess.run([sys.executable, "train/pretrain.py", *args], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == cli.EXIT_USAGE, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr[-3000:]
    line = p.stderr.strip().splitlines()[-1]
    m = re.match(r"pretrain\.py: error: non-finite loss or gradient at epoch (\d+) step (\d+): ", line)
    assert m, line
    assert "Lower --lr" in line and "last good checkpoint is kept" in line
    bad_step = int(m.group(2))
    if (run / "last.pt").exists():
        ck = load_checkpoint(run / "last.pt")
        assert ck["step"] <= bad_step and _all_finite(ck["model"]), ck["step"]
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())


def test_out_of_memory_names_the_batch_size_and_the_advice(tiny_cache, tmp_path, capsys, monkeypatch):
    def oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pretrain, "compute_losses", oom)
    args = tiny_args(tiny_cache, "--epochs", "1", "--batch-size", "2", "--queue-size", "8",
                     "--run-dir", str(tmp_path / "run"))
    assert cli.run(pretrain.main, "pretrain.py", args) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("pretrain.py: error: out of memory on cpu at --batch-size 2 per process (CUDA out of memory")
    assert "Lower --batch-size" in err and "--resume" in err
    assert not (tmp_path / "run" / "last.pt").exists()
