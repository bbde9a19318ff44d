"""The library entry point: label rows with ICM or a baseline, through one code path.

    from icm_backend.engine.labeler import label_rows
    preds = label_rows(rows, task="classify", labels=["negative", "positive"], method="icm")
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from icm_backend.engine.consistency import UNLABELLED, Consistency
from icm_backend.engine.context import ContextPlan, ScoreCache
from icm_backend.errors import InputError
from icm_backend.engine.model import LoadedLM, load_lm
from icm_backend.engine.objective import calibrate_rows
from icm_backend.engine.scorer import TransformersScorer
from icm_backend.engine.search import ICMSearch, SearchConfig, fixed_indices
from icm_backend.engine.tasks import Problem, build_problem, gold_label
from icm_backend.engine.calibration import Assessment, Calibration, ReviewConfig, assess
from icm_backend.engine.calibration import apply as apply_calibration, fit as fit_assessment
from icm_backend.engine.consistency import RELATION_TEXT
from icm_backend.engine.core import CoreState, chunk_rest, core_prefix, draw_core, one_pass_scores, pmi
from icm_backend.engine.types import INCONSISTENT, LOW_CONFIDENCE, Flag, Labelling, Prediction

log = logging.getLogger(__name__)

METHODS = ("icm", "zero-shot", "random-fewshot", "bootstrap", "gold-fewshot")
CLI_METHODS = METHODS[:4]  # gold few-shot needs gold labels: evaluation only
DEFAULT_REVIEW_THRESHOLD = None  # no threshold: flag by the review budget (DEFAULT_REVIEW_FRACTION) instead
DEFAULT_REVIEW_FRACTION = 0.2


def make_scorer(model, label_words: list[str], quantize: str = "auto", dtype: str = "auto"):
    """A scorer for `model`: a name/path, a LoadedLM, or an object that already is a scorer."""
    if hasattr(model, "score") and hasattr(model, "set_labels"):
        model.set_labels(label_words)
        return model
    lm = model if isinstance(model, LoadedLM) else load_lm(model, quantize=quantize, dtype=dtype)
    return TransformersScorer(lm, label_words)


def label_rows(rows: list[dict], *, task: str, labels: list[str] | None = None, method: str = "icm",
               model=None, seed: int = 0, checkpoint: str | Path | None = None,
               progress: Callable[[int, int, str], None] | None = None, config: SearchConfig | None = None,
               gold: list | None = None, review_threshold: float | None = DEFAULT_REVIEW_THRESHOLD,
               quantize: str = "auto", dtype: str = "auto", fixed: dict | None = None,
               review_fraction: float | None = DEFAULT_REVIEW_FRACTION,
               review: ReviewConfig | None = None,
               on_chunk: Callable[[list[Prediction]], None] | None = None) -> Labelling:
    """Label `rows` without human labels; one Prediction per row, in input order.

    rows: dicts with the fields the `task` preset reads (e.g. {"text": ...} for "classify"; see
        tasks.PRESETS). Other fields, gold labels included, are never read.
    task, labels: the preset and, for "classify", its label words.
    method: "icm" (the search), or a baseline: "zero-shot", "random-fewshot", "bootstrap",
        "gold-fewshot" (needs `gold`; evaluation only).
    model: a model name/path for load_lm, a LoadedLM, or a ready scorer (anything with score and
        set_labels, e.g. a remote server's). Default: the embedded gemma3-270m.
    checkpoint: a JSON file the ICM search saves to and resumes from.
    progress: called as progress(done, total, message) during the search.
    config: search settings (alpha, temperatures, iteration cap, context budget).
    fixed: human labels, {row index: label word} (for classify also a class index; for claims also
        True/False/1/0). Fixed rows are members of D from the start: always eligible as in-context
        examples, never proposed or flipped, taken as given by ConsistencyFix, and returned as given
        (confidence 1, fixed=True, never flagged). Baselines use them too (in context / as given).

    A project with more than `config.core_size` free rows is labelled by ICM on a random core of that
    size and one pass over the rest in the core's context (engine.core); `on_chunk`, if given, receives
    each finished chunk's Predictions as soon as it is labelled (the core and the first chunk together,
    then each later chunk). With a checkpoint, chunks handed to `on_chunk` before a crash are skipped on
    resume (the caller has them) and are missing from the returned list.

    review_threshold / review_fraction: which rows get a low-confidence flag: those under the
        threshold if one is given, else that share of the rows, least confident first. `review` (a
        ReviewConfig) sets these and the calibration settings at once and wins over both.

    ICM maximises U(D) = alpha * P(D) - I(D), with P the sum over examples of log p(y_i | x_i, D - i)
    (mutual predictability) and I the count of logical inconsistencies, by simulated annealing.
    The result is then calibrated (engine.calibration.assess): a Prediction's label is the most likely
    one under the calibrated scores (consistency rules applied jointly), its confidence is that label's
    probability (>= 1/K), and its flags name consistency violations, low confidence (review budget or
    threshold), and a labelling judged unreliable. The returned list's `.assessment` holds the
    project-level facts (temperature and what it was fitted on, estimated accuracy, label share vs
    calibrated marginal, reliability and why).
    """
    if method not in METHODS:
        raise InputError(f"--method {method}: choose one of {', '.join(CLI_METHODS)}")
    problem = build_problem(rows, task, labels)
    scorer = make_scorer(model, problem.label_words, quantize, dtype)
    config = config or SearchConfig()
    window = getattr(scorer, "context_window", None)
    log.info("labelling %d rows: task=%s method=%s labels=%s model=%s seed=%d", len(rows), task, method,
             ",".join(problem.label_words), scorer.model_id, seed)
    if review is None:
        review = ReviewConfig(fraction=review_fraction, threshold=review_threshold)
    fixed_idx = fixed_indices(problem, fixed)
    if method == "icm" and config.core_size and len(problem.examples) - len(fixed_idx) > config.core_size:
        return label_with_core(rows, problem, scorer, config, seed, checkpoint, progress, fixed_idx, review,
                               window, on_chunk)
    holder: dict = {}
    labels_out, rows_out = run_method(problem, scorer, method, seed, config, checkpoint, progress, gold, window,
                                      fixed=fixed, holder=holder)
    score_rows, zero_shot = [rows_out], None
    search = holder.get("search")
    if method == "icm" and search is not None and review.resamples > 0:
        score_rows += search.resampled_rows(labels_out, review.resamples, seed)
    if method != "zero-shot":
        zero_shot = zero_shot_rows(problem, scorer)
    preds, assessment = assess(problem, score_rows, zero_shot, fixed_idx, review,
                               use_consistency=method in ("icm", "bootstrap"))
    log.info("labelling assessed: %s", assessment.summary())
    out = Labelling(preds)
    out.assessment = assessment
    if on_chunk is not None:
        on_chunk(list(out))
    return out


def _remap(preds: list[Prediction], rows: list[int]) -> list[Prediction]:
    """Predictions of a sub-problem (indices into `rows`) as predictions of the whole input."""
    out = []
    for p in preds:
        i = rows[p.index]
        flags = []
        for f in p.flags:
            if f.kind == INCONSISTENT:
                others = tuple(rows[j] for j in f.rows)
                reason = "; ".join(f"rows {i} and {j} {RELATION_TEXT.get(rel, 'conflict')}"
                                   for j, rel in zip(others, f.relations))
                f = Flag(f.kind, others, reason, f.relations)
            flags.append(f)
        out.append(Prediction(index=i, label=p.label, confidence=p.confidence, flags=flags, fixed=p.fixed))
    return out


def _sub_problem(problem: Problem, rows: list[dict], idx: list[int]) -> Problem:
    return build_problem([rows[i] for i in idx], problem.task,
                         problem.label_words if problem.task == "classify" else None)


def label_with_core(rows: list[dict], problem: Problem, scorer, config: SearchConfig, seed: int, checkpoint,
                    progress, fixed: dict[int, int], review: ReviewConfig, window, on_chunk) -> Labelling:
    """ICM on a core, one pass for the rest (engine.core has the method and its cost)."""
    n = len(problem.examples)
    core = draw_core(problem, set(fixed), config.core_size, seed)
    core_problem = _sub_problem(problem, rows, core)
    core_fixed = {k: problem.label_words[fixed[i]] for k, i in enumerate(core) if i in fixed}
    log.info("ICM on a core of %d rows (%d human labels), then one pass over the other %d", len(core),
             len(core_fixed), n - len(core))
    search = ICMSearch(core_problem, scorer, config, seed, checkpoint, "icm", max_window=window, fixed=core_fixed)
    state = search.run(progress)
    core_labels = np.array(state.labels)
    # The one-pass contexts: the search's final order and the same resampled orders the core is assessed with.
    rng = np.random.default_rng([seed, 104729])
    orders = [list(search.plan.label_order)] + [search.context_order(rng) for _ in range(review.resamples)]
    labels_of = {core[k]: int(y) for k, y in enumerate(core_labels)}
    tokens_of = {core[k]: int(t) for k, t in enumerate(search.plan.block_tokens)}
    prefixes = [core_prefix(problem, [core[k] for k in o], labels_of, tokens_of, search.plan.context_tokens)
                for o in orders]
    in_core = set(core)
    chunks = chunk_rest(problem, [i for i in range(n) if i not in in_core], config.chunk_size, seed)
    side = Path(str(checkpoint) + ".core.json") if checkpoint else None
    h = hashlib.sha256(json.dumps([search.fingerprint, n, config.chunk_size, review.resamples]).encode())
    for ex in problem.examples:
        h.update(ex.prompt.encode())
    cstate = CoreState.load(side, h.hexdigest()[:16])
    resume = on_chunk is not None  # only a caller that kept the chunks it was handed may skip them
    out: list[Prediction] = []
    done = len(core)

    def report(k: int) -> None:
        if progress:
            progress(done, n, f"one pass over the rest: chunk {k + 1}/{len(chunks)}, {done}/{n} rows labelled")

    def chunk_rows(idx: list[int]) -> list[np.ndarray]:
        got = one_pass_scores(problem, scorer, prefixes, idx)
        if problem.multiclass:
            got = [pmi(r, m) for r, m in zip(got, cstate.marginals)]
        return got

    # The fit: the core as assessed for a small project, plus the first chunk, scored as every later one.
    first = chunks[0] if chunks else []
    if not (resume and 0 in cstate.done_chunks and cstate.calibration):
        core_rows = [search.final_rows(core_labels)] + search.resampled_rows(core_labels, review.resamples, seed)
        raw = one_pass_scores(problem, scorer, prefixes + [""], first)
        cstate.marginals = [np.exp(r).mean(axis=0).tolist() for r in raw]
        if problem.multiclass:
            raw = [pmi(r, m) for r, m in zip(raw, cstate.marginals)]
        zero = np.concatenate([zero_shot_rows(core_problem, scorer), raw[-1]])
        fit_idx = core + first
        fit_problem = _sub_problem(problem, rows, fit_idx)
        fit_fixed = {k: fixed[i] for k, i in enumerate(fit_idx) if i in fixed}
        score_rows = [np.concatenate([c, r]) for c, r in zip(core_rows, raw[:-1])]
        preds, assessment, calib = fit_assessment(fit_problem, score_rows, zero, fit_fixed, review,
                                                  use_consistency=True)
        cstate.calibration, cstate.assessment = calib.to_json(), assessment.to_json()
        preds = _remap(preds, fit_idx)
        done += len(first)
        report(0)
        if on_chunk is not None:
            on_chunk(preds)
        out += preds
        cstate.done_chunks = [0]
        cstate.save(side)
    else:
        done += len(first)
    calib = Calibration.from_json(cstate.calibration)
    for k, idx in enumerate(chunks[1:], start=1):
        if resume and k in cstate.done_chunks:
            done += len(idx)
            continue
        preds = _remap(apply_calibration(calib, _sub_problem(problem, rows, idx), chunk_rows(idx), True), idx)
        done += len(idx)
        report(k)
        if on_chunk is not None:
            on_chunk(preds)
        out += preds
        cstate.done_chunks.append(k)
        cstate.save(side)
    out.sort(key=lambda p: p.index)
    result = Labelling(out)
    result.assessment = _whole(Assessment(**cstate.assessment), out, problem, len(core) + len(first))
    log.info("labelling assessed (fitted on the core and the first chunk, %d rows): %s",
             len(core) + len(first), result.assessment.summary())
    return result


def _whole(fitted: Assessment, preds: list[Prediction], problem: Problem, fitted_on: int) -> Assessment:
    """The fitted Assessment with the counts of the whole labelling (what a user reads per project)."""
    free = [p for p in preds if not p.fixed]
    words = problem.label_words
    if free:
        fitted.label_share = {w: round(sum(p.label == w for p in free) / len(free), 4) for w in words}
        fitted.mean_confidence = round(float(np.mean([p.confidence for p in free])), 4)
    fitted.flagged = sum(1 for p in preds if p.flags)
    fitted.calibrated_on += f"; fitted on {fitted_on} of {len(problem.examples)} rows (the core and a random chunk)"
    fitted.n = len(problem.examples)
    return fitted


def _clamp(labels: np.ndarray, fixed: dict[int, int] | None) -> np.ndarray:
    labels = np.array(labels)
    for i, y in (fixed or {}).items():
        labels[i] = y
    return labels


def run_method(problem: Problem, scorer, method: str, seed: int, config: SearchConfig, checkpoint=None,
               progress=None, gold=None, window=None, fixed: dict | None = None,
               holder: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(label index per example, final normalised log-prob rows). `fixed`: row -> label word, as label_rows.
    `holder`, if given, receives the ICMSearch under "search" (for context resamples)."""
    n = len(problem.examples)
    if method == "zero-shot":
        rows = zero_shot_rows(problem, scorer)
        return _clamp(rows.argmax(1), fixed_indices(problem, fixed)), rows
    search = ICMSearch(problem, scorer, config, seed, checkpoint, method, max_window=window, fixed=fixed)
    fixed = search.fixed  # row -> label index
    if holder is not None:
        holder["search"] = search
    rng = np.random.default_rng(seed + 7919)
    if method == "icm":
        state = search.run(progress)
        labels = np.array(state.labels)
        return labels, search.final_rows(labels)
    if method == "random-fewshot":
        context = _clamp(rng.integers(0, len(problem.label_words), size=n), fixed)
        rows = search.final_rows(context)
        return _clamp(rows.argmax(1), fixed), rows
    if method == "gold-fewshot":
        if gold is None:
            raise InputError("--method gold-fewshot needs gold labels (evaluation only)")
        gold_idx = np.array([problem.label_words.index(g) if g in problem.label_words else -1
                             for g in (gold_label(v, problem) for v in gold)])
        if (gold_idx < 0).any():
            raise InputError(f"gold: row {int(np.flatnonzero(gold_idx < 0)[0])} has no usable gold label")
        rows = search.final_rows(gold_idx)
        return rows.argmax(1), rows
    if method == "bootstrap":
        return bootstrap(problem, scorer, search, rounds=2, fixed=fixed)
    raise AssertionError(method)


