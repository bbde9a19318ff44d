"""Issue 12: property-based fuzz of every route (hypothesis). 5,000+ generated requests in all: no 5xx, every
error a JSON object naming the problem, one result per task on a 200 /predict, and the server still
labels a valid /predict afterwards. In-process (Flask test client) over the fake engine, with the job
worker running.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_labeler import fake_label_rows
from icm_backend.server.app import create_app, get_backend
from icm_backend.server.config import ServerConfig
from icm_backend.server.events import KNOWN_EVENTS, EventRegistry
from icm_backend.server.model_host import ModelHost

XML = """<View><Text name="text" value="$text"/>
<Choices name="sentiment" toName="text"><Choice value="Positive"/><Choice value="Negative"/></Choices></View>"""
CLAIMS = """<View><Header value="$question"/><Text name="choice" value="$choice"/>
<Choices name="verdict" toName="choice"><Choice value="True"/><Choice value="False"/></Choices></View>"""
PAIRWISE = """<View><Header value="$question"/><Text name="a" value="$choice"/><Text name="b" value="$choice_2"/>
<Pairwise name="pw" toName="a,b"/></View>"""
COUNT = {"requests": 0}
FUZZ = settings(deadline=None, database=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**62, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
texts = st.text(max_size=40) | st.sampled_from(["a\ud800b", "\x00\n\r", "x" * 20_000, "<View/>", "💥" * 50])
ids = st.integers(min_value=-3, max_value=40) | st.integers(min_value=2**63 - 2, max_value=2**64) | json_values
projects = (st.integers(min_value=-2, max_value=5) | st.integers(min_value=2**63 - 1, max_value=2**65)
            | st.from_regex(r"\A[0-9]{1,25}(\.[0-9]{0,12})?\Z") | texts | json_values)
task_data = st.dictionaries(st.sampled_from(["text", "choice", "choice_2", "question", "consistency_id",
                                             "group_id", "answer", "other"]), texts | json_values, max_size=5)
tasks = st.fixed_dictionaries({"id": ids}, optional={"data": task_data | json_values,
                                                      "annotations": json_values, "predictions": json_values})
configs = st.sampled_from([XML, CLAIMS, PAIRWISE, "", "<View>", "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]>"
                           "<View>&a;</View>"]) | texts | json_values

predict_bodies = st.fixed_dictionaries({}, optional={
    "tasks": st.lists(tasks, max_size=20) | json_values, "project": projects, "label_config": configs,
    "params": json_values, "model_version": json_values})
setup_bodies = st.fixed_dictionaries({}, optional={
    "project": projects, "schema": configs,
    "hostname": st.sampled_from(["http://127.0.0.1:9", "https://ls.example:8443/", "file:///etc/passwd",
                                 "http://[::1", "javascript:alert(1)", ""]) | texts | json_values,
    "access_token": texts | json_values,
    "extra_params": st.none() | json_values | st.fixed_dictionaries({}, optional={
        "model_version": st.sampled_from(["base", "icm-smollm2-135m", "/etc", "..", "ft0001-x", ""]) | json_values})})
webhook_bodies = st.fixed_dictionaries({}, optional={
    "action": st.sampled_from(sorted(KNOWN_EVENTS)) | texts | json_values, "project": projects,
    "annotation": json_values, "task": json_values})
posts = st.sampled_from(["/setup", "/predict", "/webhook", "/webhook/x", "/jobs/1/cancel", "/health", "/nope"])
gets = st.sampled_from(["/", "/health", "/versions", "/metrics", "/jobs", "/jobs/1", f"/jobs/{2**64}", "/nope",
                        "/predict", "/webhook"])


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    cfg = ServerConfig(model_dir=tmp_path_factory.mktemp("fuzz") / "model", model_name="smollm2-135m",
                       sync_max_tasks=8)
    app = create_app(cfg, host=ModelHost(cfg, labeler=fake_label_rows, loader=lambda name: name),
                     events=EventRegistry())
    app.testing = True
    yield app
    get_backend(app).runner.stop()


def check(r, body=None):
    COUNT["requests"] += 1
    assert r.status_code < 500, (r.status_code, r.get_data(as_text=True)[:500], body)
    if r.status_code >= 400 and r.status_code != 405:
        assert isinstance(r.json, dict) and isinstance(r.json.get("error"), str), r.get_data(as_text=True)[:300]
        assert "Traceback" not in r.json["error"]
    return r


def post_json(client, path, body):
    raw = json.dumps(body, allow_nan=True)
    return check(client.post(path, data=raw, content_type="application/json"), body)


@settings(FUZZ, max_examples=2000)
@given(body=predict_bodies)
def test_fuzz_predict(app, body):
    r = post_json(app.test_client(), "/predict", body)
    if r.status_code == 200:
        assert len(r.json["results"]) == len(body["tasks"])


@settings(FUZZ, max_examples=1200)
@given(body=setup_bodies)
def test_fuzz_setup(app, body):
    post_json(app.test_client(), "/setup", body)


@settings(FUZZ, max_examples=900)
@given(body=webhook_bodies, secret=st.booleans())
def test_fuzz_webhook(app, body, secret):
    post_json(app.test_client(), "/webhook/s" if secret else "/webhook", body)


@settings(FUZZ, max_examples=600)
@given(path=posts, raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
       ctype=st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1", ""]))
def test_fuzz_raw_bodies(app, path, raw, ctype):
    check(app.test_client().post(path, data=raw, content_type=ctype or None))


@settings(FUZZ, max_examples=400)
@given(path=gets, query=st.dictionaries(st.sampled_from(["project", "status", "secret", "x"]),
                                        st.text(max_size=30) | st.from_regex(r"\A[0-9]{1,30}\Z"), max_size=3))
def test_fuzz_get_routes(app, path, query):
    check(app.test_client().get(path, query_string=query))


@settings(FUZZ, max_examples=300)
@given(header=st.text(alphabet=st.characters(max_codepoint=255, blacklist_characters="\r\n\x00"), max_size=60)
       | st.tuples(st.text(max_size=12), st.text(max_size=12)).map(
           lambda up: "Basic " + base64.b64encode(f"{up[0]}:{up[1]}".encode("utf-8", "surrogatepass")).decode()),
       path=posts | gets)
def test_fuzz_credentials(tmp_path_factory, header, path):
    app = _auth_app(tmp_path_factory)
    client = app.test_client()
    method = client.get if path in ("/", "/health", "/versions", "/metrics", "/jobs", "/jobs/1") else client.post
    r = check(method(path, headers={"Authorization": header}, json={}))
    if path not in ("/", "/health", "/nope") and not path.startswith("/webhook") and r.status_code != 405:
        assert r.status_code == 401  # no generated header is the right pair


_AUTH = {}


def _auth_app(tmp_path_factory):
    if "app" not in _AUTH:
        cfg = ServerConfig(model_dir=tmp_path_factory.mktemp("fuzz-auth") / "model", model_name="smollm2-135m",
                           basic_auth_user="lś", basic_auth_pass="pässwörd-密码")
        _AUTH["app"] = create_app(cfg, host=ModelHost(cfg, labeler=fake_label_rows, loader=lambda n: n),
                                  events=EventRegistry(), start_worker=False)
    return _AUTH["app"]


def test_zz_still_serving_after_the_fuzz(app):
    """Runs last in this file: the server took 5,000+ generated requests and still labels a valid batch."""
    assert COUNT["requests"] >= 5000, COUNT
    client = app.test_client()
    batch = [{"id": 10_000 + i, "data": {"text": f"a perfectly normal sentence {i}"}} for i in range(3)]
    r = client.post("/predict", json={"tasks": batch, "project": 999, "label_config": XML})
    assert r.status_code == 200 and all(x["result"] for x in r.json["results"]), r.json
    assert client.get("/health").json["status"] == "UP"
