"""The "train" job inside the real server app (Flask test client, real job runner, real trainer
subprocess on a tiny local model); Label Studio's task list is faked here (the E2E test uses a real one)."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from finetune_tiny import make_tiny_model
from icm_backend.errors import InputError
from icm_backend.finetune import job as job_mod
from icm_backend.finetune.job import TrainSettings
from icm_backend.versions import current_name, list_versions
from icm_backend.server.app import get_backend


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture
def start_training(ls_fixtures_dir):
    return json.loads((ls_fixtures_dir / "webhook_START_TRAINING.json").read_text())["json"]


def ann(aid, choice, **kw):
    return {"id": aid, "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                   "value": {"choices": [choice]}}] if choice else [], "was_cancelled": False, **kw}


def good_tasks(n=12):
    return [{"id": i, "data": {"text": f"claim number {i} is {'right' if i % 2 else 'wrong'}"},
             "annotations": [ann(100 + i, "True" if i % 2 else "False")], "predictions": []} for i in range(n)]


@pytest.fixture
def app_for(in_process_app, tiny, monkeypatch):
    def make(tasks, **config):
        monkeypatch.setattr(job_mod, "fetch_tasks", lambda url, key, project: tasks)
        return in_process_app(lambda *a, **k: [], model_name=str(tiny), label_studio_url="http://ls.invalid",
                              label_studio_api_key="x", **config)
    return make


def wait_job(backend, pred, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [j for j in backend.jobs.list_jobs() if j.kind == "train"]
        if jobs and pred(jobs[0]):
            return jobs[0]
        time.sleep(0.2)
    raise AssertionError(f"train job never reached the state: {[j.to_json() for j in backend.jobs.list_jobs()]}")


def test_start_training_makes_a_new_version_served_only_if_the_gate_passes(app_for, start_training, monkeypatch):
    monkeypatch.setenv("ICM_TRAIN_MAX_STEPS", "4")
    app = app_for(good_tasks(20))  # 4 held out: the promotion gate can test the new version
    client, backend = app.test_client(), get_backend(app)
    before = client.post("/setup", json={}).json["model_version"]
    t0 = time.perf_counter()
    assert client.post("/webhook", json=start_training).status_code == 200
    assert time.perf_counter() - t0 < 1.0  # answers at once; training runs in the job
    job = wait_job(backend, lambda j: j.status in ("done", "failed"))
    assert job.status == "done", job.error
    assert "trained version ft0001-" in job.message and job.done == 4
    v = list_versions(backend.config.model_dir)[0]
    gate = v.metrics["gate"]  # gate.json, next to the version
    assert gate["method"] == "icm" and gate["n"] == 4 and gate["serving_version"] == before
    assert {"accuracy", "p_true"} <= set(gate["new"]) and {"accuracy", "p_true"} <= set(gate["serving"])
    t = gate["test"]  # the sign test on the held-out rows only one version gets right
    promoted = t["b"] > t["c"] and t["p"] <= t["alpha"]
    assert gate["promoted"] == promoted
    after = client.post("/setup", json={}).json["model_version"]
    listed = client.get("/versions").json
    assert v.name in listed["versions"] and listed["details"][0]["gate"]["reason"] == gate["reason"]
    if promoted:
        assert after == v.name and "now serving it" in job.message
    else:
        assert after == before and "NOT serving it" in job.message and "kept, not served" in job.message
    ids = json.loads((v.path / "training_set.json").read_text())
    assert len(ids["human"]) == 20 and v.metrics["project"] == 1
    assert v.metrics["config"]["context"] == "in-context"  # ICM serves: rows are trained after contexts


def test_a_zero_shot_backend_trains_single_examples(app_for, start_training, monkeypatch):
    monkeypatch.setenv("ICM_TRAIN_MAX_STEPS", "1")
    app = app_for(good_tasks(12), method="zero-shot")
    backend = get_backend(app)
    app.test_client().post("/webhook", json=start_training)
    job = wait_job(backend, lambda j: j.status in ("done", "failed"))
    assert job.status == "done", job.error
    v = list_versions(backend.config.model_dir)[0]
    assert v.metrics["config"]["context"] == "none" and v.metrics["gate"]["method"] == "zero-shot"


def test_too_few_labels_to_test_a_version_keep_the_serving_one(app_for, start_training, monkeypatch):
    monkeypatch.setenv("ICM_TRAIN_MAX_STEPS", "2")
    app = app_for(good_tasks(12))  # 20% of 12 is 2 rows: no held-out slice, nothing to gate on
    client, backend = app.test_client(), get_backend(app)
    before = client.post("/setup", json={}).json["model_version"]
    client.post("/webhook", json=start_training)
    job = wait_job(backend, lambda j: j.status in ("done", "failed"))
    assert job.status == "done", job.error
    assert "NOT serving it" in job.message and "no held-out slice" in job.message
    assert client.post("/setup", json={}).json["model_version"] == before
    assert current_name(backend.config.model_dir) is None


def test_holdout_fraction_and_gate_level_from_the_environment(app_for, start_training, monkeypatch):
    monkeypatch.setenv("ICM_TRAIN_MAX_STEPS", "2")
    monkeypatch.setenv("ICM_TRAIN_HOLDOUT_FRACTION", "0.5")  # 12 labels: 6 held out, so the gate can test
    monkeypatch.setenv("ICM_GATE_ALPHA", "0.35")
    app = app_for(good_tasks(12))
    backend = get_backend(app)
    app.test_client().post("/webhook", json=start_training)
    job = wait_job(backend, lambda j: j.status in ("done", "failed"))
    assert job.status == "done", job.error
    assert "no held-out slice" not in job.message and "on 6 held-out accepted labels" in job.message
    assert re.search(r"sign test p = [0-9.]+, (<=|>) 0\.35\)", job.message), job.message  # the level it ran at


def test_bad_holdout_fraction_fails_the_job_naming_the_variable(app_for, start_training, monkeypatch):
    monkeypatch.setenv("ICM_TRAIN_HOLDOUT_FRACTION", "1.5")
    app = app_for(good_tasks(12))
    app.test_client().post("/webhook", json=start_training)
    job = wait_job(get_backend(app), lambda j: j.status in ("done", "failed"), timeout=60)
    assert job.status == "failed" and "ICM_TRAIN_HOLDOUT_FRACTION=1.5" in job.error, job.error
    assert list_versions(get_backend(app).config.model_dir) == []


@pytest.mark.parametrize("name,value", [("ICM_TRAIN_MAX_STEPS", "0"), ("ICM_TRAIN_BATCH_SIZE", "-2"),
                                        ("ICM_TRAIN_LR", "0"), ("ICM_TRAIN_LR", "nan"),
                                        ("ICM_TRAIN_MIN_CONFIDENCE", "1.2"), ("ICM_TRAIN_HOLDOUT_FRACTION", "-0.1"),
                                        ("ICM_GATE_ALPHA", "0"), ("ICM_GATE_ALPHA", "1")])
def test_training_settings_out_of_range_name_the_variable(name, value):
    with pytest.raises(InputError, match=f"{name}={value}"):
        TrainSettings.from_env({name: value})


def test_training_settings_defaults_pass():
    assert TrainSettings.from_env({}) == TrainSettings()


@pytest.mark.parametrize("tasks,message", [
    ([{"id": 1, "data": {"text": "a"}, "annotations": [], "predictions": []}], "has no annotations to train on"),
    ([{"id": 1, "data": {"text": "a"}, "annotations": [ann(5, "Maybe")]}], "unknown choice: 'Maybe' is not in"),
    ([{"id": 1, "data": {"text": "a"}, "annotations": [{**ann(5, "True"), "was_cancelled": True}]}],
     "cancelled: the annotator skipped the task"),
    ([{"id": 1, "data": {"text": "a"}, "annotations": [ann(5, None)]}], "empty result"),
    ([{"id": i, "data": {"text": "a"}, "annotations": [ann(i, "True")]} for i in range(3)],
     "fine-tuning needs examples of at least two labels"),
])
def test_bad_projects_fail_the_job_with_a_clear_message(app_for, start_training, tasks, message):
    app = app_for(tasks)
    app.test_client().post("/webhook", json=start_training)
    job = wait_job(get_backend(app), lambda j: j.status in ("done", "failed"), timeout=60)
    assert job.status == "failed" and message in job.error, job.error
    assert list_versions(get_backend(app).config.model_dir) == []


def test_killed_trainer_fails_the_job_and_keeps_the_serving_version(app_for, start_training, monkeypatch):
    monkeypatch.setenv("ICM_TRAIN_MAX_STEPS", "4")
    app = app_for(good_tasks())
    client, backend = app.test_client(), get_backend(app)
    client.post("/webhook", json=start_training)
    assert wait_job(backend, lambda j: j.status in ("done", "failed")).status == "done"
    serving = client.post("/setup", json={}).json["model_version"]
    versions_before = [v.name for v in list_versions(backend.config.model_dir)]
    current_before = current_name(backend.config.model_dir)

    monkeypatch.setenv("ICM_TRAIN_MAX_STEPS", "100000")
    client.post("/webhook", json=start_training)
    running = wait_job(backend, lambda j: j.status == "running" and j.message.startswith("step "))
    os.kill(running.state["pid"], signal.SIGKILL)  # the training worker dies mid-training
    job = wait_job(backend, lambda j: j.id == running.id and j.status in ("done", "failed"), timeout=60)
    assert job.status == "failed" and "killed by SIGKILL" in job.error and "serving version is unchanged" in job.error
    assert client.post("/setup", json={}).json["model_version"] == serving
    assert [v.name for v in list_versions(backend.config.model_dir)] == versions_before
    assert current_name(backend.config.model_dir) == current_before


def test_job_interrupted_by_a_restart_is_failed_not_rerun(app_for, tmp_path):
    app = app_for(good_tasks())
    backend = get_backend(app)
    job = backend.jobs.create_job("train", 1, None, {})
    backend.jobs.update_job(job.id, status="running", state={"last_progress": "step 3/48"})
    backend.runner.stop()
    backend.runner._thread = None
    backend.runner.ensure_started()  # what a restarted server does: requeue 'running' jobs
    done = wait_job(backend, lambda j: j.status in ("done", "failed"), timeout=30)
    assert done.status == "failed" and "interrupted" in done.error and "step 3/48" in done.error