def zero_shot_rows(problem: Problem, scorer) -> np.ndarray:
    rows = scorer.score("", [ex.prompt for ex in problem.examples])
    return calibrate_rows(rows, np.zeros(len(rows), dtype=int)) if problem.multiclass else rows


def bootstrap(problem: Problem, scorer, search: ICMSearch, rounds: int = 2, fixed: dict[int, int] | None = None):
    """Zero-shot labels, then relabel each example in the context of the others' labels, then repair
    each inconsistent pair greedily with its most likely consistent joint labelling. No annealing.
    Fixed (human) labels stay as given throughout."""
    fixed = fixed or {}
    rows = zero_shot_rows(problem, scorer)
    labels = _clamp(rows.argmax(1), fixed)
    for _ in range(rounds):
        rows = search.final_rows(labels)
        labels = _clamp(rows.argmax(1), fixed)
    cons = search.consistency
    for i, j in cons.violations(labels):
        if not cons.pair_ok(cons.relation(i, j), labels[i], labels[j]):
            options = [(a, b) for a, b in cons.consistent_options(i, j)
                       if fixed.get(i, a) == a and fixed.get(j, b) == b]
            if not options:
                continue  # two human labels that conflict: left as given (and flagged)
            a, b = max(options, key=lambda ab: rows[i, ab[0]] + rows[j, ab[1]])
            labels[i], labels[j] = a, b
    return labels, rows


