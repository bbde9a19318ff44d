"""Engine mechanics with a fake scorer: presets, consistency, search, checkpoints, baselines."""

import json

import numpy as np
import pytest

from fake_scorer import FakeScorer
from icm_backend.engine.consistency import UNLABELLED, Consistency
from icm_backend.errors import InputError
from icm_backend.engine.labeler import label_rows
from icm_backend.engine.search import ICMSearch, SearchConfig
from icm_backend.engine.tasks import build_problem, gold_label


def gsm_rows():
    # Two questions; within each, claims with the same final answer must agree, different ones exclude.
    rows = []
    for q, answers in (("q1", ["4", "4", "5"]), ("q2", ["7", "8", "8"])):
        for n, a in enumerate(answers):
            truth = "yes" if (q, a) in (("q1", "4"), ("q2", "8")) else "no"
            rows.append({"question": f"{q} what?", "cot": f"step {n} {truth} so {a}", "answer": a,
                         "consistency_id": q})
    return rows


def test_relations_come_from_data_fields():
    problem = build_problem(gsm_rows(), "gsm8k")
    cons = Consistency(problem)
    assert cons.relation(0, 1) == "same" and cons.relation(0, 2) == "exclusive"
    assert cons.relation(0, 3) is None  # other question
    # all consistent joint labellings, including (False, False) for different answers
    t, f = problem.true_index, 1 - problem.true_index
    assert sorted(cons.consistent_options(0, 2)) == sorted([(t, f), (f, t), (f, f)])
    labels = np.array([t, t, t, f, f, f])
    assert cons.violations(labels) == [(0, 2), (1, 2)]


def test_comparison_pairs_are_linked_and_opposite():
    rows = [{"question": "q", "choice": "A", "choice_2": "B", "consistency_id": "0"},
            {"question": "q", "choice": "B", "choice_2": "A", "consistency_id": "0"}]
    problem = build_problem(rows, "comparison")
    assert problem.examples[0].partner == 1 and problem.examples[1].partner == 0
    cons = Consistency(problem)
    assert cons.count(np.array([0, 0])) == 1 and cons.count(np.array([0, 1])) == 0


@pytest.mark.parametrize("rows,task,labels,message", [
    ([{"text": "x"}], "nope", None, "unknown preset"),
    ([{"question": "q", "choice": "c"}], "claims", ["a", "b"], "takes no labels"),
    ([{"text": "x"}], "classify", None, "needs --labels"),
    ([{"question": "q"}], "claims", None, "missing field 'choice'"),
    ([{"question": "q", "choice": "c", "consistency_id": 1}, {"question": "q", "choice": "c", "consistency_id": 1}],
     "claims", None, "duplicate consistency key"),
    ([{"text": "x"}], "classify", ["a", "a"], "distinct"),
])
def test_bad_input_names_the_problem(rows, task, labels, message):
    with pytest.raises(InputError, match=message):
        build_problem(rows, task, labels)


def test_gold_normalisation():
    problem = build_problem([{"text": "x"}], "classify", ["negative", "positive"])
    assert gold_label("1", problem) == "positive" and gold_label(0, problem) == "negative"
    claims = build_problem([{"question": "q", "choice": "c"}], "claims")
    assert gold_label(True, claims) == "True" and gold_label("0", claims) == "False"


def test_icm_finds_the_consistent_labelling():
    rows = gsm_rows()
    preds = label_rows(rows, task="gsm8k", method="icm", model=FakeScorer(), seed=1,
                       config=SearchConfig(context_tokens=200, fold_size=3))
    got = [p.label for p in preds]
    assert got == ["True", "True", "False", "False", "True", "True"]
    assert all(0.5 < p.confidence <= 1 for p in preds)
    assert not any(f.kind == "inconsistent" for p in preds for f in p.flags)


def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path):
    rows = [{"text": f"item {i} {'good' if i % 3 else 'bad'}"} for i in range(30)]
    scorer = FakeScorer(["bad", "good"], {"bad": "bad", "good": "good"})
    cfg = SearchConfig(context_tokens=60, fold_size=10, checkpoint_every_s=0.0)
    full = label_rows(rows, task="classify", labels=["bad", "good"], method="icm", model=scorer, seed=3, config=cfg,
                      checkpoint=tmp_path / "a.json")
    # Crash a second run at iteration 25 (the checkpoint holds iteration 24), then resume it.
    ck = tmp_path / "b.json"

    def crash(done, total, message):
        if message.startswith("iteration 25,"):
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        label_rows(rows, task="classify", labels=["bad", "good"], method="icm", model=scorer, seed=3, config=cfg, checkpoint=ck,
                   progress=crash)
    state = json.loads(ck.read_text())
    assert state["iteration"] == 24 and not state["done"]
    resumed = label_rows(rows, task="classify", labels=["bad", "good"], method="icm", model=scorer, seed=3, config=cfg, checkpoint=ck)
    assert [p.label for p in resumed] == [p.label for p in full]
    assert [p.label for p in full] == ["good" if i % 3 else "bad" for i in range(30)]


