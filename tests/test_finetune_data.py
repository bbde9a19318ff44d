"""Training rows from Label Studio annotations and from files: conflict rules and bad input."""

from __future__ import annotations

import json

import pytest

from icm_backend.errors import InputError
from icm_backend.finetune.data import read_rows, training_set_from_file, training_set_from_ls_tasks
from icm_backend.labelstudio.annotations import annotation_label, resolve_task_annotations
from icm_backend.finetune.job import explain_empty
from icm_backend.labelstudio.config import parse_label_config

CLASSIFY = """<View><Text name="text" value="$text"/>
<Choices name="sentiment" toName="text" choice="single"><Choice value="negative"/><Choice value="positive"/></Choices></View>"""
CLAIMS = """<View><Text name="q" value="$question"/><Text name="c" value="$choice"/>
<Choices name="label" toName="c"><Choice value="True"/><Choice value="False"/></Choices></View>"""
PAIRWISE = """<View><Text name="q" value="$question"/><Text name="left" value="$choice"/><Text name="right" value="$choice_2"/>
<Pairwise name="pw" toName="left,right"/></View>"""


def ann(aid, choice=None, cancelled=False, updated="2026-01-01T00:00:00Z", from_name="sentiment", result=None):
    if result is None:
        result = [] if choice is None else [{"from_name": from_name, "to_name": "text", "type": "choices",
                                             "value": {"choices": [choice]}}]
    return {"id": aid, "result": result, "was_cancelled": cancelled, "updated_at": updated, "created_at": updated}


def task(tid, text, annotations=(), predictions=()):
    return {"id": tid, "data": {"text": text}, "annotations": list(annotations), "predictions": list(predictions)}


@pytest.fixture
def spec():
    return parse_label_config(CLASSIFY)


def test_majority_wins(spec):
    row, skipped, conflict = resolve_task_annotations(1, [ann(1, "positive"), ann(2, "negative"),
                                                          ann(3, "positive")], spec)
    assert row.label == "positive" and conflict and not skipped and row.annotation_ids == [1, 2, 3]


def test_tie_goes_to_latest_annotation(spec):
    anns = [ann(1, "positive", updated="2026-01-02T00:00:00Z"), ann(2, "negative", updated="2026-01-03T00:00:00Z")]
    row, _, conflict = resolve_task_annotations(1, anns, spec)
    assert row.label == "negative" and conflict
    anns[0]["updated_at"] = "2026-01-04T00:00:00Z"
    assert resolve_task_annotations(1, anns, spec)[0].label == "positive"


def test_cancelled_empty_and_unknown_choice_are_skipped_with_reasons(spec):
    tasks = [task(1, "a", [ann(10, "positive", cancelled=True)]),
             task(2, "b", [ann(11, result=[])]),
             task(3, "c", [ann(12, "meh")]),
             task(4, "d", [ann(13, "negative")])]
    ts = training_set_from_ls_tasks(tasks, spec)
    assert [(r.task_id, r.label, r.row) for r in ts.rows] == [(4, "negative", {"text": "d"})]
    reasons = {s["task"]: s["reason"] for s in ts.skipped}
    assert reasons[1].startswith("cancelled")
    assert reasons[2].startswith("empty result")
    assert reasons[3].startswith("unknown choice") and "'meh'" in reasons[3]


def test_human_label_wins_over_icm_and_icm_needs_threshold(spec):
    pred = lambda label, score, version="icm-x": {"result": [{"from_name": "sentiment", "type": "choices",
                                                              "value": {"choices": [label]}}],
                                                  "score": score, "model_version": version}
    tasks = [task(1, "human", [ann(1, "negative")], [pred("positive", 0.99)]),
             task(2, "confident", [], [pred("positive", 0.95)]),
             task(3, "unsure", [], [pred("negative", 0.55)]),
             task(4, "provisional", [], [pred("negative", 0.99, "icm-x-provisional")])]
    only_human = training_set_from_ls_tasks(tasks, spec)
    assert [(r.task_id, r.label, r.source) for r in only_human.rows] == [(1, "negative", "human")]
    mixed = training_set_from_ls_tasks(tasks, spec, include_icm=True, min_confidence=0.9)
    assert [(r.task_id, r.label, r.source) for r in mixed.rows] == [(1, "negative", "human"), (2, "positive", "icm")]
    ids = mixed.ids()
    assert ids["human"][0]["annotations"] == [1] and ids["icm"][0]["task"] == 2


def test_claims_and_pairwise_annotations():
    claims = parse_label_config(CLAIMS)
    t = {"id": 5, "data": {"question": "2+2?", "choice": "4"},
         "annotations": [ann(1, "True", from_name="label")]}
    ts = training_set_from_ls_tasks([t], claims)
    assert ts.rows[0].label == "True" and ts.rows[0].row["choice"] == "4"

    pw = parse_label_config(PAIRWISE)
    t = {"id": 6, "data": {"question": "q", "choice": "A", "choice_2": "B"},
         "annotations": [{"id": 2, "result": [{"from_name": "pw", "type": "pairwise", "value": {"selected": "right"}}]}]}
    ts = training_set_from_ls_tasks([t], pw)
    # both orders of the pair: "A better than B" is False, "B better than A" is True
    assert [(r.row["choice"], r.label) for r in ts.rows] == [("A", "False"), ("B", "True")]
    assert annotation_label([{"from_name": "pw", "value": {"selected": "up"}}], pw)[0] is None


def test_job_messages_for_unusable_projects(spec):
    assert "has no annotations" in explain_empty(3, [task(1, "a")], training_set_from_ls_tasks([task(1, "a")], spec))
    tasks = [task(1, "a", [ann(7, "meh")])]
    msg = explain_empty(3, tasks, training_set_from_ls_tasks(tasks, spec))
    assert "none of 1 annotations is usable" in msg and "task 1 annotation 7: unknown choice" in msg


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".tsv"])
def test_files_in_every_format(tmp_path, suffix):
    rows = [{"text": "good", "label": "1"}, {"text": "bad", "label": "negative"}]
    p = tmp_path / f"rows{suffix}"
    if suffix == ".json":
        p.write_text(json.dumps(rows))
    elif suffix == ".jsonl":
        p.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        sep = "," if suffix == ".csv" else "\t"
        p.write_text(f"text{sep}label\n" + "\n".join(f"{r['text']}{sep}{r['label']}" for r in rows))
    ts = training_set_from_file(p, "classify", ["negative", "positive"])
    assert [(r.row["text"], r.label) for r in ts.rows] == [("good", "positive"), ("bad", "negative")]


def test_claims_file_booleans(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"question": "q", "choice": "a", "label": 1}\n{"question": "q", "choice": "b", "label": false}\n')
    assert [r.label for r in training_set_from_file(p, "claims", ["True", "False"]).rows] == ["True", "False"]


def test_file_errors_name_the_field(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "a", "label": "maybe"}\n')
    with pytest.raises(InputError, match="row 1 field 'label' = 'maybe'"):
        training_set_from_file(p, "classify", ["negative", "positive"])
    p.write_text('{"text": "a"}\n')
    with pytest.raises(InputError, match="row 1 has no field 'label'"):
        training_set_from_file(p, "classify", ["negative", "positive"])
    with pytest.raises(InputError, match="unknown format"):
        read_rows(tmp_path / "x.jsonl").__class__ and read_rows(_touch(tmp_path / "x.xml"))
    with pytest.raises(InputError, match="file not found"):
        read_rows(tmp_path / "nope.json")


def _touch(p):
    p.write_text("")
    return p
