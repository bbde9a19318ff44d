"""Every endpoint with the requests a real Label Studio 1.23.2 sent (captured fixtures), plus bad bodies.

The engine is a deterministic fake here (tests/fake_labeler.py); the real engine runs in the E2E test.
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from fake_labeler import fake_label_rows
from icm_backend.server.app import get_backend
from icm_backend.server.config import ServerConfig

CLASSIFY_XML = """<View><Text name="text" value="$text"/>
<Choices name="sentiment" toName="text"><Choice value="Positive"/><Choice value="Negative"/></Choices>
<Choices name="needs_review" toName="text"><Choice value="needs review"/></Choices>
<TextArea name="review_reason" toName="text" editable="true"/></View>"""


def load(ls_fixtures_dir, name):
    return json.loads((ls_fixtures_dir / name).read_text())


@pytest.fixture
def make_app(in_process_app):
    return lambda start_worker=True, **overrides: in_process_app(fake_label_rows, start_worker=start_worker, **overrides)


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def test_health_and_root_fast_and_do_not_load_model(client, ls_fixtures_dir):
    req = load(ls_fixtures_dir, "health.json")
    for path in (req["path"], "/"):
        t0 = time.perf_counter()
        r = client.get(path, headers={k: v for k, v in req["headers"].items() if k != "Host"})
        assert time.perf_counter() - t0 < 1.0
        assert r.status_code == 200 and r.json["status"] == "UP"
        assert r.json["model_loaded"] is False


def test_setup_returns_stable_version(client, ls_fixtures_dir):
    req = load(ls_fixtures_dir, "setup.json")
    t0 = time.perf_counter()
    a = client.post("/setup", json=req["json"])
    b = client.post("/setup", json=req["json"])
    assert time.perf_counter() - t0 < 3.0
    assert a.status_code == 200 and a.json["model_version"] == b.json["model_version"] == "icm-smollm2-135m"
    assert client.get("/health").json["model_loaded"] is False


def test_predict_batch_fixture_small_batch_in_request(make_app, ls_fixtures_dir):
    app = make_app(sync_max_tasks=50)
    client = app.test_client()
    body = load(ls_fixtures_dir, "predict_batch.json")["json"]
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.json
    results = r.json["results"]
    assert len(results) == len(body["tasks"])
    for item in results:
        assert item["model_version"] == "icm-smollm2-135m"
        assert 0.0 <= item["score"] <= 1.0
        assert item["result"][0]["from_name"] == "label" and item["result"][0]["to_name"] == "text"
        assert item["result"][0]["value"]["choices"][0] in ("True", "False")
    # plain Text+Choices config (no review block): a flagged task holds the label only, and its score is
    # still the probability of that label (never rescaled by the LS layer)
    assert len(results[0]["result"]) == 1 and results[0]["score"] == results[0]["result"][0]["score"]
    # second call: served from the store
    t0 = time.perf_counter()
    again = client.post("/predict", json=body)
    assert time.perf_counter() - t0 < 1.0
    assert again.json["results"] == results


def test_predict_interactive_fixture(client, ls_fixtures_dir):
    body = load(ls_fixtures_dir, "predict_interactive.json")["json"]
    r = client.post("/predict", json=body)
    assert r.status_code == 200 and len(r.json["results"]) == 1


def test_review_block_carries_choice_and_reason_with_task_ids(make_app):
    client = make_app(sync_max_tasks=50).test_client()
    tasks = [{"id": 100 + i, "data": {"text": "x" * (i + 1)}} for i in range(5)]
    r = client.post("/predict", json={"tasks": tasks, "project": "7.123", "label_config": CLASSIFY_XML})
    res = r.json["results"]
    first = {x["from_name"]: x for x in res[0]["result"]}
    assert first["needs_review"]["value"]["choices"] == ["needs review"]
    assert "#101" in first["review_reason"]["value"]["text"][0]  # row 1 mapped back to LS task 101
    assert res[0]["score"] == first["sentiment"]["score"]  # with a review block the score is the confidence


def test_task_missing_field_gets_empty_result_not_missing_item(make_app):
    client = make_app(sync_max_tasks=50).test_client()
    tasks = [{"id": 1, "data": {"text": "good"}}, {"id": 2, "data": {"other": "x"}}, {"id": 3, "data": {"text": "bad"}}]
    r = client.post("/predict", json={"tasks": tasks, "project": 1, "label_config": CLASSIFY_XML})
    res = r.json["results"]
    assert len(res) == 3 and res[0]["result"] and res[2]["result"]
    # no "result" key: LS stores nothing for it (an empty result would stand as the answer), and says why
    assert "result" not in res[1] and "'text'" in res[1]["error"]


def test_large_batch_is_left_to_the_job_no_stand_in(make_app):
    app = make_app(sync_max_tasks=3)
    client = app.test_client()
    tasks = [{"id": i, "data": {"text": f"sentence {i}" + "!" * i}} for i in range(1, 11)]
    t0 = time.perf_counter()
    r = client.post("/predict", json={"tasks": tasks, "project": "3.99", "label_config": CLASSIFY_XML})
    assert time.perf_counter() - t0 < 2.0  # nothing labelled in the request: the job does it
    assert r.status_code == 200 and len(r.json["results"]) == 10
    # no stand-in prediction: an item per task without "result" (LS stores nothing), saying which job labels it
    assert all("result" not in x and x["model_version"] == "icm-smollm2-135m" and "job" in x["error"]
               for x in r.json["results"])
    backend = get_backend(app)
    assert backend.runner.wait_idle(20)
    jobs = client.get("/jobs").json["jobs"]
    assert jobs[0]["status"] == "done" and jobs[0]["done"] == 10 and jobs[0]["kind"] == "icm"
    assert "kept in the store" in jobs[0]["message"]  # no LS configured in this test
    # now everything is in the store: milliseconds, final version
    t0 = time.perf_counter()
    r2 = client.post("/predict", json={"tasks": tasks, "project": "3.99", "label_config": CLASSIFY_XML})
    assert time.perf_counter() - t0 < 0.5
    assert all(x["model_version"] == "icm-smollm2-135m" for x in r2.json["results"])


@pytest.mark.parametrize("body,field", [
    ({}, "tasks"),
    ({"tasks": "nope", "project": 1}, "tasks"),
    ({"tasks": [1, 2], "project": 1}, "tasks[0]"),
    ({"tasks": [{"id": "a", "data": {}}], "project": 1}, "tasks[0].id"),
    ({"tasks": [{"id": 1, "data": []}], "project": 1}, "tasks[0].data"),
    ({"tasks": [{"id": 1, "data": {}}]}, "project"),
    ({"tasks": [{"id": 1, "data": {}}], "project": "abc"}, "project"),
    ({"tasks": [{"id": 1, "data": {}}], "project": 1, "label_config": 5}, "label_config"),
])
def test_predict_bad_bodies_name_the_field(client, body, field):
    r = client.post("/predict", json=body)
    assert 400 <= r.status_code < 500
    assert r.json["error"].startswith(field), r.json
    assert "Traceback" not in r.get_data(as_text=True)


def test_predict_not_json(client):
    r = client.post("/predict", data="not json", content_type="text/plain")
    assert r.status_code == 400 and "body" in r.json["error"]


def test_predict_unknown_project_without_config(client):
    r = client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "a"}}], "project": "42.1"})
    assert r.status_code == 404 and "unknown project 42" in r.json["error"]


def test_predict_uses_config_from_setup(client, ls_fixtures_dir):
    setup = load(ls_fixtures_dir, "setup.json")["json"]
    client.post("/setup", json=setup)
    r = client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "a"}}], "project": setup["project"]})
    assert r.status_code == 200 and r.json["results"][0]["result"]


@pytest.mark.parametrize("xml,needle", [
    ("<View><Image name='img' value='$image'/><Choices name='c' toName='img'><Choice value='a'/>"
     "<Choice value='b'/></Choices></View>", "must point at a <Text>"),
    ("<View><Text name='t' value='$text'/></View>", "no <Choices> or <Pairwise>"),
    ("<View><Text name='t' value='$text'/", "not valid XML"),
    ("<View><Text name='t' value='$text'/><Choices name='c' toName='t'><Choice value='a'/></Choices></View>",
     "at least two"),
])
def test_unusable_label_config_is_a_clear_422(client, xml, needle):
    r = client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "a"}}], "project": 1, "label_config": xml})
    assert r.status_code == 422 and needle in r.json["error"] and r.json["error"].startswith("label_config")


def test_setup_bad_bodies(client):
    assert client.post("/setup", data="x", content_type="text/plain").status_code == 400
    r = client.post("/setup", json={"project": "zz"})
    assert r.status_code == 400 and r.json["error"].startswith("project")
    r = client.post("/setup", json={"project": "1.2", "schema": "<View/>"})
    assert r.status_code == 200 and "warning" in r.json  # connecting never fails on a config in progress


@pytest.mark.parametrize("name", ["webhook_ANNOTATION_CREATED.json", "webhook_PROJECT_UPDATED.json",
                                  "webhook_START_TRAINING.json"])
def test_webhook_fixtures_answer_fast(client, ls_fixtures_dir, name):
    body = load(ls_fixtures_dir, name)["json"]
    t0 = time.perf_counter()
    r = client.post("/webhook", json=body)
    assert time.perf_counter() - t0 < 1.0
    assert r.status_code == 200 and r.json["status"] == "ok"


def test_webhook_unknown_event_and_bad_body(client):
    r = client.post("/webhook", json={"action": "SOMETHING_ELSE", "project": {"id": 1}})
    assert r.status_code == 200 and r.json == {"status": "Unknown event"}
    r = client.post("/webhook", json={"project": 1})
    assert r.status_code == 400 and r.json["error"].startswith("action")


def test_on_event_registry_is_a_one_line_hookup(make_app, ls_fixtures_dir):
    app = make_app()
    registered = len(get_backend(app).events.handlers.get("START_TRAINING", []))
    assert registered == 1  # the fine-tune feature's, registered by create_app
    seen = []
    get_backend(app).events.on_event("START_TRAINING", lambda payload, backend: seen.append(payload["action"]))
    body = load(ls_fixtures_dir, "webhook_START_TRAINING.json")["json"]
    r = app.test_client().post("/webhook", json=body)
    assert r.json["handlers"] == 2
    for _ in range(100):
        if seen:
            break
        time.sleep(0.02)
    assert seen == ["START_TRAINING"]


def test_versions_follow_model_dir(make_app, tmp_path):
    app = make_app()
    client = app.test_client()
    assert client.get("/versions").json == {"versions": ["icm-smollm2-135m"], "current": "icm-smollm2-135m",
                                            "pinned": None, "details": [], "labelling": {}, "accept": {}}
    vdir = tmp_path / "model" / "versions"
    (vdir / "ft0001-20261127T000000").mkdir(parents=True)
    (vdir / "ft0001-20261127T000000" / "adapter_config.json").write_text("{}")
    (vdir / "CURRENT").write_text("ft0001-20261127T000000\n")
    assert client.post("/setup", json={}).json["model_version"] == "ft0001-20261127T000000"
    assert client.get("/versions").json["versions"] == ["icm-smollm2-135m", "ft0001-20261127T000000"]
    # Rollback: a pin in the ML backend's extra params wins over CURRENT; "base" is the base model.
    assert client.post("/setup", json={"extra_params": {"model_version": "base"}}).json["model_version"] == \
        "icm-smollm2-135m"
    bad = client.post("/setup", json={"extra_params": {"model_version": "ft-nope"}})
    assert bad.status_code == 422 and "ft-nope" in bad.json["error"] and str(tmp_path) not in bad.json["error"]
    assert client.post("/setup", json={"extra_params": {}}).json["model_version"] == "ft0001-20261127T000000"


def test_metrics_text(client):
    client.get("/health")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'icm_http_requests_total{code="200",route="/health"}' in text
    assert "icm_stored_predictions 0" in text


def test_jobs_endpoints_and_cancel(make_app):
    app = make_app(start_worker=False)  # keep the job queued so cancel hits it before it starts
    backend = get_backend(app)
    client = app.test_client()
    job = backend.jobs.create_job("icm", 5, "v", {})
    assert client.get(f"/jobs/{job.id}").json["status"] == "queued"
    r = client.post(f"/jobs/{job.id}/cancel")
    assert r.status_code == 200 and r.json["job"]["status"] == "cancelled"
    assert client.get("/jobs/999").status_code == 404
    assert client.get("/jobs?project=x").json["error"].startswith("project")
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json


def _basic(user, pw):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def test_basic_auth_and_webhook_secret(make_app):
    app = make_app(basic_auth_user="ls", basic_auth_pass="pw", webhook_secret="s3cret")
    client = app.test_client()
    assert client.get("/health").status_code == 200  # liveness stays open for healthchecks
    assert client.post("/setup", json={}).status_code == 401
    assert client.post("/setup", json={}, headers=_basic("ls", "bad")).status_code == 401
    assert client.post("/setup", json={}, headers=_basic("ls", "pw")).status_code == 200
    ev = {"action": "ANNOTATION_CREATED", "project": {"id": 1}}
    assert client.post("/webhook", json=ev).status_code == 401
    assert client.post("/webhook/wrong", json=ev).status_code == 401
    assert client.post("/webhook/s3cret", json=ev).status_code == 200
    assert client.post("/webhook?secret=s3cret", json=ev).status_code == 200
    assert client.post("/webhook", json=ev, headers=_basic("ls", "pw")).status_code == 200


def test_config_from_env_names():
    cfg = ServerConfig.from_env({"LABEL_STUDIO_HOST": "http://ls:8080", "LABEL_STUDIO_API_KEY": "k",
                                 "MODEL_DIR": "/data", "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"})
    assert cfg.label_studio_url == "http://ls:8080" and str(cfg.model_dir) == "/data"
    assert cfg.auth_enabled and cfg.webhook_secret is None  # random, made by create_app under MODEL_DIR
    from icm_backend.errors import InputError

    with pytest.raises(InputError, match="ICM_SYNC_MAX_TASKS"):
        ServerConfig.from_env({"ICM_SYNC_MAX_TASKS": "many"})


def test_cancel_a_running_job(make_app, monkeypatch):
    monkeypatch.setenv("FAKE_LABELER_DELAY", "0.05")
    app = make_app(sync_max_tasks=1)
    backend = get_backend(app)
    client = app.test_client()
    tasks = [{"id": i, "data": {"text": f"t{i}"}} for i in range(1, 201)]
    r = client.post("/predict", json={"tasks": tasks, "project": 4, "label_config": CLASSIFY_XML})
    # an item per task, without "result" (LS stores nothing and asks again later)
    assert all("result" not in x and "not labelled yet" in x["error"] for x in r.json["results"])
    job_id = client.get("/jobs").json["jobs"][0]["id"]
    for _ in range(200):
        if client.get(f"/jobs/{job_id}").json["status"] == "running":
            break
        time.sleep(0.02)
    assert client.post(f"/jobs/{job_id}/cancel").json["status"] == "cancel requested"
    assert backend.runner.wait_idle(20)
    assert client.get(f"/jobs/{job_id}").json["status"] == "cancelled"
