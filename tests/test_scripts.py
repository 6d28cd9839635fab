"""Every `python <folder>/<script>.py` the README shows runs as written from the repository root
in an environment that has requirements.txt but not the project itself installed (no
`pip install -e .`): each script's --help, in a process where the project's editable-install
import hook is removed, as it is absent on such a machine."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Runs argv[1] as `python <script>` does (its folder first on sys.path) after dropping the
# editable install's finder and path entries: only the packages of requirements.txt remain.
UNINSTALLED = """
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in (getattr(f, "__module__", "") or "")]
sys.path[:] = [p for p in sys.path if p and "editable" not in p and p != {repo!r}]
script = sys.argv[1]
if script != "-c":
    sys.argv = sys.argv[1:]
    sys.path.insert(0, {repo!r} + "/" + script.rsplit("/", 1)[0])
    runpy.run_path(script, run_name="__main__")
else:
    exec(sys.argv[2])
"""


def readme_scripts() -> list[str]:
    text = (REPO / "README.md").read_text() + (REPO / "run_all.sh").read_text()
    return sorted(set(re.findall(r"python ((?:preprocess|train|benchmarks)/\w+\.py)", text)))


def run_uninstalled(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", UNINSTALLED.format(repo=str(REPO)), *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_the_environment_really_lacks_the_project(tmp_path):
    """The control: outside the checkout, in that environment, the project cannot be imported."""
    p = run_uninstalled("-c", "import preprocess", cwd=tmp_path)
    assert p.returncode != 0 and "No module named 'preprocess'" in p.stderr, p.stderr


def test_readme_names_the_scripts():
    scripts = readme_scripts()
    assert {"preprocess/extract_masks.py", "train/pretrain.py", "train/finetune.py"} <= set(scripts)
    assert all((REPO / s).is_file() for s in scripts), scripts


@pytest.mark.parametrize("script", readme_scripts())
def test_script_runs_as_written_without_installing_the_project(script):
    p = run_uninstalled(script, "--help")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "usage:" in p.stdout and "Traceback" not in p.stderr
