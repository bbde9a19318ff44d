#!/bin/bash
# (A one-off record: /work/wt-base was a worktree of b8d27a0, before the conftest change.)
# The vLLM tests with the test server at --block-size 32 (main) and at the CPU default 128 (wt-base: HEAD
# before the conftest change), one after the other, alone under the CPU lock.
export ICM_VLLM_PYTHON=/work/main/.venv-vllm/bin/python ICM_LABEL_STUDIO_BIN=/work/main/.venv-ls/bin/label-studio
T="tests/test_remote_vllm.py tests/test_remote_vllm_backend.py"
echo "start $(date -u) load $(cut -d' ' -f1-3 /proc/loadavg)"; lscpu | grep "Model name"
for d in /work/main /work/wt-base; do
  cd $d; echo "== $d: $(grep -c 'block-size' tests/conftest.py) block-size line(s) in conftest"
  t0=$SECONDS; /work/main/.venv/bin/python -m pytest -q -p no:cacheprovider $T --durations=12 2>&1 | tail -18
  echo "elapsed $((SECONDS - t0)) s"
done
echo "end $(date -u)"
