#!/bin/bash
# Server flags against the one-pass phase's cost through vLLM (CPU): the same core and rows as run.sh's vLLM
# one-pass row at 1,000 (1,514 s with no flags), with a smaller KV block (the prefix cache reuses whole blocks
# only, 128 tokens by default on CPU: a row recomputes its prefix's last partial block). Run alone:
#   flock /tmp/icm-cpu.lock bench/results/issue19-vllm-cost/run-flags.sh > bench/results/issue19-vllm-cost/run-flags.log 2>&1
# $1: the block size (default 32; run-flags-bs16.log is `run-flags.sh 16`)
BS=${1:-32}
source "$(dirname "$0")/common.sh"
VLLM_ARGS="--block-size $BS"
start_vllm vllm-bs$BS
$PY bench/bench_scale.py cost --texts $TEXTS --sizes 1000 --methods one-pass --core $R/core.json \
  --json $R/vllm-bs$BS.jsonl $SRV || exit 1
grep -E "Prefix cache hit rate" $R/vllm-bs$BS.log | tail -1
echo "end $(date -u)"
