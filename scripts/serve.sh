#!/usr/bin/env bash
# Quick start 1/2: install and run AI Studio on the embedded default (local Ray, SQLite, ./workspace).
# Extra arguments go to `aistudio serve` (e.g. --port 8080 --workspace /data/aistudio).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${AISTUDIO_VENV:-.venv}/bin/aistudio" serve "$@"
