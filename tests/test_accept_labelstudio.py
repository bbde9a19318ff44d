"""Accept with a stated error in Label Studio, against an in-memory stand-in (fast; the real path is
tests/test_accept_e2e.py):

- annotations: one made from a prediction (parent_prediction) and left unchanged is not a human label;
  one a person changed is;
- the ICM job's last step writes the marks and the three Data Manager tabs (LS 1.23.2's view shapes), titles
  with counts and figures; /jobs and /versions carry the figures;
- people label the audit (some wrong): an annotation webhook queues an "accept" job that scores the audit,
  re-chooses the set and updates marks and tabs, keeping the user's own tab settings;
- LS's "Create Annotations From Predictions" on the accept tab makes annotations that neither audit nor
  become human labels.
"""

from __future__ import annotations

import copy

import pytest

from test_icm_job_writeback import VERSION, FakeLS, make, run_job  # noqa: F401  (make is a fixture)
from icm_backend.labelstudio.annotations import human_labels, resolve_task_annotations
from icm_backend.labelstudio.config import parse_label_config
from icm_backend.labelstudio.tabs import ACCEPT, AUDIT, MARK_FIELD, REVIEW, TITLES
from test_server_protocol import CLASSIFY_XML

SPEC = parse_label_config(CLASSIFY_XML)


def choice(word):
    return [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [word]}}]


# -- the annotations rule ------------------------------------------------------------------------------
def test_an_annotation_made_from_a_prediction_is_human_only_once_a_person_changed_its_label():
    pred = {"id": 70, "model_version": VERSION, "score": 0.9, "result": choice("Positive") + [
        {"from_name": "review_reason", "to_name": "text", "type": "textarea", "value": {"text": ["why"]}}]}
    same = {"id": 1, "result": choice("Positive"), "parent_prediction": 70}
    changed = {"id": 2, "result": choice("Negative"), "parent_prediction": 70}
    person = {"id": 3, "result": choice("Positive")}
    orphan = {"id": 4, "result": choice("Negative"), "parent_prediction": 99}  # its prediction is gone
    tasks = [{"id": 1, "annotations": [same], "predictions": [pred]},
             {"id": 2, "annotations": [changed], "predictions": [pred]},
             {"id": 3, "annotations": [person], "predictions": [pred]},
             {"id": 4, "annotations": [orphan], "predictions": [pred]}]
    assert human_labels(tasks, SPEC) == {2: "Negative", 3: "Positive"}
    got, skipped, _ = resolve_task_annotations(1, [same], SPEC, [pred])
    assert got is None and "made from prediction #70 and its label unchanged" in skipped[0]["reason"]
    # a person's annotation next to an accepted prediction decides alone
    got, _, _ = resolve_task_annotations(5, [same, {"id": 6, "result": choice("Negative")}], SPEC, [pred])
    assert got.label == "Negative" and got.annotation_ids == [6]


def test_training_reads_the_same_rule():
    from icm_backend.finetune.data import training_set_from_ls_tasks

    pred = {"id": 70, "model_version": VERSION, "score": 0.9, "result": choice("Positive")}
    tasks = [{"id": 1, "data": {"text": "a"}, "annotations": [{"id": 1, "result": choice("Positive"),
                                                                "parent_prediction": 70}], "predictions": [pred]},
             {"id": 2, "data": {"text": "b"}, "annotations": [{"id": 2, "result": choice("Negative"),
                                                                "parent_prediction": 70}], "predictions": [pred]}]
    ts = training_set_from_ls_tasks(tasks, SPEC)
    assert [(r.task_id, r.label, r.source) for r in ts.rows] == [(2, "Negative", "human")]


# -- a Label Studio stand-in with views, task data and annotations ---------------------------------------
FILTER_KEYS = {"filter", "operator", "type", "value"}


