"""The shipped label configs and plain configs map to the right ICM preset, fields and review block."""

from __future__ import annotations

from pathlib import Path

import pytest

from icm_backend.labelstudio import results as P
from icm_backend.labelstudio.config import LabelConfigError, parse_label_config
from icm_backend.labelstudio.rows import tasks_to_rows
from icm_backend.engine.types import INCONSISTENT, LOW_CONFIDENCE, Flag, Prediction

CONFIGS = Path(__file__).resolve().parents[1] / "label_config"


def test_shipped_configs_exist_and_parse():
    assert {p.name for p in CONFIGS.glob("*.xml")} >= {"claims.xml", "classify.xml", "comparison.xml"}
    claims = parse_label_config((CONFIGS / "claims.xml").read_text())
    assert claims.task == "claims" and claims.fields == {"choice": "choice", "question": "question"}
    assert claims.review.choices_name == "needs_review" and claims.review.reason_name == "review_reason"
    classify = parse_label_config((CONFIGS / "classify.xml").read_text())
    assert classify.task == "classify" and classify.labels == ["Positive", "Negative"] and classify.has_review
    comp = parse_label_config((CONFIGS / "comparison.xml").read_text())
    assert comp.task == "comparison" and comp.control_type == "pairwise"
    assert comp.fields == {"choice": "choice", "choice_2": "choice_2", "question": "question"}


def test_plain_true_false_over_text_is_classify_without_review():
    spec = parse_label_config('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
                              '<Choice value="True"/><Choice value="False"/></Choices></View>')
    assert spec.task == "classify" and spec.labels == ["True", "False"] and not spec.has_review


def test_claims_rows_read_group_and_answer_key():
    spec = parse_label_config((CONFIGS / "claims.xml").read_text())
    rs = tasks_to_rows(spec, [
        {"id": 5, "data": {"question": "2+2?", "choice": "4", "consistency_id": 1, "answer": "4"}},
        {"id": 6, "data": {"question": "2+2?", "claim": "5", "group_id": 1, "answer_key": "5"}},
        {"id": 7, "data": {"question": "x"}},
    ])
    assert rs.rows == [{"question": "2+2?", "choice": "4", "consistency_id": "1", "answer": "4"},
                       {"question": "2+2?", "choice": "5", "consistency_id": "1", "answer": "5"}]
    assert rs.task_ids == [5, 6] and 7 in rs.skipped


def test_comparison_emits_both_orders_and_maps_back():
    spec = parse_label_config((CONFIGS / "comparison.xml").read_text())
    rs = tasks_to_rows(spec, [{"id": 9, "data": {"question": "q", "choice": "A", "choice_2": "B"}}])
    assert [r["choice"] for r in rs.rows] == ["A", "B"] and rs.task_ids == [9, 9] and rs.primary == {9: 0}
    out = P.build(spec, rs, [Prediction(0, "True", 0.9), Prediction(1, "False", 0.9)], 0.6)
    assert out[9].result[0]["value"] == {"selected": "left"} and out[9].result[0]["to_name"] == "pw"


def test_claims_keep_the_configs_spelling_of_true_false():
    spec = parse_label_config('<View><Header value="$question"/><Text name="c" value="$claim"/>'
                              '<Choices name="v" toName="c"><Choice value="true"/><Choice value="false"/></Choices></View>')
    assert spec.task == "claims"
    rs = tasks_to_rows(spec, [{"id": 1, "data": {"question": "q", "claim": "c"}}])
    out = P.build(spec, rs, [Prediction(0, "True", 0.8)], 0.6)
    assert out[1].result[0]["value"] == {"choices": ["true"]}


def test_low_confidence_flag_and_reason():
    spec = parse_label_config((CONFIGS / "classify.xml").read_text())
    rs = tasks_to_rows(spec, [{"id": 3, "data": {"text": "meh"}}])
    out = P.build(spec, rs, [Prediction(0, "Positive", 0.52, [Flag(LOW_CONFIDENCE)])], 0.6)
    assert out[3].flagged and "low confidence 0.52" in out[3].reason
    assert out[3].result[1]["value"] == {"choices": ["needs review"]}


def test_pairwise_needs_two_texts():
    with pytest.raises(LabelConfigError, match="Pairwise"):
        parse_label_config('<View><Text name="a" value="$a"/><Pairwise name="pw" toName="a"/></View>')


def test_flags_name_task_ids_looked_up_from_rows():
    spec = parse_label_config((CONFIGS / "claims.xml").read_text())
    rs = tasks_to_rows(spec, [{"id": 40 + i, "data": {"question": "q", "choice": str(i), "consistency_id": 1,
                                                      "answer": str(i)}} for i in range(2)])
    preds = [Prediction(i, "True", 0.9, [Flag(INCONSISTENT, (1 - i,), "", ("exclusive",))]) for i in range(2)]
    out = P.build(spec, rs, preds, 0.6)
    assert out[40].reason == ("inconsistent with task #41: the two give different answers to one question, so they "
                              "cannot both be True")
