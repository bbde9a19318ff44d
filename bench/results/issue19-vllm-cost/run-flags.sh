#!/bin/bash
# Server flags against the one-pass phase's cost through vLLM (CPU): the same core and rows as run.sh's vLLM
# one-pass rows (1,514 s at 1,000 with no flags), with a smaller KV block (the prefix cache reuses whole blocks
# only, 128 tokens by default on CPU: a row recomputes its prefix's last partial block). Run alone:
#   flock /tmp/icm-cpu.lock bench/results/issue19-vllm-cost/run-flags.sh [BLOCK [TASKS]] > LOG 2>&1
# BLOCK defaults to 32, TASKS to 1000. The raw logs: run-flags.log (32), run-flags-bs16.log (16),
# run-flags-10k.log (32 10000).
BS=${1:-32}
N=${2:-1000}
source "$(dirname "$0")/common.sh"
VLLM_ARGS="--block-size $BS"
LOG=vllm-bs$BS; [ "$N" = 1000 ] || LOG=$LOG-$((N / 1000))k
start_vllm $LOG
$PY bench/bench_scale.py cost --texts $TEXTS --sizes $N --methods one-pass --core $R/core.json \
  --json $R/vllm-bs$BS.jsonl $SRV || exit 1
grep -E "Prefix cache hit rate" $R/$LOG.log | tail -1
echo "end $(date -u)"