class TabsLS(FakeLS):
    def __init__(self, task_ids):
        super().__init__(task_ids)
        self.annotations: dict[int, list[dict]] = {}
        self.views_: dict[int, dict] = {}
        self.data_writes = 0

    def import_predictions(self, project, items):
        n = super().import_predictions(project, items)
        for i, p in enumerate(self.preds):
            p.setdefault("id", 1000 + i)
        return n

    def tasks_with_labels(self, project):
        return [{"id": t["id"], "data": copy.deepcopy(t["data"]), "meta": {},
                 "annotations": copy.deepcopy(self.annotations.get(t["id"], [])),
                 "predictions": [copy.deepcopy(p) for p in self.preds if p["task"] == t["id"]]}
                for t in self.tasks.values()]

    def update_task_data(self, task_id, data):
        assert isinstance(data, dict) and "text" in data  # LS replaces data whole: the text must come along
        self.tasks[task_id]["data"] = copy.deepcopy(data)
        self.data_writes += 1

    def _check(self, data):
        assert isinstance(data["title"], str) and data["title"]
        assert data["filters"]["conjunction"] in ("and", "or")
        for item in data["filters"]["items"]:
            assert set(item) == FILTER_KEYS and item["filter"].startswith("filter:tasks:")
        assert all(o.lstrip("-").startswith("tasks:") for o in data["ordering"])

    def views(self, project):
        return [copy.deepcopy(v) for v in self.views_.values() if v["project"] == project]

    def create_view(self, project, data):
        self._check(data)
        vid = len(self.views_) + 1
        self.views_[vid] = {"id": vid, "project": project, "data": copy.deepcopy(data)}
        return self.views_[vid]

    def update_view(self, view_id, project, data):
        self._check(data)
        self.views_[view_id]["data"] = copy.deepcopy(data)
        return self.views_[view_id]

    # what the Data Manager would show in a tab
    def tab(self, mark):
        view = next(v for v in self.views_.values() if v["data"]["title"].startswith(TITLES[mark]))
        items = view["data"]["filters"]["items"]
        out = []
        for t in self.tasks.values():
            ok = True
            for f in items:
                if f["filter"] == f"filter:tasks:data.{MARK_FIELD}" and f["operator"] == "empty":
                    ok &= (t["data"].get(MARK_FIELD) in (None, "")) == f["value"]
                elif f["filter"] == f"filter:tasks:data.{MARK_FIELD}":
                    ok &= t["data"].get(MARK_FIELD) == f["value"]
                elif f["filter"] == "filter:tasks:total_predictions":
                    assert f["operator"] == "greater"
                    ok &= sum(p["task"] == t["id"] for p in self.preds) > f["value"]
                elif f["filter"] == "filter:tasks:total_annotations":
                    ok &= len(self.annotations.get(t["id"], [])) == f["value"]
            if ok:
                out.append(t["id"])
        return view["data"]["title"], out

    def prediction(self, task):
        return next(p for p in self.preds if p["task"] == task)


@pytest.fixture
def accept_env(monkeypatch):
    # the fake labeler's confidences are 0.5 .. 0.9: targets it can meet
    monkeypatch.setenv("ICM_ACCEPT_TARGETS", "0.15,0.25")
    monkeypatch.setenv("ICM_AUDIT_SIZE", "24")


