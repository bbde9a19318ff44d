#!/bin/bash
# run.sh's vLLM given both cores (OMP_NUM_THREADS=2; by default it keeps one torch thread on a 2-core machine),
# zero-shot at 1,000 through it only. Run alone, under the shared CPU lock:
#   flock /tmp/icm-cpu.lock bench/results/issue19-vllm-cost/run-omp2.sh > bench/results/issue19-vllm-cost/run-omp2.log 2>&1
source "$(dirname "$0")/common.sh"

echo "== a real vLLM with OMP_NUM_THREADS=2: zero-shot at 1,000"
start_vllm vllm-omp2 OMP_NUM_THREADS=2
$PY bench/bench_scale.py cost --texts $TEXTS --sizes 1000 --methods zero-shot \
  --json $R/vllm-omp2.jsonl $SRV || exit 1
grep -E "Prefix cache hit rate" $R/vllm-omp2.log | tail -1
echo "end $(date -u)"
