"""benchmarks/gpu_smoke.py: its --dry-run runs every check's real commands on the CPU and writes
the verdict; what is missing is named before anything runs; the time budget skips, never hangs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_smoke as G

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_runs_every_check_and_writes_the_verdict(tmp_path):
    out = tmp_path / "smoke"
    p = subprocess.run(["bash", "benchmarks/gpu_smoke.sh", "--dry-run", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable})
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    doc = json.loads((out / "gpu_smoke.json").read_text())
    assert doc["verdict"] == "PASS" and doc["dry_run"] and not doc["failed"] and not doc["skipped"]
    checks = {c["name"]: c for c in doc["checks"] if c["kind"] == "check"}
    assert list(checks) == ["env", *G.CHECKS]
    assert all(c["status"] == "PASS" and c["figure"] for c in checks.values())
    assert checks["demo"]["details"]["stopped"]["partial"] and checks["demo"]["details"]["final"]["epoch"] == 2
    assert max(checks["demo"]["details"]["recompiles"]) <= 2
    r = checks["pretrain"]["details"]["results"][0]
    assert r["evaluations"] == 1 and r["checkpoints_mid_epoch"] >= 1 and r["epochs"] == 2
    step = {x["variant"]: x for x in checks["step"]["details"]["results"]}
    assert step["bf16_cl3d_compile"]["graphs_warmup"] == 2 and step["bf16_cl3d_compile"]["graphs_timed"] == 0
    assert checks["finetune"]["details"]["evaluate"]["num_videos"] == 4
    targets = [c for c in doc["checks"] if c["kind"] == "target"]
    assert targets and all(c["status"] == "SKIP" for c in targets) and doc["targets_met"] is None
    text = (out / "gpu_smoke.txt").read_text().splitlines()
    assert "PASS in" in text[0] and all(line.split()[0] in ("PASS", "SKIP") for line in text[1:])
    assert "[smoke] PASS demo:" in p.stdout and "[smoke] verdict PASS" in p.stdout
    assert not (out / "work").exists() and (out / "logs" / "demo_resume.log").exists()


def test_missing_imports_are_named_with_the_install_command(tmp_path, monkeypatch, capsys):
    real = G.importlib.import_module

    def without_simplejpeg(name, *a, **k):
        if name in ("simplejpeg", "imageio_ffmpeg"):
            raise ImportError(f"No module named '{name}'")
        return real(name, *a, **k)

    monkeypatch.setattr(G.importlib, "import_module", without_simplejpeg)
    rc = G.main(["--out", str(tmp_path), "--dry-run", "--checks", "data,step"])
    assert rc == 1
    doc = json.loads((tmp_path / "gpu_smoke.json").read_text())
    env, data, step = doc["checks"]
    assert env["status"] == "FAIL" and "missing simplejpeg (simplejpeg), imageio_ffmpeg (imageio-ffmpeg)" in env["figure"]
    assert "pip install simplejpeg==1.9.0 imageio-ffmpeg==0.8.1" in env["figure"]
    assert data["status"] == step["status"] == "SKIP" and "missing" in data["figure"] and "simplejpeg" in step["figure"]
    assert doc["verdict"] == "FAIL" and "FAIL env: missing simplejpeg" in capsys.readouterr().out


def test_a_spent_budget_skips_the_checks(tmp_path):
    assert G.main(["--out", str(tmp_path), "--dry-run", "--checks", "pretrain", "--budget-min", "0.0001"]) == 1
    doc = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert doc["verdict"] == "INCOMPLETE" and doc["skipped"] == ["pretrain"]
    assert "of the budget left" in doc["checks"][1]["figure"]
    with pytest.raises(SystemExit):
        G.main(["--out", str(tmp_path), "--checks", "nope"])
