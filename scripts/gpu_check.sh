#!/usr/bin/env bash
# The GPU checks, in one call of a lent CUDA machine (see benchmarks/gpu_long_context.py):
#   1. the fused Triton LSH kernels on CUDA against the chunked path (tests/test_lsh_fused.py, test_lsh.py's CUDA test);
#   2. benchmarks/gpu_long_context.py, its results written to $OUT (or benchmarks/results) as it goes.
# Usage there: ATTNKIT_COMMIT=<sha> bash scripts/gpu_check.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
  nproc; uptime
} 2>&1 | tee "$OUT/gpu_machine.txt"
timeout "${TEST_TIMEOUT:-200}" $PY -m pytest -p no:cacheprovider -q -rs tests/test_lsh_fused.py tests/test_lsh.py -k "fused or cuda" 2>&1 \
  | tee "$OUT/gpu_tests.log"
echo "tests exit: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_tests.log"
timeout "${BENCH_TIMEOUT:-330}" $PY benchmarks/gpu_long_context.py --max-step-s "${MAX_STEP_S:-15}" --out "$OUT/gpu_long_context" 2>&1 \
  | tee "$OUT/gpu_bench.log"
echo "benchmark exit: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_bench.log"
