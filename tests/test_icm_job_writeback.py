"""The whole-project job's write-back, chunk by chunk, against an in-memory Label Studio stand-in
(fast unit tests; the real path is tests/test_server_e2e.py and tests/test_label_studio_browser.py).

- bulk import, <= 500 per request; exactly one prediction per task even when a request dies after LS
  stored the batch (the reply lost) or before it did, and across a restart with a batch in flight;
- the project's model_version is set once predictions of the version exist (LS refuses it before);
- /predict never hands LS a prediction a bulk import is sending;
- each chunk the engine hands over is written to LS before the next one is labelled.
"""

from __future__ import annotations

import pytest

from fake_labeler import fake_label_rows
from icm_backend.server.app import get_backend
from test_server_protocol import CLASSIFY_XML

VERSION = "icm-smollm2-135m"


class FakeLS:
    """What the job calls on LSClient, over dicts; `fail` scripts import failures."""
    IMPORT_BATCH = 500

    def __init__(self, task_ids):
        self.tasks = {t: {"id": t, "data": {"text": f"sentence {t}" + "!" * (t % 7)}} for t in task_ids}
        self.preds: list[dict] = []
        self.model_version = ""
        self.fail: list[str] = []  # per import call: "after" (stored, reply lost), "before" (nothing stored)
        self.imports: list[int] = []
        self.patch_refused = 0
        self.listings = 0  # reads of the project's task list
        self.listings_at_first_import: int | None = None

    def tasks_with_labels(self, project):
        self.listings += 1
        return [{**t, "annotations": [], "predictions": []} for t in self.tasks.values()]

    def existing_prediction_tasks(self, project, version):
        return {p["task"] for p in self.preds if p["model_version"] == version}

    def predictions_of(self, project, version=None):
        return [p for p in self.preds if version is None or p["model_version"] == version]

    def import_predictions(self, project, items):
        assert 0 < len(items) <= self.IMPORT_BATCH
        if self.listings_at_first_import is None:
            self.listings_at_first_import = self.listings
        mode = self.fail.pop(0) if self.fail else ""
        if mode == "before":
            raise ConnectionError("LS unreachable")
        self.preds += [{"task": t, **v} for t, v in items.items()]
        self.imports.append(len(items))
        if mode == "after":
            raise TimeoutError("reply lost")
        return len(items)

    def project(self, project):
        return {"id": project, "model_version": self.model_version}

    def set_project_model_version(self, project, version):
        if not self.existing_prediction_tasks(project, version):  # what LS 1.23.2's serializer does
            self.patch_refused += 1
            raise RuntimeError("400 Model version doesn't exist either as live model or as static predictions")
        self.model_version = version


@pytest.fixture
def make(in_process_app, monkeypatch):
    monkeypatch.setattr("icm_backend.server.icm_job._backoff", lambda attempt: None)  # retry back-off

    def make(ls: FakeLS, labeler=fake_label_rows, **cfg):
        app = in_process_app(labeler, start_worker=False, **cfg)
        backend = get_backend(app)
        monkeypatch.setattr(backend.icm, "ls_for", lambda project: ls)
        return app, backend
    return make


def run_job(backend, project=1, **params):
    job = backend.runner.submit("icm", project, VERSION, {"label_config": CLASSIFY_XML, **params})
    assert backend.runner.wait_idle(60)
    return backend.jobs.get_job(job.id)


def one_each(ls: FakeLS):
    counts = {}
    for p in ls.preds:
        counts[p["task"]] = counts.get(p["task"], 0) + 1
    return sorted(counts) == sorted(ls.tasks) and set(counts.values()) == {1}


def test_bulk_write_back_one_prediction_per_task_and_version_set(make):
    ls = FakeLS(range(1, 1201))
    app, backend = make(ls, chunk_size=600)
    job = run_job(backend)
    assert job.status == "done", job.error
    assert ls.imports == [500, 100, 500, 100]  # bulk, never over LS's atomic batch
    assert one_each(ls) and all(p["result"] and 0.5 <= p["score"] <= 1 for p in ls.preds)
    assert ls.model_version == VERSION and ls.patch_refused == 0  # set after the predictions existed
    assert job.state["model_version_set"] is True


