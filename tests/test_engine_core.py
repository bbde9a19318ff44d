"""ICM on a core, one pass for the rest (engine.core, label_rows' big-project path), on fake models."""

from __future__ import annotations

import numpy as np
import pytest

from icm_backend.engine.calibration import ensemble, softmax_t
from icm_backend.engine.core import chunk_rest, draw_core, groups_of
from icm_backend.engine.labeler import label_rows
from icm_backend.engine.search import SearchConfig
from icm_backend.engine.tasks import build_problem
from icm_backend.engine.types import CoreOrigin


class ContextReader:
    """Prefers the class its target's text names, and leans towards the labels its context holds: a
    row's score depends on the prefix, so a wrong context would show in the labels."""

    model_id = "context-reader@0"

    def __init__(self):
        self.calls: list[tuple[str, list[str]]] = []
        self.set_labels(["True", "False"])

    def set_labels(self, words):
        self.label_words = list(words)

    def count_tokens(self, text):
        return len(text.split())

    def row(self, prefix: str, target: str) -> np.ndarray:
        words = target.split()
        logits = np.array([1.2 * ("yes" in words) + 0.2 * ("maybe" in words),
                           1.2 * ("no" in words) + 0.1 * ("maybe" in words)], dtype=float)
        logits += 0.05 * np.array([prefix.count(" True\n"), prefix.count(" False\n")])
        return logits - np.log(np.exp(logits).sum())

    def score(self, prefix, targets):
        self.calls.append((prefix, list(targets)))
        return np.array([self.row(prefix, t) for t in targets]).reshape(len(targets), 2)


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    cue = rng.choice(["yes", "no", "maybe"], size=n, p=[0.45, 0.45, 0.1])
    return [{"question": f"is item {i} fine?", "choice": f"item {i} says {c}"} for i, c in enumerate(cue)]


CFG = dict(max_iters=60, core_size=24, chunk_size=16, context_tokens=120)


def test_one_pass_labels_equal_each_row_scored_in_the_cores_context(tmp_path):
    rows = _rows(90)
    model = ContextReader()
    preds = label_rows(rows, task="claims", model=model, seed=3, config=SearchConfig(**CFG))
    assert [p.index for p in preds] == list(range(90))
    problem = build_problem(rows, "claims")
    core = set(draw_core(problem, set(), CFG["core_size"], 3))
    assert len(core) == 24
    # The prefixes the one-pass phase used: the non-empty prefixes scored together with non-core targets.
    prompts = {ex.prompt: ex.index for ex in problem.examples}
    prefixes = []
    for prefix, targets in model.calls:
        if prefix and any(prompts.get(t) not in core for t in targets if t in prompts) and prefix not in prefixes:
            prefixes.append(prefix)
    assert len(prefixes) == 3  # the search's final context and 2 resamples (ReviewConfig.resamples)
    t = preds.assessment.temperature
    for i in sorted(set(range(90)) - core):
        direct = ensemble([model.row(p, problem.examples[i].prompt)[None, :] for p in prefixes])
        probs = softmax_t(direct, t)[0]
        y = int(probs.argmax())
        assert preds[i].label == problem.label_words[y], i
        assert preds[i].confidence == pytest.approx(probs[y], abs=1e-5), i


def test_chunks_do_not_change_labels_and_a_resume_skips_what_was_handed_over(tmp_path):
    rows = _rows(80, seed=1)
    a = label_rows(rows, task="claims", model=ContextReader(), seed=0, config=SearchConfig(**CFG))
    got: list[list] = []
    ckpt = tmp_path / "run.ckpt.json"

    class Crash(Exception):
        pass

    def take(chunk):
        got.append(chunk)
        if len(got) == 2:
            raise Crash

    with pytest.raises(Crash):
        label_rows(rows, task="claims", model=ContextReader(), seed=0, config=SearchConfig(**CFG),
                   checkpoint=ckpt, on_chunk=take)
    first = {p.index for p in got[0]}
    resumed: list[list] = []
    b = label_rows(rows, task="claims", model=ContextReader(), seed=0, config=SearchConfig(**CFG),
                   checkpoint=ckpt, on_chunk=resumed.append)
    # chunk 0 (core + first chunk) was handed over before the crash: not again; the crashed chunk is redone
    assert not first & {p.index for c in resumed for p in c}
    every = [p for c in [got[0]] + resumed for p in c]
    assert sorted(p.index for p in every) == list(range(80))
    assert {p.index: (p.label, p.confidence) for p in every} == {p.index: (p.label, p.confidence) for p in a}
    assert len(b) == 80 - len(first)


def test_core_keeps_groups_whole_and_human_labels_in_it():
    rows = [{"question": f"q{i // 3}", "choice": f"answer {i} yes", "consistency_id": f"g{i // 3}"}
            for i in range(60)]
    problem = build_problem(rows, "claims")
    core = draw_core(problem, {40}, 12, seed=0)
    assert {39, 40, 41} <= set(core)
    for g in groups_of(problem):
        assert set(g) <= set(core) or not set(g) & set(core)
    rest = [i for i in range(60) if i not in set(core)]
    chunks = chunk_rest(problem, rest, 7, seed=0)
    assert sorted(i for c in chunks for i in c) == rest
    for g in groups_of(problem):
        assert sum(bool(set(g) & set(c)) for c in chunks) <= 1