@pytest.mark.parametrize("case", ["one wrong among the least confident", "three wrong among the most confident"])
def test_job_writes_marks_and_three_tabs_then_the_audit_updates_them(make, accept_env, case):
    ls = TabsLS(range(1, 121))
    app, backend = make(ls, chunk_size=200)
    job = run_job(backend)
    assert job.status == "done", job.error
    acc = job.state["accept"]
    assert "error" not in acc, acc
    assert len(ls.views_) == 3 and {m for m in (REVIEW, AUDIT, ACCEPT)} == {t["mark"] for t in acc["tabs"]}
    audit = acc["plan"]["keys"]
    assert len(audit) == 24
    title, shown = ls.tab(AUDIT)
    assert sorted(shown) == sorted(audit) and title == f"{TITLES[AUDIT]} 0/24 labelled"
    title, accepted = ls.tab(ACCEPT)
    est = next(r for r in acc["table"] if r["target"] == 0.25)
    assert est["status"] == "audit incomplete"
    assert title.startswith(f"{TITLES[ACCEPT]} {len(accepted)} ≤25% · est {est['estimated_error']:.1%} · not audited")
    assert len(accepted) == est["estimated_size"] - len(audit) and not set(accepted) & set(audit)
    title, review = ls.tab(REVIEW)
    assert set(review) == set(ls.tasks) - set(accepted) - set(audit)
    assert ls.data_writes == len(audit) + len(accepted)  # the review set is the unmarked: no PATCH for it
    flagged = sum(1 for t in review if any(r["from_name"] == "needs_review" for r in ls.prediction(t)["result"]))
    assert title == f"{TITLES[REVIEW]} {len(review)} ({flagged} flagged), least confident first"
    review_view = next(v for v in ls.views_.values() if v["data"]["title"].startswith(TITLES[REVIEW]))
    assert review_view["data"]["ordering"] == ["tasks:predictions_score"]  # least confident first
    min_accepted = min(ls.prediction(t)["score"] for t in accepted)
    assert all(ls.prediction(t)["score"] <= min_accepted for t in review if t not in audit)
    assert "Data Manager tabs: " in job.message
    # the figures in /jobs and /versions
    client = app.test_client()
    assert client.get(f"/jobs/{job.id}").get_json()["state"]["accept"]["table"] == acc["table"]
    fig = client.get("/versions?project=1").get_json()["accept"]["1"]
    assert fig["audit"] == {"size": 24, "labelled": 0, "complete": False} and fig["targets"] == acc["table"]

    # a user widens the accept tab's columns: kept across updates
    vid = next(v for v in ls.views_ if ls.views_[v]["data"]["title"].startswith(TITLES[ACCEPT]))
    ls.views_[vid]["data"]["hiddenColumns"] = {"explore": ["tasks:inner_id"]}

    # people label the audit: the gold label is the prediction's, except on a few tasks
    by_conf = sorted(audit, key=lambda t: (ls.prediction(t)["score"], t))
    wrong = by_conf[:1] if case.startswith("one") else by_conf[-3:]
    for i, t in enumerate(sorted(audit)):
        shown = ls.prediction(t)["result"][0]["value"]["choices"][0]
        word = {"Positive": "Negative", "Negative": "Positive"}[shown] if t in wrong else shown
        ls.annotations[t] = [{"id": 500 + i, "result": choice(word)}]
    backend.events.dispatch("ANNOTATION_CREATED", {"action": "ANNOTATION_CREATED", "project": {"id": 1},
                                                   "annotation": {"id": 1, "project": 1}}, backend)
    _wait_for_kind(backend, "accept")
    after = _last(backend, "accept").state["accept"]
    row = next(r for r in after["table"] if r["target"] == 0.25)
    assert row["status"] == ("certified" if case.startswith("one") else "not certified"), row
    title, accepted2 = ls.tab(ACCEPT)
    if row["status"] == "certified":
        assert title.startswith(f"{TITLES[ACCEPT]} {len(accepted2)} ≤25% · est ")
        assert f"audited {row['wrong']}/{row['audited']} wrong · bound {row['bound']:.1%}" in title
        assert len(accepted2) == row["accepted_size"] - sum(1 for t in audit if t in set(_keys_prefix(ls, row)))
    else:
        assert accepted2 == [] and "not certified" in title
    assert ls.views_[vid]["data"]["hiddenColumns"] == {"explore": ["tasks:inner_id"]}
    assert len(ls.views_) == 3  # updated, not duplicated
    title, _ = ls.tab(AUDIT)
    assert title.startswith(f"{TITLES[AUDIT]} 24/24 labelled, {row['wrong']} wrong")

    # "Create Annotations From Predictions" on the accept tab: the model's labels, not people's
    for t in accepted2:
        p = ls.prediction(t)
        ls.annotations[t] = [{"id": 900 + t, "result": copy.deepcopy(p["result"]), "parent_prediction": p["id"]}]
    humans = human_labels(ls.tasks_with_labels(1), SPEC)
    assert set(humans) == set(audit)
    backend.events.dispatch("ANNOTATIONS_CREATED", {"action": "ANNOTATIONS_CREATED", "project": {"id": 1}}, backend)
    _wait_for_kind(backend, "accept", n=2)
    again = _last(backend, "accept").state["accept"]
    assert again["table"] == after["table"]  # nothing audited itself


def _keys_prefix(ls, row):
    order = sorted(ls.tasks, key=lambda t: (-ls.prediction(t)["score"], t))
    return order[:row["accepted_size"]]


