"""The library entry point: label rows with ICM or a baseline, through one code path.

    from icm_backend.engine.labeler import label_rows
    preds = label_rows(rows, task="classify", labels=["negative", "positive"], method="icm")
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from icm_backend.errors import InputError
from icm_backend.engine.model import LoadedLM, load_lm
from icm_backend.engine.objective import calibrate_rows
from icm_backend.engine.scorer import TransformersScorer
from icm_backend.engine.search import ICMSearch, SearchConfig, fixed_indices
from icm_backend.engine.tasks import Problem, build_problem, gold_label
from icm_backend.engine.calibration import ReviewConfig, assess
from icm_backend.engine.core import label_with_core
from icm_backend.engine.types import Labelling, Prediction

log = logging.getLogger(__name__)

METHODS = ("icm", "zero-shot", "random-fewshot", "bootstrap", "gold-fewshot")
CLI_METHODS = METHODS[:4]  # gold few-shot needs gold labels: evaluation only
DEFAULT_REVIEW_THRESHOLD = None  # no threshold: flag by the review budget (DEFAULT_REVIEW_FRACTION) instead
DEFAULT_REVIEW_FRACTION = 0.2


def reads_context(method: str) -> bool:
    """Whether `method` scores a row after other labelled rows (every method but zero-shot, which reads each
    row alone). What follows from it: zero-shot is the independent view the others are calibrated against,
    and a fine-tune for a zero-shot backend trains single rows (finetune.lora.context_for)."""
    return method != "zero-shot"


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
               on_chunk: Callable[[list[Prediction]], None] | None = None,
               core: dict | None = None) -> Labelling:
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
    core: a previous labelling's core ({row index: label}, the `.core` of what this returned before, for
        the same rows): a relabel reuses it, with no search, the human labels in place of its own
        (engine.core.reuse_core says when and why not); the returned `.core_origin` says which happened.

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
        prior = fixed_indices(problem, core, "core") if core else None
        return label_with_core(rows, problem, scorer, config, seed, checkpoint, progress, fixed_idx, review,
                               window, on_chunk, prior)
    holder: dict = {}
    labels_out, rows_out = run_method(problem, scorer, method, seed, config, checkpoint, progress, gold, window,
                                      fixed=fixed, holder=holder)
    score_rows, zero_shot = [rows_out], None
    search = holder.get("search")
    if method == "icm" and search is not None and review.resamples > 0:
        score_rows += search.resampled_rows(labels_out, review.resamples, seed)
    if reads_context(method):
        zero_shot = zero_shot_rows(problem, scorer)
    preds, assessment = assess(problem, score_rows, zero_shot, fixed_idx, review,
                               use_consistency=method in ("icm", "bootstrap"),
                               search_labels=labels_out if method == "icm" else None)
    log.info("labelling assessed: %s", assessment.summary())
    out = Labelling(preds)
    out.assessment = assessment
    if on_chunk is not None:
        on_chunk(list(out))
    return out


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
    if not reads_context(method):
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


