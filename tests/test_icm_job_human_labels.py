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
