"""The whole-project ICM job reads the project's annotations as fixed labels (issue 11): the labelling gets
them as fixed members of D (in context, never relabelled), their tasks get no prediction, and a cancelled
or unusable annotation does not count."""

from __future__ import annotations

from fake_labeler import fake_label_rows, unsure_label_rows
from test_icm_job_writeback import FakeLS, make, run_job  # noqa: F401  (make is a fixture)


class LabelledLS(FakeLS):
    def __init__(self, task_ids, annotations):
        super().__init__(task_ids)
        self.annotations = annotations  # task id -> list of annotation dicts

    def tasks_with_labels(self, project):
        self.listings += 1
        return [{**t, "annotations": self.annotations.get(t["id"], []), "predictions": []} for t in self.tasks.values()]


def ann(aid, choice, **kw):
    return {"id": aid, "result": [{"from_name": "sentiment", "to_name": "text", "type": "choices",
                                   "value": {"choices": [choice]}}], "was_cancelled": False, **kw}


def test_annotations_are_fixed_rows_and_get_no_prediction(make):
    calls = []

    def spy(rows, **kw):
        calls.append((len(rows), dict(kw.get("fixed") or {}), [r["text"] for r in rows]))
        return fake_label_rows(rows, **kw)

    annotations = {1: [ann(11, "Positive")], 2: [ann(12, "Negative")], 3: [ann(13, "Negative")],
                   4: [{**ann(14, "Positive"), "was_cancelled": True}],  # skipped: not a label
                   5: [ann(15, "Maybe")]}  # outside the label set: not a label
    ls = LabelledLS(range(1, 41), annotations)
    app, backend = make(ls, labeler=spy, chunk_size=20)
    job = run_job(backend)
    assert job.status == "done", job.error
    assert sorted(job.state["human"]) == [[1, "Positive"], [2, "Negative"], [3, "Negative"]]
    assert "3 human labels fixed in context" in job.message
    humans = {ls.tasks[t]["data"]["text"]: lab for t, lab in ((1, "Positive"), (2, "Negative"), (3, "Negative"))}
    assert len(calls) == 1  # one labelling of the whole project
    for n, fixed, texts in calls:
        got = {texts[i]: lab for i, lab in fixed.items()}
        assert got == humans  # the three human labels, as fixed rows, nothing else
    assert sorted({p["task"] for p in ls.preds}) == list(range(4, 41))  # annotated tasks are not relabelled
    # one read of the project serves the labelling's tasks and their annotations (the accept report reads it
    # again afterwards, for the predictions)
    assert ls.listings_at_first_import == 1


def test_a_zero_shot_job_does_not_relabel_annotated_tasks_either(make):
    """Zero-shot reads no context, yet its job must skip human-labelled tasks too: a version on trial is
    judged on the tasks where it and the serving version disagree, never on the rows it was trained on."""
    ls = LabelledLS(range(1, 21), {1: [ann(11, "Positive")], 2: [ann(12, "Negative")]})
    app, backend = make(ls, method="zero-shot", chunk_size=10)
    job = run_job(backend, method="zero-shot")  # as the service submits it (ServerConfig.method)
    assert job.status == "done", job.error
    assert "2 human labels kept (their tasks not relabelled)" in job.message
    assert sorted({p["task"] for p in ls.preds}) == list(range(3, 21))


def test_an_unreliable_labelling_is_said_in_the_job_status(make):
    ls = FakeLS(range(1, 21))
    app, backend = make(ls, labeler=unsure_label_rows, chunk_size=10)
    job = run_job(backend)
    assert job.status == "done", job.error
    assert "UNRELIABLE labelling: estimated accuracy 0.52 is under 0.70" in job.message
    assert job.state["assessment"]["reliable"] is False
    # ... and in /versions, next to the version that labelled it (for the project, and for all projects)
    for query in (f"?project={job.project}", ""):
        verdict = app.test_client().get("/versions" + query).json["labelling"][str(job.project)]
        assert verdict["reliable"] is False and verdict["job"] == job.id
        assert verdict["reasons"] == ["estimated accuracy 0.52 is under 0.70"] and verdict["estimated_accuracy"] == 0.52


