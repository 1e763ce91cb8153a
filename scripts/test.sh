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
# The Docker image check (scripts/container_check.sh, issue #15 item 4): the stand-in base and the image
# build, then the container runs its end-to-end, all in the background while the suite runs (build 7-11
# min, run ~5 min: both inside the suite's ~30 min); the result is printed after the suite. It reports
# SKIPPED with the reason on a machine without the disk it needs. On by default for the whole suite (no
# pytest arguments: what CI runs); AISTUDIO_CONTAINER_CHECK=0 leaves it out, =1 adds it to a partial run.
default_check=0; [ $# -eq 0 ] && default_check=1
container_check=${AISTUDIO_CONTAINER_CHECK:-$default_check}
container_log=$(mktemp -t aistudio-container-build.XXXXXX)
AISTUDIO_CONTAINER_STATE=$(mktemp -d -t aistudio-container-check.XXXXXX)
export AISTUDIO_CONTAINER_STATE
container_pid=""
finish() {
  if [ -n "$container_pid" ] && kill -0 "$container_pid" 2>/dev/null; then
    kill -- "-$container_pid" 2>/dev/null || kill "$container_pid" 2>/dev/null || true
    wait "$container_pid" 2>/dev/null || true
    bash scripts/container_check.sh clean >/dev/null 2>&1 || true
  fi
  rm -rf "$container_log" "$AISTUDIO_CONTAINER_STATE"
}
trap finish EXIT
if [ "$container_check" = 1 ]; then
  set -m  # its own process group, so an interrupted run stops the whole build
  bash scripts/container_check.sh all > "$container_log" 2>&1 &
  container_pid=$!
  set +m
fi
# Lint first: a broken rule fails fast, before the slow suite.
"$venv/bin/ruff" check --quiet appliance ray_jobs tests benchmarks
# The layering (api → services → ray_jobs → appliance.store): contracts in pyproject.toml.
"$venv/bin/lint-imports" --no-cache
# --durations: the slowest tests, so the suite's time (budget: well inside 40 min with installs) is watched.
suite=0
"$venv/bin/python" -m pytest -p no:cacheprovider -ra --durations=60 "$@" || suite=$?
container=0
if [ -n "$container_pid" ]; then
  echo "=== Docker image check (scripts/container_check.sh, run beside the suite) ==="
  wait "$container_pid" || container=$?
  container_pid=""
  cat "$container_log"
fi
[ "$suite" -eq 0 ] || exit "$suite"
exit "$container"