def _wait_for_kind(backend, kind, n=1, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [j for j in backend.jobs.list_jobs(project=1) if j.kind == kind and j.status in ("done", "failed")]
        if len(done) >= n:
            assert all(j.status == "done" for j in done), [j.error for j in done]
            return
        time.sleep(0.05)
    raise TimeoutError(f"no {kind} job finished")


def _last(backend, kind):
    return next(j for j in backend.jobs.list_jobs(project=1) if j.kind == kind)


def test_unreliable_labelling_gets_an_empty_accept_tab_that_says_why(make, accept_env):
    from fake_labeler import unsure_label_rows

    ls = TabsLS(range(1, 41))
    app, backend = make(ls, labeler=unsure_label_rows)
    job = run_job(backend)
    acc = job.state["accept"]
    assert acc["report"]["reliable"] is False and acc["plan"] is None and acc["table"] == []
    title, accepted = ls.tab(ACCEPT)
    assert accepted == [] and "labelling unreliable" in title
    assert not any(v["data"]["title"].startswith(TITLES[AUDIT]) for v in ls.views_.values())


def test_label_studio_unreachable_leaves_the_labelling_done(make, accept_env):
    ls = FakeLS(range(1, 21))  # no tasks_with_labels / views: the report step fails, the job does not
    app, backend = make(ls)
    job = run_job(backend)
    assert job.status == "done" and "no risk report" in job.message and "error" in job.state["accept"]


def test_the_crowd_comparison_does_not_count_accepted_predictions_as_crowd_labels():
    from icm_backend.compare.project import read_project

    pred = {"id": 70, "model_version": VERSION, "score": 0.9, "result": choice("Positive")}

    class Client:
        def project(self, project):
            return {"label_config": CLASSIFY_XML}

        def users(self):
            return {}

        def tasks_with_labels(self, project):
            return [{"id": 1, "annotations": [{"id": 1, "result": choice("Positive"), "parent_prediction": 70,
                                               "completed_by": 5}], "predictions": [pred]},
                    {"id": 2, "annotations": [{"id": 2, "result": choice("Negative"), "completed_by": 5}],
                     "predictions": [{**pred, "id": 71}]}]

    inp, _, _ = read_project(Client(), 1)
    assert [(c.task, c.label) for c in inp.crowd] == [(2, "Negative")]


def test_an_uncalibrated_estimate_says_so_in_the_accept_title():
    from icm_backend.engine.risk import Item, RiskConfig, plan_audit, risk_report
    from icm_backend.labelstudio.tabs import plan_tabs

    items = [Item(i, 0.99 - i * 0.001) for i in range(100)]
    report = risk_report(items, config=RiskConfig(targets=(0.05,)))
    report.audit = plan_audit(report, seed=1, size=20, items=items)
    keys = [it.key for it in items]
    plain = plan_tabs(report, keys, set(), set(keys)).tabs[-1].title
    report.warnings.append("confidences not calibrated (none: no independent view for this method)")
    raw = plan_tabs(report, keys, set(), set(keys)).tabs[-1].title
    assert "(uncalibrated)" not in plain and raw == plain.replace(" · not audited", " (uncalibrated) · not audited")


def test_accept_refreshes_never_make_the_queue_refuse_a_training(tmp_path):
    """Annotation events queue accept refreshes; counted against ICM_MAX_QUEUED_JOBS_PER_PROJECT they made
    LS's "Start training" fail with QueueFull (seen in the review-loop E2E). They are outside the limits."""
    from icm_backend.jobs.db import Database
    from icm_backend.jobs.queue import JobRunner, JobStore, QueueFull

    store = JobStore(Database(tmp_path / "db.sqlite3"))
    runner = JobRunner(store, tmp_path / "work", {"accept": lambda ctx: "", "train": lambda ctx: ""})
    runner.ensure_started = lambda: None  # queue only: nothing runs
    runner.max_active_per_project = 2
    runner.unlimited_kinds.add("accept")
    for _ in range(3):
        runner.submit("accept", 7, None, {})
    runner.submit("train", 7, None, {})
    runner.submit("train", 7, None, {})
    with pytest.raises(QueueFull):  # the limit still holds for the kinds it is for
        runner.submit("train", 7, None, {})