class BangScorer:
    """The engine's real label_rows needs a scorer: this one prefers the first label for texts with an even
    number of "!" (FakeLS's texts have 0-6), a little more with more labelled examples of it in context."""

    model_id = "bang@0"

    def set_labels(self, words):
        self.label_words = list(words)

    def count_tokens(self, text):
        return len(text.split())

    def score(self, prefix, targets):
        import numpy as np

        lean = 0.02 * (prefix.count(f" {self.label_words[0]}\n") - prefix.count(f" {self.label_words[1]}\n"))
        out = []
        for t in targets:
            even = t.rsplit("sentence", 1)[-1].count("!") % 2 == 0
            logits = np.array([1.0 if even else -1.0, 0.0]) + np.array([lean, 0.0])
            out.append(logits - np.log(np.exp(logits).sum()))
        return np.array(out)


def test_a_relabel_reuses_the_projects_core_with_the_human_labels_in_place(make, monkeypatch):
    """The job keeps the core of each ICM labelling (ProjectStore.put_core); the next job of the project reuses
    it (no search: engine.core.reuse_core) with the human labels given since, a human label contradicting a
    core label in its place. The real engine (label_rows) on a fake scorer."""
    from icm_backend.engine import labeler as engine
    from icm_backend.engine.search import ICMSearch

    searches, cores_in = [], []
    real_run = ICMSearch.run
    monkeypatch.setattr(ICMSearch, "run", lambda self, progress=None: searches.append(self.n) or real_run(self, progress))

    def label(rows, **kw):
        cores_in.append(kw.get("core"))
        return engine.label_rows(rows, **{**kw, "model": BangScorer()})

    annotations: dict = {}
    ls = LabelledLS(range(1, 41), annotations)
    app, backend = make(ls, labeler=label, core_size=8, chunk_size=10, max_iters=40)
    first = run_job(backend)
    assert first.status == "done", first.error
    assert searches == [8] and cores_in == [None] and "core" not in first.message
    core = backend.projects.core(1)
    assert len(core) == 8 and all(k == 0 and w in ("Positive", "Negative") for _, k, w in core)

    # a review: two tasks outside the core labelled as the core would have it no other way (no contradiction)
    outside = [t for t in range(1, 41) if t not in {c[0] for c in core}][:2]
    annotations.update({t: [ann(100 + t, "Positive")] for t in outside})
    second = run_job(backend)
    assert second.status == "done", second.error
    assert searches == [8], "the second job searched though nothing contradicted the core"
    assert "the project's previous core reused (no search)" in second.message
    assert len(cores_in[-1]) == 8  # the stored core, mapped to this labelling's rows
    assert second.state["core_origin"] == {"how": "reused", "rows": 10, "human": 2, "why": ""}
    assert sorted({c[0] for c in backend.projects.core(1)}) == sorted({c[0] for c in core} | set(outside))

    # a human label that contradicts a core label: it takes the core label's place, still no search
    tid, _, word = core[0]
    human = "Negative" if word == "Positive" else "Positive"
    annotations[tid] = [ann(999, human)]
    third = run_job(backend)
    assert third.status == "done", third.error
    assert searches == [8], "a contradicting human label made the job search the core again"
    assert "previous core reused (no search; 1 human label(s) in place of the core's" in third.message
    assert third.state["core_origin"]["how"] == "reused" and third.state["core_origin"]["human"] == 3
    assert {c[0]: c[2] for c in backend.projects.core(1)}[tid] == human


def test_icm_reuse_core_0_searches_every_time(make, monkeypatch):
    from icm_backend.engine import labeler as engine

    cores_in = []

    def label(rows, **kw):
        cores_in.append(kw.get("core"))
        return engine.label_rows(rows, **{**kw, "model": BangScorer()})

    ls = LabelledLS(range(1, 31), {})
    app, backend = make(ls, labeler=label, core_size=8, chunk_size=10, max_iters=30, reuse_core=False)
    for _ in range(2):
        assert run_job(backend).status == "done"
    assert cores_in == [None, None]
