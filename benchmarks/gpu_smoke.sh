#!/usr/bin/env bash
# The GPU smoke test (benchmarks/gpu_smoke.py --help): bash benchmarks/gpu_smoke.sh [--dry-run] [flags]
cd "$(dirname "$0")/.." && exec "${PYTHON:-python}" benchmarks/gpu_smoke.py --out "${OUT:-gpu_smoke}" "$@"
