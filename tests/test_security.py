"""Issue 12: every probe of a hostile or careless client, as a test.

Most run in-process (Flask test client) over a fake engine that fails the way the real one does: the
real tokenizer raises TypeError on a lone surrogate ("TextEncodeInput must be Union[...]"). The slow-client
and bind probes run a real `icm-backend serve` (tests/backend_process.py) or the real waitress front.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from backend_process import REPO, BackendProcess, wait_for
from fake_labeler import fake_label_rows
from icm_backend.server.app import get_backend

XML = """<View><Text name="text" value="$text"/>
<Choices name="sentiment" toName="text"><Choice value="Positive"/><Choice value="Negative"/></Choices></View>"""
TOKEN = "0123456789abcdef0123456789abcdef01234567"
LONGEST_ROW: list[int] = []


def engine_like_labeler(rows, **kw):
    """fake_label_rows, failing as the real engine does: TypeError on text the tokenizer refuses, and on a
    row holding "POISON" (any other engine failure one task can cause)."""
    LONGEST_ROW.append(max((len(v) for r in rows for v in r.values() if isinstance(v, str)), default=0))
    for r in rows:
        for v in r.values():
            if isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, "
                                    "InputSequence]]") from None
                if "POISON" in v:
                    raise TypeError("engine choked on this row")
    return fake_label_rows(rows, **kw)


@pytest.fixture
def make_app(in_process_app):
    def make(start_worker=True, labeler=engine_like_labeler, loader=lambda name: name, **overrides):
        return in_process_app(labeler, loader=loader, start_worker=start_worker, **overrides)
    return make


def tasks(n, start=1, **special):
    out = [{"id": i, "data": {"text": f"sentence number {i}" + "!" * (i % 4)}} for i in range(start, start + n)]
    for tid, text in special.items():
        out[int(tid[1:]) - start]["data"]["text"] = text
    return out


class _Recorder(http.server.BaseHTTPRequestHandler):
    def _record(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append((self.command, self.path, dict(self.headers), self.rfile.read(n) if n else b""))
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PATCH = do_PUT = _record

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    """A stand-in for a host that should never see a token: records every request."""
    servers = []

    def start():
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        srv.seen = []
        srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()


def _saw(srv, token) -> bool:
    return any(token in json.dumps(h) for _, _, h, _ in srv.seen)


# -- 1. token theft and SSRF -------------------------------------------------------------------------------

def test_setup_hostname_without_token_never_gets_the_stored_token(make_app, recorder):
    attacker = recorder()
    app = make_app(sync_max_tasks=1)
    c = app.test_client()
    assert c.post("/setup", json={"project": "1.1", "schema": XML, "hostname": "http://127.0.0.1:9",
                                  "access_token": TOKEN}).status_code == 200
    c.post("/setup", json={"project": "1.1", "hostname": attacker.url})  # no token: must not inherit LS's
    assert c.post("/predict", json={"tasks": tasks(3), "project": "1.1"}).status_code == 200
    assert get_backend(app).runner.wait_idle(60)
    assert not _saw(attacker, TOKEN), attacker.seen


def test_configured_url_wins_and_gets_no_token_given_for_another_host(make_app, recorder):
    ls, attacker = recorder(), recorder()
    app = make_app(sync_max_tasks=1, label_studio_url=ls.url)
    c = app.test_client()
    # /setup names another host and a token for it: that token must not travel to the configured URL,
    # and the named host must not be contacted at all
    c.post("/setup", json={"project": "2.1", "schema": XML, "hostname": attacker.url, "access_token": TOKEN})
    c.post("/predict", json={"tasks": tasks(3), "project": 2})
    assert get_backend(app).runner.wait_idle(60)
    assert not attacker.seen and not _saw(ls, TOKEN)


def test_configured_url_and_key_are_the_only_ones_used(make_app, recorder):
    ls, attacker = recorder(), recorder()
    app = make_app(sync_max_tasks=1, label_studio_url=ls.url,
                   label_studio_api_key="CONFIGURED-KEY")
    c = app.test_client()
    c.post("/setup", json={"project": "3.1", "schema": XML, "hostname": attacker.url, "access_token": TOKEN})
    c.post("/predict", json={"tasks": tasks(3), "project": 3})
    assert get_backend(app).runner.wait_idle(60)
    assert not attacker.seen and _saw(ls, "CONFIGURED-KEY") and not _saw(ls, TOKEN)


def test_secrets_at_rest_are_owner_only(make_app):
    app = make_app(basic_auth_user="ls", basic_auth_pass="pw")
    c = app.test_client()
    c.post("/setup", json={"project": "1.1", "schema": XML, "hostname": "http://ls:8080", "access_token": TOKEN},
           headers=_basic("ls", "pw"))
    cfg = get_backend(app).config
    files = [cfg.db_path, cfg.model_dir / "webhook_secret"]
    files += [p for p in cfg.model_dir.glob("icm_backend.sqlite3-*")]
    for p in files:
        assert p.exists() and stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (p, oct(p.stat().st_mode))


def test_webhook_secret_is_random_not_derived_from_the_password(make_app, tmp_path):
    app = make_app(basic_auth_user="ls", basic_auth_pass="pw")
    secret = get_backend(app).config.webhook_secret
    derived = hashlib.sha256(b"icm-webhook:ls:pw").hexdigest()[:24]
    assert secret and secret != derived and len(secret) >= 24
    assert (tmp_path / "model" / "webhook_secret").read_text().strip() == secret  # stable across restarts
    other = make_app(model_dir=tmp_path / "other", basic_auth_user="ls", basic_auth_pass="pw", start_worker=False)
    assert get_backend(other).config.webhook_secret != secret  # same credentials, another secret
    ev = {"action": "ANNOTATION_CREATED", "project": {"id": 1}}
    assert app.test_client().post(f"/webhook/{secret}", json=ev).status_code == 200
    assert app.test_client().post(f"/webhook/{derived}", json=ev).status_code == 401


def test_serve_binds_loopback_by_default():
    from icm_backend.cli import build_parser

    os.environ.pop("HOST_BIND", None)
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def _serve(tmp_path, name, args, env):
    port = _free_port()
    model_dir = tmp_path / name
    model_dir.mkdir()
    log = tmp_path / f"{name}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "BASIC_AUTH_"))}
    full_env.update({"MODEL_DIR": str(model_dir), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}, **env)
    full_env.pop("HOST_BIND", None)
    proc = subprocess.Popen([sys.executable, "-m", "icm_backend.cli", "serve", "--port", str(port), *args],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=full_env, cwd=str(REPO),
                            start_new_session=True)

    def up():
        assert proc.poll() is None, log.read_text()
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok
        except requests.RequestException:
            return False

    wait_for(up, 60, f"{name} backend on {port}", every=0.2)
    return proc, port, log, model_dir


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        proc.wait(15)


def test_serve_default_is_loopback_only_and_warns_loudly_beyond_it(tmp_path):
    proc, port, log, _ = _serve(tmp_path, "default", [], {})
    try:
        ip = _non_loopback_ip()
        if ip is not None:
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://{ip}:{port}/health", timeout=2)
        assert "WITHOUT authentication" not in log.read_text()
    finally:
        _stop(proc)
    proc, port, log, _ = _serve(tmp_path, "exposed", ["--host", "0.0.0.0"], {})
    try:
        assert "WITHOUT authentication" in log.read_text()
    finally:
        _stop(proc)


def test_serve_never_logs_the_webhook_secret(tmp_path):
    proc, port, log, model_dir = _serve(tmp_path, "auth", ["--host", "0.0.0.0"],
                                        {"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "pw"})
    try:
        secret = (model_dir / "webhook_secret").read_text().strip()
        r = requests.post(f"http://127.0.0.1:{port}/webhook/{secret}", json={"action": "PROJECT_UPDATED"}, timeout=5)
        assert r.status_code == 200
        text = log.read_text()
        assert secret not in text and "WITHOUT authentication" not in text
    finally:
        _stop(proc)


# -- 2. version pins --------------------------------------------------------------------------------------

def _version(model_dir, name):
    d = model_dir / "versions" / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    return d


def test_bad_pin_is_a_422_for_that_request_only(make_app, tmp_path):
    app = make_app(sync_max_tasks=50)
    c = app.test_client()
    r = c.post("/setup", json={"project": "1.1", "schema": XML, "extra_params": {"model_version": "nope"}})
    assert r.status_code == 422 and "extra_params.model_version" in r.json["error"]
    assert str(tmp_path) not in r.get_data(as_text=True)
    h = c.get("/health")
    assert h.status_code == 200 and h.json["model_version"] == "icm-smollm2-135m"
    assert str(tmp_path) not in h.get_data(as_text=True)
    assert c.post("/setup", json={"project": "2.1", "schema": XML}).status_code == 200
    for project in (1, 2):  # project 1's bad pin was not kept
        r = c.post("/predict", json={"tasks": tasks(2), "project": project, "label_config": XML})
        assert r.status_code == 200 and all(x["result"] for x in r.json["results"])


@pytest.mark.parametrize("pin", ["/etc", "..", "../versions/ft0001-x", "MODEL_AS_PATH", "versions/ft0001-x"])
def test_pin_is_a_version_name_never_a_path(make_app, tmp_path, pin):
    loaded = []
    app = make_app(loader=lambda name: loaded.append(name) or name, sync_max_tasks=50)
    _version(tmp_path / "model", "ft0001-x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "adapter_config.json").write_text("{}")
    pin = str(outside) if pin == "MODEL_AS_PATH" else pin
    c = app.test_client()
    r = c.post("/setup", json={"project": "1.1", "schema": XML, "extra_params": {"model_version": pin}})
    assert r.status_code == 422, r.json
    c.post("/predict", json={"tasks": tasks(2), "project": 1})
    assert all(n in ("smollm2-135m",) for n in loaded), loaded


def test_pins_are_per_project(make_app, tmp_path):
    app = make_app(sync_max_tasks=50)
    _version(tmp_path / "model", "ft0001-x")
    c = app.test_client()
    assert c.post("/setup", json={"project": "1.1", "schema": XML, "extra_params": {"model_version": "ft0001-x"}}
                  ).json["model_version"] == "ft0001-x"
    assert c.post("/setup", json={"project": "2.1", "schema": XML}).json["model_version"] == "icm-smollm2-135m"
    one = c.post("/predict", json={"tasks": tasks(2), "project": 1}).json
    two = c.post("/predict", json={"tasks": tasks(2), "project": 2}).json
    assert {x["model_version"] for x in one["results"]} == {"ft0001-x"}
    assert {x["model_version"] for x in two["results"]} == {"icm-smollm2-135m"}


def test_bad_default_pin_never_breaks_health_nor_shows_a_path(make_app, tmp_path):
    app = make_app(model_version_pin="gone")
    h = app.test_client().get("/health")
    assert h.status_code == 200 and h.json["status"] == "UP" and "gone" in h.json["model_error"]
    assert str(tmp_path) not in h.get_data(as_text=True)


# -- 3. limits --------------------------------------------------------------------------------------------

def test_body_size_is_capped(make_app):
    c = make_app().test_client()
    big = b'{"tasks": [], "project": 1, "pad": "' + b"x" * (50 * 1024 * 1024) + b'"}'
    r = c.post("/predict", data=big, content_type="application/json")
    assert r.status_code == 413 and "ICM_MAX_BODY_BYTES" in r.json["error"]


def test_deep_json_is_a_400(make_app):
    c = make_app().test_client()
    for body in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        r = c.post("/predict", data=body, content_type="application/json")
        assert r.status_code == 400 and r.json["error"].startswith("body"), r.json
    ok = {"tasks": [], "project": 1, "s": "[" * 5000}  # brackets inside strings do not count
    assert c.post("/predict", json=ok).status_code in (200, 404)


@pytest.mark.parametrize("body,field", [
    ({"tasks": [{"id": 2**63, "data": {}}], "project": 1}, "tasks[0].id"),
    ({"tasks": [{"id": -1, "data": {}}], "project": 1}, "tasks[0].id"),
    ({"tasks": [], "project": 2**63}, "project"),
    ({"tasks": [], "project": "9" * 5000}, "project"),
    ({"tasks": [], "project": "99999999999999999999.1"}, "project"),
])
def test_ids_beyond_64_bits_are_a_400(make_app, body, field):
    r = make_app().test_client().post("/predict", json=body)
    assert r.status_code == 400 and r.json["error"].startswith(field), r.json


def test_huge_ids_in_urls_are_4xx(make_app):
    c = make_app().test_client()
    assert c.get(f"/jobs/{2**64}").status_code == 404
    assert c.post(f"/jobs/{2**64}/cancel").status_code == 404
    assert c.get("/jobs?project=99999999999999999999").status_code == 400
    assert c.get("/versions?project=99999999999999999999").status_code == 400


def test_long_text_gets_its_reason_and_never_reaches_the_engine(make_app):
    app = make_app(sync_max_tasks=50)
    LONGEST_ROW.clear()
    batch = tasks(17, t9="long " * 16_000)  # 80 KB
    r = app.test_client().post("/predict", json={"tasks": batch, "project": 1, "label_config": XML})
    res = r.json["results"]
    assert r.status_code == 200 and len(res) == 17
    assert "result" not in res[8] and "too long" in res[8]["error"] and "ICM_MAX_TEXT_CHARS" in res[8]["error"]
    assert all(x["result"] for i, x in enumerate(res) if i != 8)
    assert max(LONGEST_ROW) <= get_backend(app).config.max_text_chars


def test_tasks_per_request_are_capped(make_app):
    r = make_app(max_tasks_per_request=10).test_client().post(
        "/predict", json={"tasks": tasks(11), "project": 1, "label_config": XML})
    assert r.status_code == 413 and "ICM_MAX_TASKS_PER_REQUEST" in r.json["error"]


def test_queued_jobs_are_capped_and_health_stays_fast(make_app, monkeypatch):
    monkeypatch.setenv("FAKE_LABELER_DELAY", "0.5")  # the first job is still running when the 50th request comes
    app = make_app(sync_max_tasks=1, max_queued_jobs=5)
    c = app.test_client()
    notes = []
    for project in range(1, 51):
        r = c.post("/predict", json={"tasks": tasks(3), "project": project, "label_config": XML})
        assert r.status_code == 200 and len(r.json["results"]) == 3
        notes.append(r.json["results"][0]["error"])
    counts = get_backend(app).jobs.counts()
    assert counts.get("queued", 0) + counts.get("running", 0) == 5 and not counts.get("done"), counts
    assert sum("job queue full" in n for n in notes) == 45
    t0 = time.perf_counter()
    assert c.get("/health").status_code == 200 and time.perf_counter() - t0 < 0.5
    again = c.post("/predict", json={"tasks": tasks(3), "project": 1, "label_config": XML})
    assert "job 1 is labelling" in again.json["results"][0]["error"]  # one job per project, not a second


def test_metrics_cardinality_is_bounded_and_labels_cannot_forge_lines(make_app):
    c = make_app().test_client()
    for i in range(2000):
        c.post("/webhook", json={"action": f"MADE_UP_{i}", "project": 1})
    c.post("/webhook", json={"action": 'X"} 1\nicm_model_loaded 1\n#', "project": 1})
    text = c.get("/metrics").get_data(as_text=True)
    assert len(text) < 20_000, len(text)
    assert "icm_model_loaded 0" in text and "\nicm_model_loaded 1" not in text


def test_log_fields_cannot_forge_lines(make_app, caplog):
    c = make_app().test_client()
    caplog.set_level("INFO")
    forged = "1\n2026-01-01 00:00:00,000 INFO icm_backend: admin password changed"
    c.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": forged})
    c.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": forged}})
    messages = [r.getMessage() for r in caplog.records]
    assert any("admin password changed" in m for m in messages)  # logged, escaped
    assert not any("\n" in m for m in messages), messages


# -- 4. slow clients --------------------------------------------------------------------------------------

def test_slow_clients_do_not_stall_health(tmp_path):
    be = BackendProcess(port=_free_port(), model_dir=tmp_path / "model").start()  # --threads 4
    socks = []
    try:
        for i in range(16):  # four times the threads: half a request each, then silence
            s = socket.create_connection(("127.0.0.1", be.port), timeout=5)
            if i % 2:
                s.sendall(b"POST /setup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 1000\r\n\r\n{\"project\": ")
            else:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        time.sleep(1.0)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            r = requests.get(be.url + "/health", timeout=3)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200
        r = requests.post(be.url + "/setup", json={"project": "1.1", "schema": XML}, timeout=3)
        assert r.status_code == 200
        assert max(times) < 1.0, times
    finally:
        for s in socks:
            s.close()
        be.stop()


def test_setup_never_waits_behind_model_bound_predicts(make_app, monkeypatch):
    """The real front (waitress, as `serve` runs it) with 4 threads: 12 parallel /predict that need the model
    (2 s each) and /setup calls alongside. /setup stays fast; the /predicts past ICM_MAX_CONCURRENT_PREDICTS
    get a quick 429 instead of holding threads."""
    from icm_backend.commands.serve import make_server

    monkeypatch.setenv("FAKE_LABELER_DELAY", "0.2")
    app = make_app(sync_max_tasks=50)
    server = make_server(app, get_backend(app).config, "127.0.0.1", 0, threads=4)
    port = server.effective_port
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        def predict(i):
            body = {"tasks": tasks(10, start=1000 * (i + 1)), "project": 1, "label_config": XML}
            return requests.post(url + "/predict", json=body, timeout=30).status_code

        def setup(_):
            t0 = time.perf_counter()
            r = requests.post(url + "/setup", json={"project": "1.1", "schema": XML}, timeout=10)
            return r.status_code, time.perf_counter() - t0

        with ThreadPoolExecutor(24) as pool:
            predicts = [pool.submit(predict, i) for i in range(12)]
            time.sleep(0.3)
            setups = list(pool.map(setup, range(10)))
            codes = [f.result() for f in predicts]
        assert all(code == 200 for code, _ in setups) and max(t for _, t in setups) < 1.0, setups
        assert codes.count(200) >= 2 and set(codes) <= {200, 429}, codes
    finally:
        server.close()


# -- 5. one bad task spoils nothing ----------------------------------------------------------------------

@pytest.mark.parametrize("bad,reason", [("a\ud800b", "not valid Unicode"), ("x" * 200_000, "too long"),
                                        ("POISON pill", "labelling failed: TypeError")],
                         ids=["lone-surrogate", "200KB-text", "engine-TypeError"])
def test_one_bad_task_costs_only_itself(make_app, bad, reason):
    c = make_app(sync_max_tasks=50).test_client()
    batch = tasks(9, t5=bad)
    r = c.post("/predict", json={"tasks": batch, "project": 1, "label_config": XML})
    res = r.json["results"]
    assert r.status_code == 200 and len(res) == 9
    assert "result" not in res[4] and reason in res[4]["error"]  # LS stores nothing for it; says why
    assert all(x["result"] for i, x in enumerate(res) if i != 4)


def test_a_job_never_dies_of_one_bad_task(make_app):
    app = make_app(sync_max_tasks=2, chunk_size=4)
    c = app.test_client()
    batch = tasks(10, t3="a\ud800b", t7="POISON")
    c.post("/predict", json={"tasks": batch, "project": 1, "label_config": XML})
    assert get_backend(app).runner.wait_idle(60)
    job = c.get("/jobs").json["jobs"][0]
    assert job["status"] == "done", job
    assert set(job["state"]["not_labelled_tasks"]) == {"3", "7"} and "2 not labelled" in job["message"]
    res = c.post("/predict", json={"tasks": batch, "project": 1, "label_config": XML}).json["results"]
    assert [("result" in x) for x in res] == [True, True, False, True, True, True, False, True, True, True]


def test_a_model_that_cannot_load_says_so(make_app, tmp_path):
    def broken(name):
        raise OSError(f"no weights at {tmp_path}/model/versions/x")

    app = make_app(loader=broken, sync_max_tasks=50)
    c = app.test_client()
    r = c.post("/predict", json={"tasks": tasks(3), "project": 1, "label_config": XML})
    assert r.status_code == 503 and "cannot be loaded" in r.json["error"]
    assert all("result" not in x for x in r.json["results"]) and len(r.json["results"]) == 3
    h = c.get("/health")
    assert h.status_code == 200 and h.json["model_status"] == "error" and "cannot be loaded" in h.json["model_error"]
    assert str(tmp_path) not in h.get_data(as_text=True) + r.get_data(as_text=True)
    assert "cannot be loaded" in c.post("/setup", json={"project": "1.1", "schema": XML}).json["warning"]


# -- 6. the rest ------------------------------------------------------------------------------------------

def _basic(user, pw):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def test_non_ascii_credentials(make_app):
    c = make_app(basic_auth_user="lś", basic_auth_pass="pässwörd-密码").test_client()
    assert c.post("/setup", json={}, headers=_basic("lś", "pässwörd-密码")).status_code == 200
    assert c.post("/setup", json={}, headers=_basic("lś", "passwörd")).status_code == 401
    assert c.post("/setup", json={}, headers=_basic("ü", "ö")).status_code == 401
    assert c.post("/webhook/sécret", json={"action": "PROJECT_UPDATED"}).status_code == 401
    ascii_app = make_app(basic_auth_user="ls", basic_auth_pass="pw").test_client()
    assert ascii_app.post("/setup", json={}, headers=_basic("ü", "ö")).status_code == 401


@pytest.mark.parametrize("body,field", [
    ({"project": "1.1", "hostname": {"a": 1}}, "hostname"),
    ({"project": "1.1", "hostname": ["http://x"]}, "hostname"),
    ({"project": "1.1", "hostname": "file:///etc/passwd"}, "hostname"),
    ({"project": "1.1", "access_token": {"t": 1}}, "access_token"),
    ({"project": "1.1", "schema": 5}, "schema"),
    ({"project": "1.1", "extra_params": {"model_version": {"x": 1}}}, "extra_params.model_version"),
])
def test_setup_bad_fields_are_4xx_naming_the_field(make_app, body, field):
    r = make_app().test_client().post("/setup", json=body)
    assert 400 <= r.status_code < 500 and r.json["error"].startswith(field), r.json


def test_duplicate_task_ids_are_a_400(make_app):
    batch = tasks(3) + [{"id": 2, "data": {"text": "another text"}}]
    r = make_app().test_client().post("/predict", json={"tasks": batch, "project": 1, "label_config": XML})
    assert r.status_code == 400 and r.json["error"].startswith("tasks[3].id") and "duplicate" in r.json["error"]


def test_too_many_choices_is_a_clear_error(make_app):
    xml = ('<View><Text name="text" value="$text"/><Choices name="c" toName="text">'
           + "".join(f'<Choice value="label {i}"/>' for i in range(1000)) + "</Choices></View>")
    c = make_app().test_client()
    r = c.post("/predict", json={"tasks": tasks(2), "project": 1, "label_config": xml})
    assert r.status_code == 422 and "1000 choices" in r.json["error"] and "ICM_MAX_CHOICES" in r.json["error"]
    assert "ICM_MAX_CHOICES" in c.post("/setup", json={"project": "1.1", "schema": xml}).json["warning"]


@pytest.mark.slow
def test_real_engine_one_bad_task_costs_only_itself(in_process_app):
    """The same probe on the real engine (smollm2-135m, zero-shot): its tokenizer raises TypeError on a lone
    surrogate, and a 200 KB text would take minutes and gigabytes; the other tasks are labelled."""
    # labeler and loader None: the ModelHost's own, i.e. the real engine and load_lm
    app = in_process_app(None, loader=None, start_worker=False, method="zero-shot", sync_max_tasks=50,
                         predict_budget_s=300)
    batch = tasks(10, t3="a\ud800b", t7="great movie " * 20_000)
    r = app.test_client().post("/predict", json={"tasks": batch, "project": 1, "label_config": XML})
    res = r.json["results"]
    assert r.status_code == 200 and len(res) == 10
    assert "not valid Unicode" in res[2]["error"] and "too long" in res[6]["error"]
    assert all(x.get("result") for i, x in enumerate(res) if i not in (2, 6)), res


def test_front_serves_liveness_first_then_short_calls_then_predict():
    from types import SimpleNamespace

    from icm_backend.commands.serve import Lanes

    def task(path):
        return SimpleNamespace(requests=[SimpleNamespace(path=path)], name=path)

    q = Lanes()
    for path in ("/predict", "/setup", "/predict", "/health", "/webhook", "/", "/jobs"):
        q.append(task(path))
    order = []
    while q:
        order.append(q.popleft().name)
    assert order == ["/health", "/", "/setup", "/webhook", "/jobs", "/predict", "/predict"]
    with pytest.raises(IndexError):
        q.popleft()
