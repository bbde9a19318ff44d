"""Start a REAL Label Studio 1.23.2 for tests: fresh data dir, free port, own process group.

Reusable outside pytest too:

    with LabelStudioServer.start(tmp_dir) as ls:
        ls.client.projects.create(...)

Label Studio lives in its own venv (its deps clash with ours); the binary comes from env
ICM_LABEL_STUDIO_BIN, else `.venv-ls/bin/label-studio` in the repo (`make ls-venv`).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BINS = (REPO / ".venv-ls" / "bin" / "label-studio",)
# Cold start with a fresh data dir runs all migrations (~25 s on a laptop); CI machines are slower.
START_TIMEOUT_S = float(os.environ.get("ICM_LABEL_STUDIO_START_TIMEOUT", "240"))


def find_label_studio_bin() -> Path | None:
    env = os.environ.get("ICM_LABEL_STUDIO_BIN")
    if env:
        return Path(env) if Path(env).exists() else None
    for cand in DEFAULT_BINS:
        if cand.exists():
            return cand
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict:
    # LS reads LABEL_STUDIO_X, then HEARTEX_X, then plain X: a stray USERNAME/PORT/HOST leaks in.
    env = {k: v for k, v in os.environ.items()
           if k not in ("USERNAME", "PASSWORD", "PORT", "HOST", "DATABASE_URL", "DJANGO_DB")
           and not k.startswith(("LABEL_STUDIO_", "HEARTEX_"))}
    return env


@dataclass
class LabelStudioServer:
    url: str
    token: str  # legacy API token (works as `Authorization: Token <token>` and as SDK api_key)
    username: str
    password: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen | None = field(default=None, repr=False)
    _client: object = field(default=None, repr=False)

    @classmethod
    def start(cls, data_dir: Path, binary: Path | None = None, port: int | None = None) -> "LabelStudioServer":
        binary = binary or find_label_studio_bin()
        if binary is None:
            raise FileNotFoundError("label-studio binary not found (set ICM_LABEL_STUDIO_BIN)")
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        token = secrets.token_hex(20)  # 40 hex chars, as LS expects for a user token
        password = secrets.token_urlsafe(12)
        username = "admin@example.com"
        env = _clean_env()
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_USERNAME": username,
            "LABEL_STUDIO_PASSWORD": password,
            "LABEL_STUDIO_USER_TOKEN": token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            # Both are needed for an ML backend on 127.0.0.1 with LS >= 1.23.1.
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "SENTRY_DSN": "",
            "COLLECT_ANALYTICS": "false",
            "LATEST_VERSION_CHECK": "false",
        })
        log_path = data_dir / "label-studio.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(data_dir),
            start_new_session=True,  # own process group: teardown kills LS and its children together
        )
        server = cls(url=f"http://127.0.0.1:{port}", token=token, username=username, password=password,
                     data_dir=data_dir, log_path=log_path, process=proc)
        try:
            server._wait_ready()
        except Exception:
            server.stop()
            raise
        return server

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"label-studio exited with {self.process.returncode}; log:\n{self.log_tail()}")
            try:
                # /health answers before the user exists; an authenticated call proves both are ready
                r = requests.get(self.url + "/api/projects", headers=self.headers, timeout=3)
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise TimeoutError(f"label-studio not ready after {START_TIMEOUT_S:.0f}s; log:\n{self.log_tail()}")

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Token {self.token}"}

    @property
    def client(self):
        if self._client is None:
            from label_studio_sdk import LabelStudio

            self._client = LabelStudio(base_url=self.url, api_key=self.token)
        return self._client

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> "LabelStudioServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def sst2_rows(data_dir: Path, n: int, start: int = 0) -> list[tuple[str, str]]:
    """n SST-2 dev sentences from row `start` on, with their gold label as classify.xml spells it
    (Positive/Negative): the gold stays with the test, outside Label Studio."""
    out = []
    for line in (data_dir / "sst2" / "dev.tsv").read_text().splitlines()[1 + start:1 + start + n]:
        text, label = line.rsplit("\t", 1)
        out.append((text.strip(), "Positive" if label.strip() == "1" else "Negative"))
    return out


def chromium_driver(window: str = "1600,3300"):
    """Headless Chromium through Selenium (Debian's chromium + chromium-driver; `make chromium`), or skip.
    The default window is tall enough for the Data Manager grid to render 40 rows."""
    import shutil

    import pytest

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium not installed (pip install selenium; `make test` installs it)")
    binary = os.environ.get("ICM_CHROMIUM_BIN") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not binary or not driver_bin:
        pytest.skip("chromium and chromedriver needed: `apt-get install -y chromium chromium-driver` (make chromium)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 f"--window-size={window}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_bin), options=opts)


def browser_login(driver, label_studio, timeout: float = 60):
    """Log the browser into Label Studio as the harness's admin; returns a WebDriverWait for the caller."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    driver.get(label_studio.url + "/user/login/")
    wait.until(EC.presence_of_element_located((By.NAME, "email"))).send_keys(label_studio.username)
    driver.find_element(By.NAME, "password").send_keys(label_studio.password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    wait.until(lambda d: "/user/login" not in d.current_url)
    return wait


DM_CELLS_JS = """
// The Data Manager grid (LS 1.23.2): header cells carry data-id; a row's cells follow the same order.
const ths = [...document.querySelectorAll('.lsf-table-head .lsf-th')];
const col = id => ths.findIndex(e => e.getAttribute('data-id') === id);
const s = col(arguments[0]), t = col('tasks:id');
if (s < 0 || t < 0) return null;
return [...document.querySelectorAll('[data-testid="table-row"]')].map(r => {
  const cells = r.querySelectorAll(':scope > .lsf-table__cell');
  return [cells[t] ? cells[t].textContent.trim() : '', cells[s] ? cells[s].textContent.trim() : ''];
});
"""


def dm_column_cells(driver, column_id: str) -> list[list[str]] | None:
    """[task id, cell text] per Data Manager row shown, for the column `column_id` (e.g.
    "tasks:predictions_score"); None while the grid or that column is not rendered."""
    return driver.execute_script(DM_CELLS_JS, column_id)


def open_score_order_tab(driver, label_studio, project: int, title: str):
    """What a reviewer does to see the least confident first: a Data Manager tab with every column shown, sorted by
    Prediction score ascending; logs the browser in and opens it. Returns the WebDriverWait once the column shows."""
    from selenium.webdriver.common.by import By

    view = requests.post(f"{label_studio.url}/api/dm/views", headers=label_studio.headers, timeout=10, json={
        "project": project, "data": {"title": title, "ordering": ["tasks:predictions_score"],
                                     "hiddenColumns": {"explore": [], "labeling": []}}}).json()
    wait = browser_login(driver, label_studio)
    driver.get(f"{label_studio.url}/projects/{project}/data?tab={view['id']}")
    wait.until(lambda d: "Prediction score" in d.find_element(By.TAG_NAME, "body").text)
    return wait


def wait_for_column(wait, column_id: str, n_rows: int) -> list[list[str]]:
    """dm_column_cells once the grid shows `n_rows` rows."""
    return wait.until(lambda d: (r := dm_column_cells(d, column_id)) and len(r) == n_rows and r)
