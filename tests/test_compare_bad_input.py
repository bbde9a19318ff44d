"""Messy crowd data: clear messages (InputError naming the field, or warnings in the summary) and
the statistics that still make sense still computed."""

from __future__ import annotations

import json

import pytest

from icm_backend.cli import main
from icm_backend.compare import compare, load_inputs
from icm_backend.compare.data import CompareInput, CrowdLabel
from icm_backend.compare.loaders import load_crowd, load_icm_labels
from icm_backend.errors import InputError
from icm_backend.engine.types import Prediction


def _icm(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _crowd_csv(path, rows):
    path.write_text("task,worker,label\n" + "".join(f"{t},{w},{lab}\n" for t, w, lab in rows))
    return path


ICM_ROWS = [{"index": i, "label": lab, "confidence": c, "flags": []}
            for i, (lab, c) in enumerate([("True", 0.9), ("False", 0.85), ("True", 0.7), ("False", 0.95)])]


def test_one_annotator_keeps_accuracy_and_kappa_but_nulls_reliability(tmp_path):
    crowd = _crowd_csv(tmp_path / "c.csv", [(0, "ann", "True"), (1, "ann", "False"), (2, "ann", "False"),
                                            (3, "ann", "False")])
    s = compare(load_inputs(_icm(tmp_path / "i.jsonl", ICM_ROWS), crowd)).summary
    assert s["n_annotators"] == 1
    assert s["fleiss_kappa_crowd"] is None and s["krippendorff_alpha_crowd"] is None
    assert "two or more annotators" in s["null_reasons"]["krippendorff_alpha_crowd"]
    assert "two or more annotators" in s["null_reasons"]["fleiss_kappa_crowd"]
    assert s["accuracy_icm_vs_majority"] == pytest.approx(0.75)
    # ICM T F T F vs ann T F F F: p_o 3/4, p_e (2*1 + 2*3)/16 = 1/2 -> 0.5
    assert s["cohen_kappa_icm_vs_majority"] == pytest.approx(0.5)
    assert any("only one annotator" in w for w in s["warnings"])


def test_single_label_worker_tasks_without_crowd_and_outside_labels(tmp_path):
    crowd = _crowd_csv(tmp_path / "c.csv", [
        (0, "a", "True"), (0, "b", "True"), (1, "a", "False"), (1, "b", "false"),  # 'false' -> mapped by case
        (2, "a", "True"), (2, "b", "Maybe"),  # outside the label set -> dropped
        (2, "lonely", "True"),  # a worker with a single label
    ])  # task 3 has no crowd label
    s = compare(load_inputs(_icm(tmp_path / "i.jsonl", ICM_ROWS), crowd)).summary
    text = "\n".join(s["warnings"])
    assert "'Maybe'" in text and "field 'label' of the crowd rows" in text and "dropped" in text
    assert "mapped by letter case" in text
    assert "1 ICM-labelled tasks have no crowd label" in text and "tasks 3" in text
    assert "worker 'lonely' labelled a single task" in text
    assert s["n_crowd_votes"] == 6 and s["n_tasks_both"] == 3
    assert s["accuracy_icm_vs_majority"] == pytest.approx(1.0)  # T/T, F/F, T/T
    assert s["krippendorff_alpha_crowd"] is not None


def test_explicit_label_set_with_no_matching_crowd_label_is_an_input_error():
    inp = CompareInput(predictions={0: Prediction(0, "yes", 0.9)}, crowd=[CrowdLabel(0, "a", "Maybe")],
                       label_set=["no", "yes"])
    with pytest.raises(InputError, match="field 'label' of the crowd rows"):
        compare(inp)


def test_same_label_everywhere_kappa_null_with_reason():
    crowd = [CrowdLabel(t, w, "True") for t in range(3) for w in "ab"]
    preds = {t: Prediction(t, "True", 0.9) for t in range(3)}
    s = compare(CompareInput(predictions=preds, crowd=crowd, label_set=["False", "True"])).summary
    assert s["accuracy_icm_vs_majority"] == pytest.approx(1.0)
    assert s["cohen_kappa_icm_vs_majority"] is None
    assert "chance agreement" in s["null_reasons"]["cohen_kappa_icm_vs_majority"]
    assert "same label" in s["null_reasons"]["krippendorff_alpha_crowd"]
    assert any("gave the same label" in w for w in s["warnings"])


@pytest.mark.parametrize("row, field", [
    ({"index": 0, "label": "True"}, "confidence"),
    ({"index": 0, "label": "True", "confidence": 1.5}, "confidence"),
    ({"label": "True", "confidence": 0.5}, "index"),
    ({"index": "x", "label": "True", "confidence": 0.5}, "index"),
    ({"index": 0, "confidence": 0.5}, "label"),
])
def test_bad_icm_rows_name_the_field(tmp_path, row, field):
    with pytest.raises(InputError, match=rf"i.jsonl:1: .*'{field}'"):
        load_icm_labels(_icm(tmp_path / "i.jsonl", [row]))


def test_crowd_csv_without_worker_column(tmp_path):
    (tmp_path / "c.csv").write_text("task,label\n0,True\n")
    with pytest.raises(InputError, match=r"c.csv:2: missing field 'worker'"):
        load_crowd(tmp_path / "c.csv")


def test_cli_prints_one_line_error_and_exits_2(tmp_path, capsys):
    _icm(tmp_path / "i.jsonl", [{"index": 0, "label": "True", "confidence": "high"}])
    _crowd_csv(tmp_path / "c.csv", [(0, "a", "True")])
    rc = main(["compare", "--labels", str(tmp_path / "i.jsonl"), "--crowd", str(tmp_path / "c.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "'confidence'" in err[0]
    assert main(["compare", "--labels", str(tmp_path / "i.jsonl")]) == 2
    assert "--crowd" in capsys.readouterr().err


def test_alpaca_format_on_a_wrong_file(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps([{"question": "q", "label": True}]))
    with pytest.raises(InputError, match="candidate_label"):
        load_inputs(_icm(tmp_path / "i.jsonl", ICM_ROWS), tmp_path / "x.json", crowd_format="alpaca")
