# Sourced by run.sh and run-omp2.sh: the setting, the CPU line, and start_vllm.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
R=bench/results/issue19-vllm-cost
PY=${PY:-.venv/bin/python}
VPY=${ICM_VLLM_PYTHON:-.venv-vllm/bin/python}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
TEXTS="data/sst2/dev.tsv data/sst2/test.tsv"
echo "start $(date -u) load $(cut -d' ' -f1-3 /proc/loadavg)"
lscpu | grep -E "Model name"; grep -o -w -E "avx512_bf16|amx_bf16|avx2" /proc/cpuinfo | sort | uniq -c

start_vllm() {  # $1: log name ($R/$1.log), rest: extra environment (NAME=VALUE); sets URL and SRV
  # VLLM_ARGS: extra server flags (run-flags.sh)
  local log=$R/$1.log; shift
  MODEL_DIR=$($PY -c 'import sys; sys.path.insert(0, "tests"); from vllm_harness import default_model_dir; print(default_model_dir())')
  PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  URL=http://127.0.0.1:$PORT/v1
  env "$@" VLLM_CPU_KVCACHE_SPACE=4 setsid $VPY -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" \
    --served-model-name gemma --max-model-len 2048 --dtype float32 --host 127.0.0.1 --port $PORT ${VLLM_ARGS:-} > $log 2>&1 &
  VLLM_PID=$!
  trap 'kill -TERM -- -$VLLM_PID 2>/dev/null' EXIT
  local t0=$SECONDS
  until curl -sf $URL/models > /dev/null; do
    sleep 2
    kill -0 $VLLM_PID 2>/dev/null || { echo "vLLM exited"; tail -30 $log; exit 1; }
  done
  echo "vLLM up in $((SECONDS - t0)) s (vllm-cpu $($VPY -c 'import vllm; print(vllm.__version__)'), --dtype float32 ${VLLM_ARGS:-})"
  SRV="--server $URL --model gemma --tokenizer gemma3-270m --server-retry-s 600"
}
