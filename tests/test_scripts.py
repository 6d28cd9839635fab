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
    """Every script README.md, the docs pages and run_all.sh show."""
    text = "".join(p.read_text() for p in [REPO / "README.md", REPO / "run_all.sh", *sorted((REPO / "docs").glob("*.md"))])
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


def console_scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml (read by hand: tomllib is Python 3.11+)."""
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+) = "([\w.:]+)"', section, re.M))


def test_every_command_has_a_console_entry_point():
    targets = {v.split(":")[0].replace(".", "/") + ".py" for v in console_scripts().values()}
    commands = {s for s in readme_scripts() if not s.startswith("benchmarks/")}
    assert commands <= targets, commands - targets


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_console_entry_point_runs(name):
    """The installed `mac-*` commands (pip install -e . made them beside the interpreter)."""
    exe = Path(sys.executable).parent / name
    assert exe.is_file(), f"{exe}: not installed (pip install -e .)"
    p = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0 and "usage:" in p.stdout, p.stderr[-2000:]
