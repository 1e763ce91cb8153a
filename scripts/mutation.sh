#!/usr/bin/env bash
# Mutation testing of the pure modules (importers, ZIP safety, split allocation, metrics, auth,
# envelope/errors) with mutmut, against the fast in-process tests only (no Ray, no server):
# tests/unit, tests/services/ (importers, hostile files; the app in-process at most) and
# tests/ray_jobs/test_core_metrics.py.
# What is mutated and which tests run is configured in pyproject.toml ([tool.mutmut]).
#
#   AISTUDIO_VENV  virtualenv to use (default .venv); mutmut is installed into it when missing
#   MUTMUT_JOBS    parallel mutant workers (default: the number of CPUs)
#
#   scripts/mutation.sh              a fresh run of every mutant (about an hour on 2 busy cores)
#   scripts/mutation.sh --survivors  after adding tests: re-run only the mutants the last run did
#                                    not kill, with the current tests; the other results stand
#
# Ends with one line: `mutation: K killed of N (P%)`. Survivors: `mutmut results` / `mutmut show NAME`
# (run from the repository root with the same virtualenv); docs/mutation.md lists the ones kept.
# Takes tens of minutes on a 2-core machine, so it is not part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${AISTUDIO_VENV:-.venv}
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "no virtualenv at $VENV (set AISTUDIO_VENV)" >&2; exit 2; }
if ! "$PY" -c "import mutmut, hypothesis" 2>/dev/null; then
    # the pins in pyproject.toml: the `mutation` extra and hypothesis from the `test` extra
    mapfile -t pins < <("$PY" - <<'PY'
import tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
print("\n".join(extras["mutation"] + [r for r in extras["test"] if r.startswith("hypothesis")]))
PY
)
    "$PY" -m pip install --quiet "${pins[@]}"
fi

export HYPOTHESIS_PROFILE=mutation  # fewer, derandomized examples: reproducible and quick
unset PYTHONPATH                     # the tests must import the mutated copy in mutants/
config_snapshot() {  # [tool.mutmut]: mutmut drops every cached verdict when it changes
    "$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["tool"]["mutmut"])'
}
names=()
if [ "${1:-}" = "--survivors" ]; then
    [ -d mutants ] || { echo "no previous run in mutants/" >&2; exit 2; }
    if [ "$(config_snapshot)" != "$(cat mutants/config.snapshot 2>/dev/null)" ]; then
        echo "[tool.mutmut] changed since the last full run: run scripts/mutation.sh without --survivors" >&2
        exit 2
    fi
    mapfile -t names < <("$PY" - <<'PY'
import json
from pathlib import Path

from mutmut.stats import status_by_exit_code

for meta in sorted(Path("mutants").rglob("*.py.meta")):
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        if status_by_exit_code[code] in ("survived", "no tests", "suspicious", "not checked"):
            print(name)
PY
)
    echo "re-running ${#names[@]} mutants" >&2
else
    rm -rf mutants && mkdir mutants  # a fresh run (no stale results)
    config_snapshot >mutants/config.snapshot
fi
started=$(date +%s)
"$PY" -m mutmut run --max-children "${MUTMUT_JOBS:-$(nproc)}" "${names[@]}" >>mutants/run.log 2>&1 || {
    tail -c 4000 mutants/run.log | tr "\r" "\n" | tail -20 >&2
    echo "mutmut run failed (full log: mutants/run.log)" >&2
    exit 1
}

echo "  mutmut ran $(( ($(date +%s) - started) / 60 )) min"
"$PY" - <<'PY'
import json
from pathlib import Path

from mutmut.stats import status_by_exit_code

# One <module>.py.meta JSON per mutated file holds each mutant's exit code. A timeout or a crash
# counts as killed (the mutant broke the code); "no tests", "suspicious", "not checked" as not.
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
killed = total = 0
for meta in sorted(Path("mutants").rglob("*.py.meta")):
    codes = json.loads(meta.read_text())["exit_code_by_key"].values()
    statuses = [status_by_exit_code[c] for c in codes if status_by_exit_code[c] != "skipped"]
    k = sum(s in KILLED for s in statuses)
    print(f"  {meta.relative_to('mutants').with_suffix('')}: {k} killed of {len(statuses)}")
    killed, total = killed + k, total + len(statuses)
pct = 100 * killed / total if total else 0.0
print(f"mutation: {killed} killed of {total} ({pct:.1f}%)")
PY