@pytest.mark.parametrize("fail", [["after"], ["before"], ["after", "before"]])
def test_import_that_dies_mid_request_sends_nothing_twice(make, fail):
    ls = FakeLS(range(1, 41))
    ls.fail = list(fail)
    app, backend = make(ls, chunk_size=20)
    job = run_job(backend)
    assert job.status == "done", job.error
    assert one_each(ls)


def test_import_that_keeps_failing_fails_the_job_with_the_reason(make):
    ls = FakeLS(range(1, 11))
    ls.fail = ["before"] * 10
    app, backend = make(ls)
    job = run_job(backend)
    assert job.status == "failed" and "writing predictions to Label Studio failed" in job.error
    assert ls.preds == [] and ls.model_version == ""  # nothing that looks like success
    ls.fail = []
    job2 = run_job(backend)  # the next Retrieve starts another job: it writes everything, once
    assert job2.status == "done" and one_each(ls)


def test_restart_with_a_batch_in_flight_asks_ls(make):
    ls = FakeLS(range(1, 31))
    app, backend = make(ls, chunk_size=30)
    store = backend.predictions
    # a crashed run: labelled and claimed 30, LS stored them, the process died before settling
    items = {t: {"result": [{"x": 1}], "score": 0.9, "model_version": VERSION} for t in ls.tasks}
    store.put_predictions(1, VERSION, items)
    claimed = store.claim_for_import(1, VERSION, 500)
    ls.import_predictions(1, claimed)
    assert store.in_flight(1, VERSION)
    job = run_job(backend)
    assert job.status == "done" and one_each(ls) and not store.in_flight(1, VERSION)


def test_predict_never_carries_what_an_import_is_sending(make):
    ls = FakeLS(range(1, 5))
    app, backend = make(ls)
    items = {t: {"result": [{"x": 1}], "score": 0.9, "model_version": VERSION} for t in (1, 2, 3)}
    backend.predictions.put_predictions(1, VERSION, items)
    backend.predictions.claim_for_import(1, VERSION, 1)  # task 1 is on its way to LS
    got = backend.predictions.take_for_reply(1, VERSION, [1, 2, 3])
    assert sorted(got) == [2, 3]
    assert backend.predictions.claim_for_import(1, VERSION, 500) == {}  # 2, 3 went with the reply


def test_each_chunk_is_in_label_studio_before_the_next_is_labelled(make):
    seen = []

    def spy(rows, **kw):
        hand = kw["on_chunk"]
        kw["on_chunk"] = lambda preds: (hand(preds), seen.append((len(preds), len(ls.preds))))
        return fake_label_rows(rows, **kw)

    ls = FakeLS(range(1, 61))
    app, backend = make(ls, labeler=spy, chunk_size=20)
    job = run_job(backend)
    assert job.status == "done" and one_each(ls)
    assert seen == [(20, 20), (20, 40), (20, 60)]  # written as each finished, not at the end
    assert job.state["written"] == 60

def test_small_batch_labelled_in_the_request_points_the_score_column_at_it(make):
    import time

    ls = FakeLS(range(1, 4))
    app, backend = make(ls, sync_max_tasks=10)
    tasks = list(ls.tasks.values())
    r = app.test_client().post("/predict", json={"tasks": tasks, "project": 1, "label_config": CLASSIFY_XML})
    items = r.json["results"]
    assert all(x["result"] for x in items) and not backend.jobs.list_jobs()  # no job for a small batch
    assert ls.model_version == ""  # LS has not stored the reply yet: nothing to point at
    ls.preds += [{"task": t["id"], **x} for t, x in zip(tasks, items)]  # what LS does with the reply
    deadline = time.monotonic() + 10
    while ls.model_version != VERSION and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ls.model_version == VERSION
