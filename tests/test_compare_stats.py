"""Hand-worked small cases for every statistic the compare report shows (issue 5).

Each expected value is worked out by hand in the comment above it, so these tests check the
implementation against an independent computation, not against itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from icm_backend.compare.data import CompareInput, CrowdLabel
from icm_backend.compare.pipeline import compare
from icm_backend.compare.stats import accuracy, cohen_kappa, fleiss_kappa, krippendorff_alpha
from icm_backend.engine.types import Prediction


def test_accuracy_hand_case():
    # 3 of 4 positions agree
    assert accuracy(list("TTFF"), list("TFFF")).value == pytest.approx(0.75)
    assert accuracy([], []).value is None


def test_cohen_kappa_hand_case():
    # a = T T F F T, b = T F F F T: p_o = 4/5; a has T3 F2, b has T2 F3
    # p_e = (3*2 + 2*3) / 25 = 12/25; kappa = (0.8 - 0.48) / 0.52 = 8/13
    assert cohen_kappa(list("TTFFT"), list("TFFFT")).value == pytest.approx(8 / 13)


def test_cohen_kappa_perfect_and_undefined():
    assert cohen_kappa(list("TF"), list("TF")).value == pytest.approx(1.0)
    s = cohen_kappa(list("TTT"), list("TTT"))  # p_e = 1: undefined, not NaN
    assert s.value is None and "chance agreement" in s.reason


def test_fleiss_kappa_hand_case():
    # items [A A A], [A A B], [B B B]: P_i = 1, (4+1-3)/6 = 1/3, 1 -> P_bar = 7/9
    # p_A = 5/9, p_B = 4/9 -> P_e = 41/81; kappa = (63/81 - 41/81) / (40/81) = 22/40
    assert fleiss_kappa([list("AAA"), list("AAB"), list("BBB")]).value == pytest.approx(0.55)


def test_fleiss_kappa_wikipedia_example():
    # The textbook example (Fleiss 1971 style, as on Wikipedia): 10 items, 14 raters, 5 classes,
    # published kappa = 0.210 (P_bar = 0.378, P_e = 0.213).
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    items = [[str(j) for j, c in enumerate(row) for _ in range(c)] for row in table]
    assert fleiss_kappa(items).value == pytest.approx(0.2099, abs=5e-4)


def test_krippendorff_alpha_nominal_hand_case():
    # coder1 = A A B B A, coder2 = A B B B -, unit 5 has one value (not pairable, ignored).
    # coincidences: o_AA = 2, o_AB = o_BA = 1, o_BB = 4; n_A = 3, n_B = 5, n = 8
    # binary nominal alpha = 1 - (n - 1) * o_AB / (n_A * n_B) = 1 - 7/15 = 8/15
    m = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, np.nan]])
    assert krippendorff_alpha(m, 2).value == pytest.approx(8 / 15)


def test_krippendorff_alpha_published_example():
    # Krippendorff (2011) "Computing Krippendorff's alpha-reliability", 4 coders x 12 units,
    # nominal alpha = 0.743 (values 1..5 shifted to 0..4)
    nan = np.nan
    data = np.array([
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ]) - 1
    assert krippendorff_alpha(data, 5).value == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_alpha_one_coder_is_null_with_reason():
    s = krippendorff_alpha(np.array([[0, 1, 0]]), 2)
    assert s.value is None and "two or more annotators" in s.reason


# A tiny project worked by hand end to end (majority vote, accuracy, kappas, Fleiss, alpha):
#   task  a  b  c   majority   ICM (conf)
#   0     T  T  F   T          T 0.90
#   1     F  F  F   F          T 0.95   <- confident ICM against a unanimous crowd
#   2     T  F  T   T          T 0.70
#   3     F  T  F   F          F 0.55
VOTES = {0: "TTF", 1: "FFF", 2: "TFT", 3: "FTF"}
ICM = {0: ("T", 0.90), 1: ("T", 0.95), 2: ("T", 0.70), 3: ("F", 0.55)}


def _small_input(workers="abc") -> CompareInput:
    crowd = [CrowdLabel(t, w, v[i]) for t, v in VOTES.items() for i, w in enumerate("abc") if w in workers]
    preds = {t: Prediction(t, lab, conf) for t, (lab, conf) in ICM.items()}
    return CompareInput(predictions=preds, crowd=crowd, gold={0: "T", 1: "F", 2: "F", 3: "F"})


def test_small_project_by_hand():
    r = compare(_small_input())
    s = r.summary
    # majority vote (crowd-kit) = T F T F
    assert r.aggregates["majority_vote"].labels == {0: "T", 1: "F", 2: "T", 3: "F"}
    # ICM vs majority: T/T T/F T/T F/F -> 3/4; ICM T3 F1, majority T2 F2: p_e = 8/16 -> kappa 0.5
    assert s["accuracy_icm_vs_majority"] == pytest.approx(0.75)
    assert s["cohen_kappa_icm_vs_majority"] == pytest.approx(0.5)
    # ICM vs gold (T F F F): T/T T/F T/F F/F -> 2/4
    assert s["accuracy_icm_vs_gold"] == pytest.approx(0.5)
    # Fleiss: P_i = 1/3, 1, 1/3, 1/3 -> P_bar = 1/2; T 5 / F 7 of 12 -> P_e = 74/144 -> -2/70
    assert s["fleiss_kappa_crowd"] == pytest.approx(-2 / 70, abs=1e-6)
    # alpha: o_TT 2, o_FF 4, o_TF = o_FT = 3, n_T 5, n_F 7 -> 1 - 11*3/35 = 2/35
    assert s["krippendorff_alpha_crowd"] == pytest.approx(2 / 35, abs=1e-6)
    rows = {a["worker"]: a for a in s["annotators"]}
    assert rows["a"]["accuracy_vs_majority"] == pytest.approx(1.0)
    assert rows["b"]["accuracy_vs_majority"] == pytest.approx(0.5)
    assert rows["c"]["accuracy_vs_majority"] == pytest.approx(0.75)
    # a = T F T F vs ICM T T T F: p_o 3/4, p_e (2*3 + 2*1)/16 -> 0.5
    assert rows["a"]["cohen_kappa_vs_icm"] == pytest.approx(0.5)
    # only task 1 is a disagreement: ICM confident (0.95), crowd unanimous against it
    assert [(d.task, d.kind) for d in r.disagreements] == [(1, "icm_confident_crowd_against")]


def test_majority_ties_are_left_out_of_icm_vs_majority():
    # two workers split on task 3 -> no majority there; ICM-vs-majority uses tasks 0..2 only
    crowd = [CrowdLabel(0, "a", "T"), CrowdLabel(0, "b", "T"), CrowdLabel(1, "a", "F"), CrowdLabel(1, "b", "F"),
             CrowdLabel(2, "a", "T"), CrowdLabel(2, "b", "T"), CrowdLabel(3, "a", "T"), CrowdLabel(3, "b", "F")]
    preds = {0: Prediction(0, "T", 0.9), 1: Prediction(1, "T", 0.9), 2: Prediction(2, "T", 0.9),
             3: Prediction(3, "F", 0.9)}
    r = compare(CompareInput(predictions=preds, crowd=crowd))
    assert r.summary["n_majority_ties"] == 1
    assert r.summary["accuracy_icm_vs_majority"] == pytest.approx(2 / 3)
    kinds = {d.task: d.kind for d in r.disagreements}
    assert kinds == {1: "icm_confident_crowd_against", 3: "crowd_split_icm_confident"}
    assert not math.isnan(r.summary["krippendorff_alpha_crowd"])
