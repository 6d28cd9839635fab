#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the test suite.
#   bash tests/run.sh            # everything
#   bash tests/run.sh -k masks   # extra arguments go to pytest
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
cd "$REPO_ROOT"
exec python -m pytest -q "$@"