def test_a_cores_search_gets_the_reference_budget_and_a_small_projects_keeps_20_per_row(monkeypatch):
    import icm_backend.engine.core as core_mod
    import icm_backend.engine.labeler as labeler_mod
    budgets = []
    for mod in (core_mod, labeler_mod):
        real = mod.ICMSearch

        class Spy(real):
            def run(self, progress=None):
                budgets.append((self.n_free, self.max_iters))
                return super().run(progress)
        monkeypatch.setattr(mod, "ICMSearch", Spy)
    cfg = {**CFG, "max_iters": None, "patience": 2}
    label_rows(_rows(60), task="claims", model=ContextReader(), seed=0, config=SearchConfig(**cfg))
    label_rows(_rows(20), task="claims", model=ContextReader(), seed=0, config=SearchConfig(**cfg))
    # the core (24 free rows): 12 per row; the whole-set search of a 20-row project: 20 per row
    assert budgets == [(24, 12 * 24), (20, 20 * 20)]
    budgets.clear()
    label_rows(_rows(60), task="claims", model=ContextReader(), seed=0, config=SearchConfig(**{**cfg, "max_iters": 7}))
    assert budgets == [(24, 7)]  # an explicit cap (ICM_MAX_ITERS, --max-iters) wins


def test_small_project_runs_the_search_on_every_row():
    rows = _rows(20)
    model = ContextReader()
    chunks = []
    preds = label_rows(rows, task="claims", model=model, seed=0, config=SearchConfig(**CFG), on_chunk=chunks.append)
    assert len(chunks) == 1 and len(chunks[0]) == 20 and len(preds) == 20
    assert "fitted on" not in preds.assessment.calibrated_on


def test_a_relabel_reuses_the_core_with_no_search_when_no_human_label_contradicts_it(monkeypatch):
    rows = _rows(90)
    first = label_rows(rows, task="claims", model=ContextReader(), seed=3, config=SearchConfig(**CFG))
    assert first.core_origin == CoreOrigin(CoreOrigin.SEARCHED, 24) and len(first.core) == 24
    outside = [i for i in range(90) if i not in first.core][:5]
    agree = next(i for i in first.core)
    fixed = {**{i: first[i].label for i in outside}, agree: first.core[agree]}  # reviewed: agrees with the core

    def no_search(self, progress=None):
        raise AssertionError("the search ran on a relabel that could reuse the core")
    monkeypatch.setattr("icm_backend.engine.search.ICMSearch.run", no_search)
    model = ContextReader()
    again = label_rows(rows, task="claims", model=model, seed=3, config=SearchConfig(**CFG), fixed=fixed,
                       core=first.core)
    assert again.core_origin == CoreOrigin(CoreOrigin.REUSED, 29, 6), again.core_origin
    assert {i: again.core[i] for i in first.core} == first.core  # the core's labels as they were
    assert set(again.core) == set(first.core) | set(outside)  # the human-labelled rows joined it
    assert all(again[i].fixed and again[i].label == y for i, y in fixed.items())
    assert sorted(p.index for p in again) == list(range(90))
    # the one pass read the other rows after prefixes holding the core's labels and the human ones
    assert any(f"{rows[outside[0]]['choice']}" in prefix for prefix, _ in model.calls)


def test_a_human_label_that_contradicts_the_core_takes_its_place_with_no_search(monkeypatch):
    rows = _rows(90)
    first = label_rows(rows, task="claims", model=ContextReader(), seed=3, config=SearchConfig(**CFG))
    row, word = next(iter(first.core.items()))
    other = next(w for w in ("True", "False") if w != word)

    def no_search(self, progress=None):
        raise AssertionError("a relabel searched the core again")
    monkeypatch.setattr("icm_backend.engine.search.ICMSearch.run", no_search)
    again = label_rows(rows, task="claims", model=ContextReader(), seed=3, config=SearchConfig(**CFG),
                       fixed={row: other}, core=first.core)
    origin = again.core_origin
    assert origin.how == CoreOrigin.REUSED and origin.human == 1, origin
    assert origin.why == f"1 human label(s) in place of the core's (rows {row})", origin
    assert "1 human label(s) in place of the core's" in origin.text()
    assert again.core[row] == other and again[row].fixed and again[row].label == other


def test_a_core_group_with_an_unlabelled_row_makes_a_relabel_search_again():
    rows = [{**r, "consistency_id": f"q{i // 3}"} for i, r in enumerate(_rows(90))]  # groups of 3
    first = label_rows(rows, task="claims", model=ContextReader(), seed=3, config=SearchConfig(**CFG))
    problem = build_problem(rows, "claims")
    grouped = next(g for g in groups_of(problem, sorted(first.core)) if len(g) > 1)
    prior = {i: y for i, y in first.core.items() if i != grouped[0]}  # e.g. a task added to a core group
    again = label_rows(rows, task="claims", model=ContextReader(), seed=3, config=SearchConfig(**CFG), core=prior)
    origin = again.core_origin
    assert origin.how == CoreOrigin.SEARCHED_AGAIN, origin
    assert origin.why == "1 row(s) of the previous core's groups have no label", origin


def test_a_core_naming_a_row_outside_the_input_is_a_clear_error():
    from icm_backend.errors import InputError

    with pytest.raises(InputError, match=r"core: row 500 is outside the input"):
        label_rows(_rows(40), task="claims", model=ContextReader(), seed=0, config=SearchConfig(**CFG),
                   core={500: "True"})
