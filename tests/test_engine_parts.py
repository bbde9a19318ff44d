"""The engine's parts on their own: the consistency fix's acceptance rule, the score cache's
invalidation, calibration, and ICM's own value over zero-shot with a model that reads its context."""

from __future__ import annotations

import numpy as np
import pytest

from fake_scorer import FakeScorer
from icm_backend import label_rows
from icm_backend.engine.consistency import UNLABELLED
from icm_backend.engine.context import ContextPlan, ScoreCache
from icm_backend.engine.objective import calibrate_rows
from icm_backend.engine.search import ICMSearch, SearchConfig
from icm_backend.engine.tasks import build_problem


def two_answers_both_cued_true():
    # Two different final answers to one question (mutually exclusive), both cued "yes": the model
    # likes True for both, which breaks the rule. Repairing costs predictability.
    return [{"question": "q what?", "cot": f"step {n} yes so {a}", "answer": a, "consistency_id": "q"}
            for n, a in enumerate(["4", "5"])]


@pytest.mark.parametrize("alpha,repaired", [(50.0, False), (0.01, True)])
def test_consistency_fix_keeps_a_repair_only_if_u_improves(alpha, repaired):
    problem = build_problem(two_answers_both_cued_true(), "gsm8k")
    search = ICMSearch(problem, FakeScorer(strength=3.0), SearchConfig(alpha=alpha, context_tokens=200, fold_size=2),
                       seed=0)
    t = problem.true_index
    labels = np.array([t, t])
    before = search.objective(labels)
    assert before.inconsistencies == 1
    fixed, u = search.consistency_fix(labels)
    # alpha=50: every consistent option loses ~3 nats of P (x50), far more than the 1 it gains on I.
    # alpha=0.01: P barely counts, so removing the inconsistency raises U and the repair is kept.
    assert (search.consistency.count(fixed) == 0) == repaired
    assert bool((fixed != labels).any()) == repaired
    assert (u.value > before.value) == repaired


class CountingScorer(FakeScorer):
    """Records which targets it scored (by their last block), to see exactly what the cache recomputes."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.scored: list[str] = []

    def score(self, prefix, targets):
        self.scored.extend(t.split("\n\n")[-1] for t in targets)
        return super().score(prefix, targets)


def test_score_cache_rescores_exactly_the_targets_whose_context_changed():
    rows = [{"text": f"item {i} {'good' if i % 2 else 'bad'}"} for i in range(12)]
    problem = build_problem(rows, "classify", ["bad", "good"])
    scorer = CountingScorer(["bad", "good"], {"bad": "bad", "good": "good"})
    plan = ContextPlan(problem, scorer, np.random.default_rng(0), context_tokens=30, fold_size=4)
    cache = ScoreCache(plan)
    labels = np.array([i % 2 for i in range(12)])
    everyone = np.arange(12)
    cache.get(everyone, labels)
    assert len(scorer.scored) == 12
    scorer.scored.clear()
    cache.get(everyone, labels)
    assert scorer.scored == []  # nothing changed: all from the cache

    j = int(plan.label_order[0])  # the earliest-labelled example leads every other fold's prefix
    flipped = labels.copy()
    flipped[j] = 1 - flipped[j]
    expect = {problem.examples[i].prompt for i in everyone
              if j in plan.prefix_members(int(plan.fold_of[i]), labels) or j in plan.suffix_members(int(i), labels)}
    assert expect and problem.examples[j].prompt not in expect  # a target's own label is not in its context
    cache.get(everyone, flipped)
    assert sorted(scorer.scored) == sorted(expect)
    scorer.scored.clear()
    cache.get(everyone, labels)  # a rejected proposal: back to the old labels costs nothing
    assert scorer.scored == []

    partial = labels.copy()
    partial[j] = UNLABELLED  # an example leaving D is no longer anyone's context
    prefixes = {f: plan.prefix_members(f, partial) for f in range(plan.n_folds)}
    assert all(j not in p for p in prefixes.values())


def test_calibrate_rows_divides_by_the_shared_context_marginal():
    rows = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]]))
    out = np.exp(calibrate_rows(rows, np.array([0, 0, 1])))
    # context 0: marginal (0.75, 0.25); 0.9/0.75 : 0.1/0.25 = 1.2 : 0.4 -> 0.75 ; 0.8 : 1.6 -> 1/3
    np.testing.assert_allclose(out[0], [0.75, 0.25], atol=1e-9)
    np.testing.assert_allclose(out[1], [1 / 3, 2 / 3], atol=1e-9)
    np.testing.assert_allclose(out[2], [0.5, 0.5], atol=1e-9)  # alone in its context: its own marginal
    same = np.log(np.array([[0.8, 0.2]] * 4))
    np.testing.assert_allclose(np.exp(calibrate_rows(same, np.zeros(4, dtype=int))), 0.5)  # no signal -> flat


class ContextReader(FakeScorer):
    """A model that needs its context. Alone it knows nothing (it leans "bad" on every item). Shown
    labelled examples, it follows the cue words only as far as the examples' labels agree with their
    cues: labels that follow the items teach it, random or inverted labels teach it nothing."""

    def score(self, prefix, targets):
        self.calls += 1
        out = []
        for t in targets:
            shots = [b for b in (prefix + t).split("\n\n")[:-1] if b.strip()]
            logits = np.zeros(len(self.label_words))
            logits[0] += 0.6
            if shots:  # "Text: item 3 good\nLabel: good": does the label repeat the item's cue word?
                agree = np.mean([b.split()[-1] == b.split("\n")[0].split()[-1] for b in shots])
                logits[self._truth(t)] += self.strength * max(0.0, 2 * agree - 1)
            out.append(logits - np.log(np.exp(logits).sum()))
        return np.array(out)


def test_icm_beats_zero_shot_and_random_labels_when_the_model_reads_its_context():
    rows = [{"text": f"item {i} {'good' if i % 3 else 'bad'}"} for i in range(24)]
    truth = ["good" if i % 3 else "bad" for i in range(24)]

    def accuracy(method, seed):
        preds = label_rows(rows, task="classify", labels=["bad", "good"], method=method, seed=seed,
                           model=ContextReader(["bad", "good"], {"bad": "bad", "good": "good"}, strength=3.0),
                           config=SearchConfig(context_tokens=40, fold_size=6))
        return np.mean([p.label == y for p, y in zip(preds, truth)])

    seeds = range(5)
    zero_shot = np.mean([accuracy("zero-shot", s) for s in seeds])
    random_labels = np.mean([accuracy("random-fewshot", s) for s in seeds])
    icm = np.mean([accuracy("icm", s) for s in seeds])
    assert zero_shot == pytest.approx(1 / 3)  # everything "bad"
    # ICM is a stochastic search (measured: 4 of 5 seeds find the labelling, one stays at "all bad").
    assert icm >= 0.8 and icm >= random_labels + 0.2, (icm, random_labels)
