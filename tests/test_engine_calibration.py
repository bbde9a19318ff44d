"""Calibration, the review queue and the project-level checks (engine.calibration), on synthetic scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from icm_backend.engine.calibration import (ReviewConfig, accuracy_from_kappa, assess, constrained_marginals,
                                            fit_temperature, softmax_t)
from icm_backend.engine.consistency import Consistency
from icm_backend.engine.tasks import build_problem
from icm_backend.engine.types import INCONSISTENT, LOW_CONFIDENCE, UNRELIABLE
from icm_backend.errors import InputError


def classify(n):
    return build_problem([{"text": f"t{i}"} for i in range(n)], "classify", ["neg", "pos"])


def synthetic(n, acc_margin, seed=0, flip=0.1):
    """Binary log-prob rows whose margins are scaled too small (under-confident), and the truth."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    m = rng.normal(2.0, 1.0, n) * np.where(truth == 1, 1, -1)
    m[rng.random(n) < flip] *= -1
    z = np.stack([-m, m], 1) * acc_margin / 2
    return z - np.log(np.exp(z).sum(1, keepdims=True)), truth


def test_temperature_fit_recovers_a_known_scale():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (4000, 2))
    y = np.array([rng.choice(2, p=p) for p in softmax_t(logits, 1.0)])
    # Scores that are the true logits divided by 2.5 need T = 1 / 2.5.
    assert fit_temperature(logits / 2.5, y) == pytest.approx(0.4, rel=0.1)


def test_budget_flags_the_least_confident_share_and_never_a_fixed_row():
    rows, truth = synthetic(100, 0.3)
    fixed = {i: int(truth[i]) for i in range(20)}
    preds, rep = assess(classify(100), [rows], None, fixed, ReviewConfig(fraction=0.2), use_consistency=True)
    low = [p for p in preds if any(f.kind == LOW_CONFIDENCE for f in p.flags)]
    assert len(low) == math.ceil(0.2 * 80) and not any(p.fixed for p in low)
    assert max(p.confidence for p in low) <= min(p.confidence for p in preds if not p.flags and not p.fixed)
    assert all(p.fixed and p.confidence == 1.0 and not p.flags for p in preds[:20])
    # A threshold, when set, wins over the budget.
    preds, _ = assess(classify(100), [rows], None, fixed, ReviewConfig(fraction=0.2, threshold=0.99), True)
    assert all(any(f.kind == LOW_CONFIDENCE for f in p.flags) for p in preds[20:] if p.confidence < 0.99)


def test_confidence_is_the_calibrated_probability_of_the_chosen_label():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 3, (600, 2))
    truth = np.array([rng.choice(2, p=p) for p in softmax_t(logits, 1.0)])
    rows = np.log(softmax_t(logits * 0.3, 1.0))  # under-confident scores, as the LM's are
    fixed = {i: int(truth[i]) for i in range(150)}
    preds, rep = assess(classify(600), [rows], None, fixed, ReviewConfig(), use_consistency=True)
    conf = np.array([p.confidence for p in preds[150:]])
    correct = np.array([p.label == ["neg", "pos"][t] for p, t in zip(preds[150:], truth[150:])])
    assert (conf >= 0.5).all() and rep.temperature < 0.6 and "150 accepted labels" in rep.calibrated_on
    assert abs(conf.mean() - correct.mean()) < 0.05  # the raw mean confidence was far under the accuracy
    assert softmax_t(rows[150:], 1.0).max(1).mean() < correct.mean() - 0.1


def test_without_labels_the_temperature_follows_agreement_with_zero_shot():
    rows, truth = synthetic(300, 0.3, seed=2)
    zs, _ = synthetic(300, 1.0, seed=2, flip=0.25)  # an independent, weaker view of the same items
    preds, rep = assess(classify(300), [rows], zs, {}, ReviewConfig(), use_consistency=True)
    assert rep.kappa_zero_shot is not None and rep.reliable
    assert rep.mean_confidence == pytest.approx(accuracy_from_kappa(rep.kappa_zero_shot, 2), abs=0.01)


