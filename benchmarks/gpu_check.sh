#!/usr/bin/env bash
# Proves the GPU paths on a GPU host (CI has none). Runs, in order:
#   1. gpu_check.py            the Ray-free training core on CUDA vs a bare CUDA loop, NVML utilisation,
#                              checkpoint reload + prediction, SSDLite detection epoch + mAP
#   2. gpu_eval_concurrency.py one vs four concurrent fractional-GPU evaluations (Ray tasks with
#                              num_gpus=0.25 when Ray is installed, else four capped processes)
#   3. gpu_export_check.py     TensorRT fp16 vs PyTorch eager fp32 (skips TensorRT when absent)
# Each prints a JSON line; with RESULTS_DIR set, each also lands in $RESULTS_DIR/<name>.json.
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
exit $status
