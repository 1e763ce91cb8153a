#!/usr/bin/env bash
# GPU check of the Ray-free training core (see gpu_check.py); arguments pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 benchmarks/gpu_check.py "$@"
