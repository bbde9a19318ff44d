"""`icm-backend report` on a label file as `icm-backend label` writes it: table, audit sample out, audited
labels in, gold, HTML page; an unreliable labelling gets no safe set."""

from __future__ import annotations

import json
import random

import pytest

from icm_backend.cli import main


def write_labels(path, n=400, seed=0, unreliable=False):
    rng = random.Random(seed)
    gold = []
    with open(path, "w") as f:
        for i in range(n):
            c = min(1.0, max(0.5, rng.betavariate(12, 1)))
            label = rng.choice(["negative", "positive"])
            right = rng.random() < c
            gold.append(label if right else {"negative": "positive", "positive": "negative"}[label])
            flags = [{"type": "unreliable", "with": [], "reason": "estimated accuracy 0.51 is under 0.70"}] \
                if unreliable else []
            f.write(json.dumps({"index": i, "label": label, "confidence": round(c, 6), "flags": flags}) + "\n")
    return gold


def test_report_prints_the_three_figures_and_writes_the_page(tmp_path, capsys):
    labels = tmp_path / "x.jsonl"
    gold = write_labels(labels)
    gold_file = tmp_path / "gold.tsv"
    gold_file.write_text("text\tlabel\n" + "".join(f"row {i}\t{int(g == 'positive')}\n" for i, g in enumerate(gold)))
    audit_out = tmp_path / "audit.jsonl"
    assert main(["report", str(labels), "--targets", "0.05", "--audit-size", "60", "--audit-out", str(audit_out)]) == 0
    out = capsys.readouterr().out
    assert "audit: 60 rows to label" in out and "audit incomplete: 0 of 60" in out
    sample = [json.loads(line)["index"] for line in audit_out.read_text().splitlines()]
    assert len(sample) == 60 and all(set(json.loads(line)) == {"index"} for line in audit_out.read_text().splitlines())
    # people label the sample (here: gold) and the report reads it back with the same seed
    audited = tmp_path / "audited.jsonl"
    audited.write_text("".join(json.dumps({"index": i, "label": gold[i]}) + "\n" for i in sample))
    page = tmp_path / "r.html"
    assert main(["report", str(labels), "--targets", "0.05", "--audit-size", "60", "--audit", str(audited),
                 "--gold", str(gold_file), "--labels", "negative,positive", "--html", str(page),
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "r.json").read_text())
    row = rep["table"][0]
    assert rep["audit_labelled"] == 60 and row["audited"] is not None and row["status"] in ("certified", "not certified")
    wrong = sum(1 for i in sample if gold[i] != json.loads(labels.read_text().splitlines()[i])["label"])
    assert row["wrong"] <= wrong
    assert "true error at 5.0% (gold): estimated set " in out
    html = page.read_text()
    assert "coverage-error curve" in html and "data:image/png;base64," in html and "true error, estimated set" in html


def test_report_of_an_unreliable_labelling_offers_no_safe_set(tmp_path, capsys):
    labels = tmp_path / "x.jsonl"
    write_labels(labels, unreliable=True)
    assert main(["report", str(labels), "--audit-out", str(tmp_path / "a.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "no safe set: the labelling is unreliable: estimated accuracy 0.51 is under 0.70" in out
    assert not (tmp_path / "a.jsonl").exists()


def test_report_bad_input_names_the_field(tmp_path, capsys):
    labels = tmp_path / "x.jsonl"
    write_labels(labels, n=50)
    assert main(["report", str(labels), "--targets", "0.05,abc"]) == 2
    assert "--targets" in capsys.readouterr().err
    bad = tmp_path / "audit.jsonl"
    bad.write_text(json.dumps({"row": 1, "label": "positive"}) + "\n")
    assert main(["report", str(labels), "--targets", "0.3", "--audit", str(bad)]) == 2
    assert "expected fields 'index' and 'label'" in capsys.readouterr().err
