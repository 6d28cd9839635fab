"""Run records (train/utils/log.py): metrics.jsonl and its TensorBoard mirror (--tensorboard)."""
from __future__ import annotations

import builtins

import pytest

from core.errors import ToolError
from train.utils.log import MetricsLog, read_metrics


def _scalars(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_holds_the_same_scalars_as_metrics_jsonl(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard=True)
    log.write(kind="train", epoch=0, step=1, loss=2.5, pretext_acc=0.25, lr=0.1)
    log.write(kind="train", epoch=0, step=2, loss=1.5, pretext_acc=0.5, lr=0.1)
    log.write(kind="epoch", epoch=0, step=2, loss=2.0, partial=False, note="text is not a scalar")
    log.write(kind="warning", message="no step, nothing for TensorBoard")
    log.close()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["kind"] for r in recs] == ["train", "train", "epoch", "warning"]
    sc = _scalars(tmp_path / "tb")
    assert sc["train/loss"] == [(1, 2.5), (2, 1.5)]
    assert [v for _, v in sc["train/pretext_acc"]] == [0.25, 0.5]
    assert sc["epoch/loss"] == [(2, 2.0)]
    assert not any(t.endswith(("/partial", "/note", "/time", "/message")) for t in sc), sorted(sc)


def test_no_tensorboard_files_unless_asked_or_off_rank_zero(tmp_path):
    MetricsLog(tmp_path / "a" / "metrics.jsonl", tensorboard=False)
    MetricsLog(tmp_path / "b" / "metrics.jsonl", enabled=False, tensorboard=True)   # rank > 0
    assert not (tmp_path / "a" / "tb").exists() and not (tmp_path / "b" / "tb").exists()


def test_tensorboard_missing_is_a_clear_tool_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *a, **kw):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ToolError, match="--tensorboard needs the tensorboard package"):
        MetricsLog(tmp_path / "metrics.jsonl", tensorboard=True)
