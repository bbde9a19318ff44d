"""Which events train, and one training job per project (coalesced, not stacked)."""

from __future__ import annotations

import threading

from icm_backend.finetune.trigger import TRAIN_KIND, TrainingTrigger, project_of, should_train
from icm_backend.jobs.db import Database
from icm_backend.jobs.queue import JobStore


class FakeRunner:
    def __init__(self, store):
        self.store = store

    def submit(self, kind, project, model_version, params):
        return self.store.create_job(kind, project, model_version, params)


def test_which_events_train():
    assert should_train("START_TRAINING", env={})
    assert not should_train("ANNOTATION_CREATED", env={})
    assert should_train("ANNOTATION_CREATED", env={"ICM_AUTO_TRAIN": "1"})
    assert not should_train("PROJECT_UPDATED", env={"ICM_AUTO_TRAIN": "1"})


def test_project_id_from_payloads(ls_fixtures_dir):
    import json

    body = json.loads((ls_fixtures_dir / "webhook_START_TRAINING.json").read_text())["json"]
    pid, config = project_of(body)
    assert pid == 1 and "<Choices" in config
    assert project_of({"annotation": {"project": 4}}) == (4, None)


def test_second_trigger_coalesces_into_queued_or_running_job(tmp_path):
    store = JobStore(Database(tmp_path / "db.sqlite3"))
    trig = TrainingTrigger(store, FakeRunner(store))
    first = trig.trigger(1, {})
    assert first.status == "queued"
    assert trig.trigger(1, {}).job_id == first.job_id  # queued: same job
    assert trig.trigger(2, {}).status == "queued"  # another project trains on its own
    store.update_job(first.job_id, status="running")
    again = trig.trigger(1, {})
    assert (again.status, again.job_id) == ("coalesced", first.job_id)
    assert trig.trigger(1, {}).job_id == first.job_id
    assert len([j for j in store.list_jobs(project=1) if j.kind == TRAIN_KIND]) == 1
    store.update_job(first.job_id, status="done")
    follow = trig.finished(1, {})  # triggers arrived during the run: exactly one follow-up
    assert follow.status == "queued" and follow.job_id != first.job_id
    assert trig.finished(1, {}) is None
    assert len(store.list_jobs(project=1)) == 2


def test_concurrent_triggers_make_one_job(tmp_path):
    store = JobStore(Database(tmp_path / "db.sqlite3"))
    trig = TrainingTrigger(store, FakeRunner(store))
    results = []
    threads = [threading.Thread(target=lambda: results.append(trig.trigger(7, {}))) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len({r.job_id for r in results}) == 1 and len(store.list_jobs(project=7)) == 1