def test_a_model_at_chance_says_unsure_and_the_labelling_is_marked_unreliable():
    rng = np.random.default_rng(3)
    n = 60
    truth = rng.integers(0, 2, n)
    # Confident in-context scores that follow nothing about the items, and a zero-shot view at chance.
    z = rng.normal(0, 1, n) - 2.0
    rows = np.stack([z, -z], 1)
    rows -= np.log(np.exp(rows).sum(1, keepdims=True))
    zs = rng.normal(0, 1, (n, 2))
    zs -= np.log(np.exp(zs).sum(1, keepdims=True))
    preds, rep = assess(classify(n), [rows], zs, {}, ReviewConfig(), use_consistency=True)
    acc = np.mean([p.label == ["neg", "pos"][t] for p, t in zip(preds, truth)])
    assert not rep.reliable and "does not separate" in rep.reasons[0]
    assert all(any(f.kind == UNRELIABLE for f in p.flags) for p in preds)
    assert abs(rep.mean_confidence - acc) < 0.15 and rep.mean_confidence < 0.65
    assert softmax_t(rows, 1.0).max(1).mean() > 0.85  # what it would have said before


def test_drift_guard_brings_a_one_sided_labelling_back_to_the_marginal():
    rng = np.random.default_rng(4)
    n = 200
    truth = rng.integers(0, 2, n)
    # Soft scores that all lean "neg": argmax says "neg" for almost everything, the mean says ~30% "pos".
    m = np.where(truth == 1, 1.0, -1.0) * rng.uniform(0.2, 0.8, n) - 0.9
    rows = np.stack([-m, m], 1) / 2
    rows -= np.log(np.exp(rows).sum(1, keepdims=True))
    acc = lambda preds: np.mean([p.label == ["neg", "pos"][t] for p, t in zip(preds, truth)])
    off, rep_off = assess(classify(n), [rows], None, {}, ReviewConfig(drift_guard=False), True)
    on, rep_on = assess(classify(n), [rows], None, {}, ReviewConfig(), True)
    assert rep_on.drift > 0.15 and rep_on.drift_corrected and not rep_off.drift_corrected
    assert rep_off.label_share["pos"] < 0.15 and abs(rep_on.label_share["pos"] - rep_on.marginal["pos"]) < 0.02
    assert acc(on) > acc(off) + 0.1
    assert all(p.confidence >= 0.5 for p in on)  # label and confidence still follow one (shifted) score


def test_constrained_marginals_by_hand():
    rows = [{"question": "q", "cot": f"c{a}", "answer": a, "consistency_id": "g"} for a in ("4", "5")]
    problem = build_problem(rows, "gsm8k")
    cons = Consistency(problem)
    t, f = problem.true_index, 1 - problem.true_index
    p = np.zeros((2, 2))
    p[0, t], p[0, f] = 0.8, 0.2
    p[1, t], p[1, f] = 0.7, 0.3
    marg = constrained_marginals(cons, p, {})
    # Consistent: (T,F) .8*.3=.24, (F,T) .2*.7=.14, (F,F) .2*.3=.06; total .44.
    assert marg[0, t] == pytest.approx(0.24 / 0.44) and marg[1, t] == pytest.approx(0.14 / 0.44)
    marg = constrained_marginals(cons, p, {1: t})  # a human said row 1 is True: row 0 cannot be
    assert marg[0, t] == pytest.approx(0.0)
    preds, _ = assess(problem, [np.log(p)], None, {}, ReviewConfig(fraction=0), use_consistency=True)
    assert [x.label for x in preds] == ["True", "False"] and not any(f.kind == INCONSISTENT for x in preds for f in x.flags)


def test_bad_review_settings_name_the_field():
    with pytest.raises(InputError, match="review fraction 1.5"):
        ReviewConfig(fraction=1.5)
    with pytest.raises(InputError, match="review threshold -1"):
        ReviewConfig(threshold=-1)
    with pytest.raises(InputError, match="review defer_below 2"):
        ReviewConfig(defer_below=2)


