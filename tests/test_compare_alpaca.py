"""The paper's Alpaca comparisons (4 crowd votes per pair) through the loader, the library and the CLI.

The ICM labels here are SYNTHETIC: gold labels with 25% flipped at random (fixed seed) and a random
confidence, written by this test only — the real ICM output is run by the lead later. The crowd votes
and the gold labels are the real ones from data/paper/test_alpaca.json: 130 of the paper's 934 rows (64 pairs
and the one pair with a 5th vote; see data/README.md), so the counts below are the trimmed file's.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from icm_backend.cli import main
from icm_backend.compare import compare, load_inputs
from icm_backend.compare.loaders import load_alpaca, load_crowd, write_crowd_rows
from icm_backend.compare.stats import fleiss_kappa

ALPACA = Path(__file__).resolve().parents[1] / "data" / "paper" / "test_alpaca.json"


def write_synthetic_icm(path: Path, gold: dict[int, str], flip: float = 0.25, seed: int = 0) -> dict[int, str]:
    """SYNTHETIC ICM output: gold with `flip` of labels flipped; flipped rows get lower confidence."""
    rng = random.Random(seed)
    labels = {}
    with path.open("w") as fh:
        for i in sorted(gold):
            flipped = rng.random() < flip
            lab = ("False" if gold[i] == "True" else "True") if flipped else gold[i]
            conf = rng.uniform(0.5, 0.9) if flipped else rng.uniform(0.6, 1.0)
            labels[i] = lab
            fh.write(json.dumps({"index": i, "label": lab, "confidence": round(conf, 4), "flags": []}) + "\n")
    return labels


def test_alpaca_loader_reads_the_real_votes():
    crowd, gold = load_alpaca(ALPACA)
    rows = json.loads(ALPACA.read_text())
    assert len(gold) == len(rows) == 130
    assert len({c.task for c in crowd}) == 65  # first row of each pair
    assert len(crowd) == sum(len(r.get("candidate_label", [])) for r in rows) == 261
    assert {c.worker for c in crowd} == {"crowd_0", "crowd_1", "crowd_2", "crowd_3", "crowd_4"}
    # row 0: votes [true, false, true, true], gold true; row 1 (swapped pair): gold 0 -> "False"
    assert [c.label for c in crowd if c.task == 0] == ["True", "False", "True", "True"]
    assert gold[0] == "True" and gold[1] == "False"
    mirrored, _ = load_alpaca(ALPACA, mirror_pairs=True)
    assert [c.label for c in mirrored if c.task == 1] == ["False", "True", "False", "False"]


def _independent_fleiss(tasks: list[list[str]]) -> float:
    """Textbook Fleiss on the tasks with exactly 4 votes (table form, not the library's per-task form)."""
    rows = [t for t in tasks if len(t) == 4]
    table = np.array([[t.count("True"), t.count("False")] for t in rows], dtype=float)
    n, N = 4, len(rows)
    p_j = table.sum(0) / (N * n)
    P_i = ((table ** 2).sum(1) - n) / (n * (n - 1))
    return (P_i.mean() - (p_j ** 2).sum()) / (1 - (p_j ** 2).sum())


def _independent_alpha(tasks: list[list[str]]) -> float:
    """Krippendorff's alpha (nominal, binary) from the coincidence matrix, written out here."""
    o = Counter()
    for t in tasks:
        m = len(t)
        if m < 2:
            continue
        c = Counter(t)
        for a in c:
            for b in c:
                pairs = c[a] * (c[b] - (a == b))
                o[(a, b)] += pairs / (m - 1)
    n_t = o[("True", "True")] + o[("True", "False")]
    n_f = o[("False", "False")] + o[("False", "True")]
    n = n_t + n_f
    return 1 - (n - 1) * o[("True", "False")] / (n_t * n_f)


def test_alpaca_measures_match_independent_computation(tmp_path):
    crowd, gold = load_alpaca(ALPACA)
    icm = write_synthetic_icm(tmp_path / "icm.jsonl", gold)
    r = compare(load_inputs(tmp_path / "icm.jsonl", ALPACA, crowd_format="alpaca"))
    s = r.summary
    votes: dict[int, list[str]] = {}
    for c in crowd:
        votes.setdefault(c.task, []).append(c.label)
    # no 2-2 ties in this file, so the majority is the strict majority
    majority = {t: Counter(v).most_common(1)[0][0] for t, v in votes.items()}
    assert s["n_majority_ties"] == 0 and s["n_tasks_with_majority"] == 65
    assert r.aggregates["majority_vote"].labels == majority
    acc = np.mean([icm[t] == majority[t] for t in majority])
    assert s["accuracy_icm_vs_majority"] == pytest.approx(acc, abs=1e-6)
    assert s["accuracy_icm_vs_gold"] == pytest.approx(np.mean([icm[t] == gold[t] for t in gold]), abs=1e-6)
    # the file's gold label IS the crowd majority on the voted rows
    assert s["accuracy_majority_vs_gold"] == pytest.approx(1.0)
    # 64 tasks have 4 votes, one has 5: on the 4-vote tasks the library's per-task form is the textbook
    # table form exactly; the summary adds the 5-vote task (1 of 65 here), which moves it by under 0.02
    four = [v for v in votes.values() if len(v) == 4]
    assert len(four) == 64
    assert fleiss_kappa(four).value == pytest.approx(_independent_fleiss(four), abs=1e-9)
    assert s["fleiss_kappa_crowd"] == pytest.approx(_independent_fleiss(four), abs=0.02)
    assert s["krippendorff_alpha_crowd"] == pytest.approx(_independent_alpha(list(votes.values())), abs=1e-6)
    # kappa ICM vs majority, by the formula
    keys = sorted(majority)
    a, b = [icm[k] for k in keys], [majority[k] for k in keys]
    p_e = sum(a.count(x) * b.count(x) for x in ("True", "False")) / len(keys) ** 2
    assert s["cohen_kappa_icm_vs_majority"] == pytest.approx((acc - p_e) / (1 - p_e), abs=1e-6)
    # the real quirk of this file: one row has a 5th vote -> worker crowd_4 with a single label
    assert any("crowd_4" in w and "single task" in w for w in s["warnings"])
    # every disagreement of the first kind really is ICM-confident against the majority
    for d in r.disagreements:
        if d.kind == "icm_confident_crowd_against":
            assert d.icm_confidence >= 0.8 and d.majority != d.icm_label


def test_cli_on_alpaca_writes_report_and_summary(tmp_path, capsys):
    _, gold = load_alpaca(ALPACA)
    write_synthetic_icm(tmp_path / "icm.jsonl", gold)
    rc = main(["compare", "--labels", str(tmp_path / "icm.jsonl"), "--crowd", str(ALPACA), "--crowd-format",
               "alpaca", "--report", str(tmp_path / "r.html"), "--json", str(tmp_path / "s.json")])
    assert rc == 0
    s = json.loads((tmp_path / "s.json").read_text())
    for key in ("n_tasks", "cohen_kappa_icm_vs_majority", "krippendorff_alpha_crowd", "accuracy_icm_vs_majority"):
        assert isinstance(s[key], (int, float)), key
    assert s["n_tasks"] == 130
    html = (tmp_path / "r.html").read_text()
    assert html.count('src="data:image/png;base64,') == 6  # reliability, heatmap, 4 confusion matrices


def test_write_crowd_rows_roundtrip(tmp_path):
    crowd, _ = load_alpaca(ALPACA)
    for name in ("c.jsonl", "c.csv"):
        assert main(["compare", "--crowd", str(ALPACA), "--crowd-format", "alpaca",
                     "--write-crowd", str(tmp_path / name)]) == 0
        assert load_crowd(tmp_path / name) == crowd
    write_crowd_rows(crowd[:3], tmp_path / "x.csv")
    assert (tmp_path / "x.csv").read_text().splitlines()[0] == "task,worker,label"
