"""Run `icm-backend serve` as a real HTTP server in a subprocess (own process group), for E2E tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


def wait_for(pred, timeout: float, what: str, every: float = 0.5):
    """Poll `pred` until it returns something truthy; return that, or raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class BackendProcess:
    port: int
    model_dir: Path
    env: dict = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "BackendProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
        env.update({"MODEL_DIR": str(self.model_dir), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
        env.update(self.env)
        self.log_path = self.log_path or self.model_dir.parent / "backend.log"
        self.model_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "icm_backend.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--threads", "4"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"backend exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                r = requests.get(self.url + "/health", timeout=1)
                # the process we started, not a stray server on a reused port
                if r.ok and r.json().get("model_class") == "ICM":
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"backend not healthy after {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole group: a crash, not a graceful shutdown (what a restart must survive)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, n: int = 6000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""


@contextmanager
def stopped_after(backend: "BackendProcess", label_studio=None, backend_log_chars: int = 6000):
    """Run a test body against `backend`; on failure print the backend's (and Label Studio's) log tail,
    and always stop the backend."""
    try:
        yield backend
    except Exception:
        print("---- backend log ----\n" + backend.log_tail(backend_log_chars))
        if label_studio is not None:
            print("---- label studio log ----\n" + label_studio.log_tail())
        raise
    finally:
        backend.stop()
