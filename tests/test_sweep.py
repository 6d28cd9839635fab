"""train/sweep.py: grid parsing and cell keys, routing of settings to stages, the paper-style
table and the efficiency curve on fabricated results, and a tiny real sweep on a generated demo
(mask sets extracted once, a half-finished sweep resumed without rerunning finished work)."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import UsageError
from train import sweep as S

REPO = Path(__file__).resolve().parents[1]


def test_grid_parsing_cell_keys_and_routing(tmp_path):
    grid = S.parse_grid(["k=2,3", "lambda=10,30", "finetune.lr=0.01,0.1"])
    assert grid == {"k": ["2", "3"], "lambda": ["10", "30"], "finetune.lr": ["0.01", "0.1"]}
    cells = S.make_cells(grid, [0, 1], tmp_path)
    assert len(cells) == 16 and len({c.dir for c in cells}) == 16
    assert cells[0].dir == tmp_path / "cells" / "k2_lambda10_fi-lr0.01_seed0"
    assert S.cell_key({"strides": "1,2"}, 3) == "strides1-2_seed3"
    assert len(S.cell_key({f"key{i}": "x" * 10 for i in range(10)}, 0)) <= 80      # long keys are hashed
    for bad in (["k"], ["k="], ["k=2,,3"], ["k=2,2"], ["bogus.lr=1"]):
        with pytest.raises(UsageError):
            S.parse_grid(bad)
    with pytest.raises(UsageError):
        S.parse_grid(["k=2", "k=3"])

    settings = {"k": "3", "backbone": "r3d_18", "colour-jitter": "false", "strides": "1,2", "finetune.lr": "0.1",
                "train.weight-decay": "0.01"}
    over = S.parse_overrides(["pretrain.epochs=2", "train.seed=4", "evaluate.num-clips=2"])
    pre = S.stage_flags("pretrain", settings, over)
    assert pre == ["--k", "3", "--backbone", "r3d_18", "--no-colour-jitter", "--strides", "1", "2",
                   "--weight-decay", "0.01", "--epochs", "2", "--seed", "4"]
    assert S.stage_flags("finetune", settings, over) == ["--backbone", "r3d_18", "--lr", "0.1", "--weight-decay",
                                                         "0.01", "--seed", "4"]
    assert S.stage_flags("evaluate", settings, over) == ["--num-clips", "2"]
    with pytest.raises(UsageError):
        S.parse_overrides(["epochs=2"])


def _fabricated_cell(root: Path, settings: dict, seed: int, top1: float | None, status="done", eff=None) -> S.Cell:
    c = S.Cell(settings, seed, root / "cells" / S.cell_key(settings, seed), status=status)
    c.results = {"video_top1": top1, "val_clip_top1": top1 - 10, "pretext_test_acc": 60.0 + seed, "pretext_chance": 25.0, "git": "abcdef123456",
                 "cache_hash": "c0ffee"} if top1 is not None else {}
    if eff:
        c.results["efficiency"] = eff
    if status == "failed":
        c.error = "finetune exited 2: bad value"
    return c


def test_table_builder_mean_std_paper_column_and_provenance(tmp_path):
    cells = [_fabricated_cell(tmp_path, {"k": "2"}, 0, 80.0), _fabricated_cell(tmp_path, {"k": "2"}, 1, 84.0),
             _fabricated_cell(tmp_path, {"k": "4"}, 0, 90.0), _fabricated_cell(tmp_path, {"k": "4"}, 1, None, "failed"),
             _fabricated_cell(tmp_path, {"k": "7"}, 0, 70.0)]
    md, rows = S.build_table(cells, ["k"], retrieval=False)
    lines = md.splitlines()
    k2 = next(line for line in lines if line.startswith("| 2 |"))
    assert "| 2/2 | 72.0 +- 2.8 | 82.0 +- 2.8 |" in k2 and "60.5 +- 0.7 (25.0)" in k2 and "81.5 (Table 6)" in k2
    assert "k2_seed0: done, git abcdef12, cache c0ffee" in k2
    k4 = next(line for line in lines if line.startswith("| 4 |"))
    assert "| 1/2 | 80.0 +- 0.0 | 90.0 +- 0.0 |" in k4 and "84.8 (Table 6)" in k4 and "k4_seed1: failed" in k4
    k7 = next(line for line in lines if line.startswith("| 7 |"))
    assert "(Table" not in k7                                                  # not a setting of the paper
    header, *body = rows
    row4 = dict(zip(header, body[1]))
    assert row4["video_top1_mean"] == "90" and row4["val_clip_top1_mean"] == "80" and row4["failed"] == "1" and row4["paper_ucf101"] == "84.8"
    assert S.paper_number({"m": "1.0"}) == ("Table 7", 83.4) and S.paper_number({"lambda": "60"}) == ("Table 8", 83.9)
    assert S.paper_number({"colour-jitter": "true", "greyscale": "true"}) == ("Table 2", 82.5)
    assert S.paper_number({"n": "4", "backbone": "r3d_18"}) == ("Table 5", 86.4)
    assert S.paper_number({"k": "4", "m": "0.5"}) is None


def test_efficiency_curve_from_fabricated_checkpoints_results(tmp_path):
    """The curve is built from what the per-epoch evaluations wrote (evaluate_e<N>/metrics.json)."""
    cells = []
    for seed, accs in ((0, {5: 40.0, 15: 55.0}), (1, {5: 44.0, 15: 57.0})):
        c = S.Cell({}, seed, tmp_path / "cells" / f"seed{seed}", status="done")
        for e, acc in accs.items():
            (c.dir / f"evaluate_e{e}").mkdir(parents=True)
            (c.dir / f"evaluate_e{e}" / "metrics.json").write_text(json.dumps({"metrics": {"video_top1": acc}}))
        (c.dir / "evaluate_random").mkdir()
        (c.dir / "evaluate_random" / "metrics.json").write_text(json.dumps({"metrics": {"video_top1": 20.0 + seed}}))
        c.results = S.collect_cell(c)
        cells.append(c)
    assert cells[0].results["efficiency"] == {"e15": 55.0, "e5": 40.0, "random": 20.0}
    rows = S.efficiency_curve(cells, tmp_path / "efficiency.png", tmp_path / "efficiency.csv")
    assert rows[1][:2] == ["5", "42"] and rows[2][:2] == ["15", "56"] and rows[3][:2] == ["random", "20.5"]
    assert (tmp_path / "efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(csv.reader(open(tmp_path / "efficiency.csv")))[1][0] == "5"


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep_demo") / "demo"
    subprocess.run([sys.executable, "preprocess/make_demo.py", "--data-root", str(root), "--classes", "3",
                    "--groups", "3", "--clips", "2", "--frames", "24"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return root


TINY = ["pretrain.epochs=1", "pretrain.steps-per-epoch=2", "pretrain.eval-every=1", "pretrain.eval-limit=8",
        "pretrain.batch-size=4", "finetune.batch-size=4", "finetune.epochs=1", "finetune.steps-per-epoch=2",
        "evaluate.limit=4", "evaluate.num-clips=2", "pretrain.mask-source=cache", "pretrain.strides=1,2"]


def test_tiny_sweep_extracts_once_and_resumes(tiny_demo, tmp_path, capsys):
    sweep_dir, cache = tmp_path / "sweep", tmp_path / "cache"
    argv = ["--preset", "demo", "--grid", "lambda=10,30", "--data-root", str(tiny_demo), "--cache-dir", str(cache),
            "--sweep-dir", str(sweep_dir), "--parallel", "2", *TINY]
    assert S.main(argv) == 0
    out = capsys.readouterr().out
    assert "mask sets needed 4, reused 0, extracted 4" in out
    data = json.loads((sweep_dir / "sweep.json").read_text())
    assert [c["status"] for c in data["cells"]] == ["done", "done"]
    table = (sweep_dir / "table.md").read_text()
    assert "81.1 (Table 8)" in table and "84.8 (Table 8)" in table                 # the paper's lambda rows
    for c in data["cells"]:
        assert 0 <= c["results"]["video_top1"] <= 100 and c["results"]["cache_hash"]
        assert 0 <= c["results"]["val_clip_top1"] <= 100                         # the demo's validation split

    # a half-finished sweep: cell lambda30 was killed during its finetuning (no marker, no cell.json)
    a, b = sweep_dir / "cells" / "lambda10_seed0", sweep_dir / "cells" / "lambda30_seed0"
    (b / "cell.json").unlink()
    (b / "stages" / "finetune.done").unlink()
    (b / "stages" / "evaluate.done").unlink()
    kept = {p: p.stat().st_mtime_ns for p in [*a.rglob("*"), b / "pretrain" / "last.pt"] if p.is_file()}
    assert S.main(argv) == 0
    out = capsys.readouterr().out
    assert "mask sets needed 4, reused 4, extracted 0" in out and "1 finished before, 1 to run" in out
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())                # finished work untouched
    assert "resumed" in (b / "logs" / "finetune.log").read_text()                 # the killed stage resumed
    assert json.loads((b / "cell.json").read_text())["status"] == "done"

    # --table-only rebuilds the table from the finished cells, running nothing
    (sweep_dir / "table.md").unlink()
    assert S.main([*argv, "--table-only"]) == 0
    assert (sweep_dir / "table.md").read_text() == table


def test_a_failed_cell_is_reported_and_the_others_go_on(tiny_demo, tmp_path, capsys):
    argv = ["--preset", "demo", "--grid", "finetune.stride=2,0", "--data-root", str(tiny_demo), "--cache-dir",
            str(tmp_path / "cache"), "--sweep-dir", str(tmp_path / "sweep"), *TINY[:-2]]
    assert S.main(argv) == 1
    cells = {c["settings"]["finetune.stride"]: c for c in json.loads((tmp_path / "sweep" / "sweep.json").read_text())["cells"]}
    assert cells["2"]["status"] == "done" and cells["0"]["status"] == "failed"
    assert "finetune exited" in cells["0"]["error"]
    out = capsys.readouterr().out
    assert "1 cell(s) failed: fi-stride0_seed0" in out
    # no cell reads mask sets (--mask-source clip): the frames (and their statistics) alone
    assert "frames extracted; mask sets needed 0" in out
    frame_set = tmp_path / "cache" / "demo" / "s128_q90_420"
    assert not list(frame_set.glob("masks-*")) and (frame_set / "stats-lam30_m0.5" / "manifest.json").is_file()
    assert math.isfinite(cells["2"]["results"]["video_top1"])