def to_predictions(problem: Problem, labels: np.ndarray, rows: np.ndarray,
                   review_threshold: float, fixed: dict[int, int] | None = None) -> list[Prediction]:
    probs = np.exp(rows)
    probs /= probs.sum(axis=1, keepdims=True)
    cons = Consistency(problem)
    conflicts: dict[int, list[int]] = {}
    for i, j in cons.violations(labels):
        conflicts.setdefault(i, []).append(j)
        conflicts.setdefault(j, []).append(i)
    preds = []
    fixed = fixed or {}
    for ex in problem.examples:
        i = ex.index
        if i in fixed:
            preds.append(Prediction(index=i, label=problem.label_words[fixed[i]], confidence=1.0, fixed=True))
            continue
        y = int(labels[i])
        conf = float(probs[i, y])
        flags = []
        if i in conflicts:
            others = sorted(conflicts[i])
            flags.append(Flag(INCONSISTENT, tuple(others), "; ".join(cons.describe(i, j) for j in others),
                              tuple(cons.relation(i, j) for j in others)))
        if conf < review_threshold:
            flags.append(Flag(LOW_CONFIDENCE, (),
                              f"confidence {conf:.2f} is below the review threshold {review_threshold:.2f}"))
        preds.append(Prediction(index=i, label=problem.label_words[y], confidence=round(conf, 6), flags=flags))
    return preds
