#!/bin/bash
# The one-pass phase at 10,000 tasks through vLLM (CPU) started with --block-size 32 (run-flags.sh: 759 s at
# 1,000 against 1,514 s with the default 128-token block), the same core as every row here. Run alone:
#   flock /tmp/icm-cpu.lock bench/results/issue19-vllm-cost/run-flags-10k.sh > bench/results/issue19-vllm-cost/run-flags-10k.log 2>&1
source "$(dirname "$0")/common.sh"
VLLM_ARGS="--block-size 32"
start_vllm vllm-bs32-10k
$PY bench/bench_scale.py cost --texts $TEXTS --sizes 10000 --methods one-pass --core $R/core.json \
  --json $R/vllm-bs32.jsonl $SRV || exit 1
grep -E "Prefix cache hit rate" $R/vllm-bs32-10k.log | tail -1
echo "end $(date -u)"