def test_checkpoint_of_another_run_is_refused(tmp_path):
    rows = [{"text": f"item {i} good"} for i in range(6)]
    cfg = SearchConfig(context_tokens=40, fold_size=3)
    ck = tmp_path / "c.json"
    label_rows(rows, task="classify", labels=["bad", "good"], method="icm", model=FakeScorer(["bad", "good"], {"bad": "bad", "good": "good"}),
               seed=0, config=cfg, checkpoint=ck)
    with pytest.raises(InputError, match="different run"):
        label_rows(rows, task="classify", labels=["bad", "good"], method="icm",
                   model=FakeScorer(["bad", "good"], {"bad": "bad", "good": "good"}), seed=1, config=cfg, checkpoint=ck)


@pytest.mark.parametrize("method", ["zero-shot", "random-fewshot", "bootstrap", "gold-fewshot"])
def test_baselines_share_the_code_path(method):
    rows = gsm_rows()
    gold = ["True", "True", "False", "False", "True", "True"]
    preds = label_rows(rows, task="gsm8k", method=method, model=FakeScorer(), seed=0, gold=gold,
                       config=SearchConfig(context_tokens=200, fold_size=3))
    assert [p.index for p in preds] == list(range(6))
    assert [p.label for p in preds] == gold  # the fake model is right on every item


def test_low_confidence_is_flagged():
    rows = [{"text": f"item {i}"} for i in range(4)]  # no cue word: the fake model is unsure
    scorer = FakeScorer(["bad", "good"], {"bad": "bad", "good": "good"}, strength=0.1)
    preds = label_rows(rows, task="classify", labels=["bad", "good"], method="zero-shot", model=scorer, review_threshold=0.9)
    assert all(any(f.kind == "low_confidence" for f in p.flags) for p in preds)


def test_fixed_rows_are_kept_in_context_and_never_flipped():
    # The fake model says "no" (False) for these claims; humans said True for rows 0 and 4.
    rows = gsm_rows()
    # alpha low enough that one inconsistency outweighs the fake model's preference for one row.
    cfg = SearchConfig(context_tokens=200, fold_size=3, alpha=0.5)
    problem = build_problem(rows, "gsm8k")
    fixed = {0: "False", 4: "False"}  # against the model: the search must keep them anyway
    search = ICMSearch(problem, FakeScorer(), cfg, seed=1, fixed=fixed)
    t, f = problem.true_index, 1 - problem.true_index
    state = search.run()
    assert state.labels[0] == f and state.labels[4] == f
    # ConsistencyFix takes them as given: row 1 shares row 0's answer, row 5 shares row 4's.
    assert state.labels[1] == f and state.labels[5] == f
    assert search.consistency.count(np.array(state.labels)) == 0
    # Fixed rows lead the context (in sweeps they alternate with the search's labels, human first)
    # and are never sampled for a proposal.
    assert set(search.plan.label_order[0:4:2]) == {0, 4}
    assert set(ICMSearch(problem, FakeScorer(), cfg, seed=1, fixed=fixed).initial_state().label_order[:2]) == {0, 4}
    assert all(search.sample(np.array(state.labels)) not in (0, 4) for _ in range(50))
    preds = label_rows(rows, task="gsm8k", method="icm", model=FakeScorer(), seed=1, config=cfg, fixed=fixed)
    assert [p.label for p in preds][:2] == ["False", "False"] and preds[0].fixed and preds[0].confidence == 1.0
    assert not preds[0].flags and not preds[2].fixed
    # Baselines take them too.
    for method in ("zero-shot", "random-fewshot", "bootstrap"):
        got = label_rows(rows, task="gsm8k", method=method, model=FakeScorer(), seed=0, config=cfg, fixed=fixed)
        assert got[0].label == "False" and got[4].label == "False", method


def test_fixed_labels_change_the_search_fingerprint_and_bad_ones_are_named(tmp_path):
    rows = [{"text": f"item {i} {'good' if i % 2 else 'bad'}"} for i in range(8)]
    kw = dict(task="classify", labels=["bad", "good"], method="icm", seed=0,
              config=SearchConfig(context_tokens=40, fold_size=4))
    ck = tmp_path / "ck.json"
    label_rows(rows, model=FakeScorer(["bad", "good"], {"bad": "bad", "good": "good"}), checkpoint=ck, **kw)
    with pytest.raises(InputError, match="different run"):
        label_rows(rows, model=FakeScorer(["bad", "good"], {"bad": "bad", "good": "good"}), checkpoint=ck,
                   fixed={1: "good"}, **kw)
    for bad, msg in (({9: "good"}, "row 9 is outside"), ({1: "great"}, "row 1 has label 'great'")):
        with pytest.raises(InputError, match=msg):
            label_rows(rows, model=FakeScorer(["bad", "good"], {"bad": "bad", "good": "good"}), fixed=bad, **kw)
    # A class index is accepted for classify, as the CLI's gold columns often hold 0/1.
    preds = label_rows(rows, model=FakeScorer(["bad", "good"], {"bad": "bad", "good": "good"}), fixed={2: 1}, **kw)
    assert preds[2].label == "good" and preds[2].fixed