def test_labels_picked_by_the_review_queue_do_not_set_the_temperature():
    rng = np.random.default_rng(6)
    logits = rng.normal(0, 3, (400, 2))
    truth = np.array([rng.choice(2, p=p) for p in softmax_t(logits, 1.0)])
    rows = np.log(softmax_t(logits * 0.3, 1.0))
    zs = np.log(softmax_t(logits * 0.5 + rng.normal(0, 2, (400, 2)), 1.0))  # a weaker independent view
    least = np.argsort(softmax_t(rows, 1.0).max(1))[:40]  # what a review queue hands to humans
    fixed = {int(i): int(truth[i]) for i in least}
    _, rep = assess(classify(400), [rows], zs, fixed, ReviewConfig(), use_consistency=True)
    assert "not a random sample" in rep.calibrated_on and rep.kappa_zero_shot is not None
    randomly = {int(i): int(truth[i]) for i in rng.choice(400, 40, replace=False)}
    _, rep = assess(classify(400), [rows], zs, randomly, ReviewConfig(), use_consistency=True)
    assert rep.calibrated_on == "40 accepted labels"


def test_consistency_rules_alone_do_not_make_a_labelling_confident():
    # Three different answers per question (at most one True): with a model that knows nothing, the rules
    # alone make "False" likely (3 of 4 consistent labellings have it for each row). Gold: one True each.
    rows = [{"question": f"q{g}", "cot": f"c{g}{a}", "answer": a, "consistency_id": f"g{g}"}
            for g in range(8) for a in ("1", "2", "3")]
    problem = build_problem(rows, "gsm8k")
    rng = np.random.default_rng(7)
    flat = np.log(softmax_t(rng.normal(0, 0.05, (24, 2)), 1.0))
    zs = np.log(softmax_t(rng.normal(0, 1, (24, 2)), 1.0))
    preds, rep = assess(problem, [flat], zs, {}, ReviewConfig(), use_consistency=True)
    assert not rep.reliable and rep.estimated_accuracy is not None
    assert abs(np.mean([p.confidence for p in preds]) - rep.estimated_accuracy) < 0.01
    assert all(p.confidence >= 0.5 for p in preds)


def test_an_unsure_ensemble_defers_to_the_search_own_label():
    """Where the assessed label is under 2:1 odds and the search's own (D) says otherwise, D's label is
    reported with its probability as confidence; a sure ensemble, a row the search did not label, a fixed
    row and a row tied by a consistency rule keep theirs."""
    p = np.array([0.6, 0.6, 0.9, 0.6, 0.6, 0.6, 0.3, 0.8])  # P(pos) per row
    rows = np.log(np.stack([1 - p, p], 1))
    search = np.array([0, 1, 0, -1, 0, 0, 0, 1])
    review = ReviewConfig(fraction=0.0, drift_guard=False)
    preds, rep = assess(classify(8), [rows], None, {5: 1}, review, use_consistency=True, search_labels=search)
    got = [(x.label, round(x.confidence, 3)) for x in preds]
    assert got[0] == ("neg", 0.4)  # deferred: the ensemble's pos had 0.6 < 2/3
    assert got[1] == ("pos", 0.6) and got[2] == ("pos", 0.9) and got[3] == ("pos", 0.6)  # agree / sure / no D
    assert got[4] == ("neg", 0.4) and got[5] == ("pos", 1.0) and got[6] == ("neg", 0.7)  # fixed row 5 kept
    assert rep.deferred_to_search == 2
    off, rep_off = assess(classify(8), [rows], None, {5: 1}, ReviewConfig(fraction=0.0, drift_guard=False,
                          defer_below=None), use_consistency=True, search_labels=search)
    assert off[0].label == "pos" and rep_off.deferred_to_search == 0
    # Rows tied by a consistency rule keep the joint decision (a lone change could break the rule).
    tied = build_problem([{"question": "q", "cot": f"c{a}", "answer": a, "consistency_id": "g"} for a in "12"],
                         "gsm8k")
    scores = [np.log(np.array([[0.55, 0.45]] * 2))]  # label words True, False
    plain, _ = assess(tied, scores, None, {}, review, use_consistency=True)
    assert any(x.confidence < 2 / 3 and x.label == "False" for x in plain)  # D's "True" would have been taken
    kept, rep = assess(tied, scores, None, {}, review, use_consistency=True, search_labels=np.array([0, 1]))
    assert [x.label for x in kept] == [x.label for x in plain] and rep.deferred_to_search == 0
