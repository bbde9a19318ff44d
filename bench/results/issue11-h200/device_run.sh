#!/bin/bash
# Device run (H100/H200): assemble the embedded gguf from carried chunks, then every issue-11 bench in parallel.
# Kept as run: /root/... and /tmp/site are scratch paths of the lent device machine (the model chunks, the
# pip target), not of the repo or of a developer's machine; data/sst2/dev.tsv was copied to /root/gg there.
T=${1:-460}
cp .g5/part4 /root/gg/ || exit 1
cd /root/gg && cat part0 part1 part2 part3 part4 > gemma-3-270m-q4_k_m.gguf && sha256sum gemma-3-270m-q4_k_m.gguf && cd - >/dev/null
echo "expect a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
export PYTHONPATH=/tmp/site:$PWD ICM_CACHE_DIR=/root/icmcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=2 ICM_TRAIN_THREADS=2
M=/root/gg/gemma-3-270m-q4_k_m.gguf; D=/root/gg/dev.tsv; W=/root/w; mkdir -p $W
python3 -c "
from icm_backend.engine.model import load_lm; lm = load_lm('$M', 'none'); print('loaded', lm.device, lm.dtype, lm.context_window, [lm.tokenizer.encode(' '+w, add_special_tokens=False) for w in ('negative','positive','True','False')]); import transformers; print(transformers.__version__); e=[lm.tokenizer.encode(' '+w, add_special_tokens=False)[0] for w in ('negative','positive')]; raise SystemExit(3 if e[0]==e[1] else 0)" > /root/load.log 2>&1 || { tail -5 /root/load.log; exit 3; }; tail -3 /root/load.log
L="python3 bench/bench_loop.py --data $D --labels negative,positive --n 512 --rounds 4 --per-round 32 --max-iters 2048 --gate-iters 256 --model $M"
for s in 0 1; do
  timeout $T $L --seed $s --arms queue --json $W/loop-queue-s$s.json > $W/loop-queue-s$s.log 2>&1 &
  timeout $T $L --seed $s --arms random --no-ceiling --json $W/loop-random-s$s.json > $W/loop-random-s$s.log 2>&1 &
done
timeout $T python3 bench/bench_loop.py --data $D --labels negative,positive --n 512 --headline 256 --train-steps 64 --max-iters 2048 --model $M --json $W/headline-sst2.json > $W/headline-sst2.log 2>&1 &
timeout $T python3 bench/bench_loop.py --data /root/gg/test_truthfulqa.json --task truthfulqa --n 400 --headline 200 --train-steps 64 --max-iters 1000 --context-tokens 768 --model $M --json $W/headline-tqa.json > $W/headline-tqa.log 2>&1 &
timeout $T python3 bench/bench_drift.py --data $D --labels negative,positive --n 400 --mixes 0.5,0.8,0.2 --seeds 0,1 --max-iters 1600 --model $M --json $W/drift.json > $W/drift.log 2>&1 &
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; uptime
wait
nvidia-smi --query-gpu=name --format=csv,noheader
cd $W && tar czf $OUT/results.tgz $(find . -name '*.json' -size -2M -not -path '*/model-*' -not -path '*/headline-*/*') *.log
for f in *.log; do echo "== $f"; grep -v -i "warn\|deprecat\|outputs = func\|Loading weights" $f | tail -4; done
