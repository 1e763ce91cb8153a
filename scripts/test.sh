#!/usr/bin/env bash
# Quick start 2/2: install everything the tests need (Python extras, Debian's Chromium) and run the
# whole suite. Extra arguments go to pytest. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
AISTUDIO_EXTRAS=test,postgres bash scripts/install.sh
# Debian packages: Chromium for the browser tests; PostgreSQL's server for the tests that run the store and
# API on PostgreSQL too (tests/pg.py starts a throwaway server; without it they fail in CI, skip elsewhere).
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
venv=${AISTUDIO_VENV:-.venv}
# Lint first: a broken rule fails fast, before the slow suite.
"$venv/bin/ruff" check --quiet appliance ray_jobs tests benchmarks
# The layering (api → services → ray_jobs → appliance.store): contracts in pyproject.toml.
"$venv/bin/lint-imports" --no-cache
# --durations: the slowest tests, so the suite's time (budget: well inside 40 min with installs) is watched.
exec "$venv/bin/python" -m pytest -p no:cacheprovider -ra --durations=25 "$@"
