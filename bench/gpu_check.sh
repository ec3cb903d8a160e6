#!/usr/bin/env bash
# The GPU check of the training path on one H100/H200, at most 8 minutes; writes the GPU section of
# bench/RESULTS.md (and bench/gpu_check.json). What it measures: bench/gpu_check.py's docstring.
#
#   bash bench/gpu_check.sh                 # on a GPU node (sets up .venv first if needed)
#   bash bench/gpu_check.sh --cpu-smoke     # every part with tiny sizes on the CPU (the test suite runs this)
#
# Extra arguments go to bench/gpu_check.py (e.g. --parts ab, --results FILE).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VCLIP_VENV:-$root/.venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import cn_clip_ext, cn_clip" 2>/dev/null; then
  bash "$root/run_scripts/setup.sh"
fi
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}  # deterministic cuBLAS for the resume smoke
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
cd "$root"
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$venv/bin/python" bench/gpu_check.py --json "$root/bench/gpu_check.json" "$@"
