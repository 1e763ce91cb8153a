#!/usr/bin/env bash
# Proves the GPU paths on a GPU host (CI has none). Runs, in order:
#   1. gpu_check.py            the Ray-free training core on CUDA vs a bare CUDA loop, NVML utilisation,
#                              checkpoint reload + prediction, SSDLite detection epoch + mAP
#   2. gpu_eval_concurrency.py one vs four concurrent fractional-GPU evaluations (Ray tasks with
#                              num_gpus=0.25 when Ray is installed, else four capped processes)
#   3. gpu_export_check.py     TensorRT fp16 vs PyTorch eager fp32 (skips TensorRT when absent)
#   4. gpu_ray_check.py        Ray Train (TorchTrainer, use_gpu=True, a fractional GPU) vs the Ray-free
#                              fit in the same run (skipped, and said so, when Ray is not installed)
#   5. pytest -m gpu           the tests marked `gpu` (skipped on CPU hosts), e.g. a TensorRT engine
#                              built and checked against PyTorch where TensorRT is installed
# Each benchmark prints a JSON line; with RESULTS_DIR set, each also lands in $RESULTS_DIR/<name>.json
# (and the tests' log and JUnit XML in $RESULTS_DIR/pytest_gpu.{log,xml}).
# Usage: benchmarks/gpu_check.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
quick=0; [ "${1:-}" = "--quick" ] && quick=1
out=${RESULTS_DIR:-}
status=0
run() {
  local name=$1; shift
  echo "== $name"
  if [ -n "$out" ]; then
    "$py" "benchmarks/$name.py" "$@" 2>&1 | tee "$out/$name.log" | grep '^{' > "$out/$name.json"
  else
    "$py" "benchmarks/$name.py" "$@"
  fi
  local rc=${PIPESTATUS[0]}
  echo "== $name exit $rc"
  [ "$rc" -eq 0 ] || status=1
}
if [ "$quick" -eq 1 ]; then
  run gpu_check --images 1024 --epochs 2
  run gpu_eval_concurrency --images 512
  run gpu_export_check --iters 10
else
  run gpu_check
  run gpu_eval_concurrency
  run gpu_export_check
fi
if "$py" -c 'import ray' 2>/dev/null; then
  if [ "$quick" -eq 1 ]; then run gpu_ray_check --images 1024; else run gpu_ray_check; fi
else
  echo "== gpu_ray_check skipped: Ray is not installed for $py (carry its wheel; see benchmarks/README.md)"
fi

# Only the files that hold gpu tests: the rest of the suite needs Ray and the web stack, which a
# GPU check host may lack (the Ray-free core is enough for these).
echo "== pytest -m gpu"
mapfile -t gpu_tests < <(grep -rl --include='test_*.py' 'pytest.mark.gpu' tests | sort)
if ! "$py" -c 'import pytest' 2>/dev/null; then
  echo "pytest is not installed for $py: the gpu tests did not run"
  status=1
elif [ "${#gpu_tests[@]}" -eq 0 ]; then
  echo "no test is marked gpu"
  status=1
else
  args=(-m pytest -p no:cacheprovider -m gpu -ra "${gpu_tests[@]}")
  if [ -n "$out" ]; then
    "$py" "${args[@]}" --junitxml "$out/pytest_gpu.xml" 2>&1 | tee "$out/pytest_gpu.log"
  else
    "$py" "${args[@]}"
  fi
  rc=${PIPESTATUS[0]}
  echo "== pytest -m gpu exit $rc"
  [ "$rc" -eq 0 ] || status=1
fi
exit $status
