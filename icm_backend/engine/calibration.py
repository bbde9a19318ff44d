"""Confidence that means what it says, the review queue, and the project-level checks.

After a labelling method has run, `assess` turns its scores into what a user sees:

1. Scores. Each row's label distribution is averaged over the final context and `resamples` fresh
   random samples of D as context (an ensemble over contexts; multi-class rows PMI-calibrated per
   context, as the search decides by them).
2. Temperature. With at least `min_fit` human (fixed) labels that look like a random sample of the
   project (their raw confidence within `max_selection_shift` sd of the rest's), T is fitted by
   likelihood on them (their scores come from contexts that never hold the row itself). Labels a review
   queue picked (the least confident) are not such a sample: a T fitted on them does not carry over to
   the confident rows. Otherwise T is unsupervised: the
   labelling's accuracy is estimated from its agreement with an independent view, the model without
   context (zero-shot), chance-corrected (Cohen's kappa; under symmetric noise of equal accuracy a,
   kappa = s^2 with a = 1/K + (1 - 1/K) s), and T is set so that the mean confidence equals that
   estimate. Agreement between context resamples of the same model alone is not used for this: it is
   high whether the model knows or merely copies the labels in its context.
3. Decision. Each label is the most likely one under the calibrated scores; where rows are tied by
   consistency rules, under the joint distribution restricted to consistent labellings (fixed rows
   clamped), so the confidence reported is the probability of the chosen label under the scoring that
   chose it, >= 1/K.
   Deference to the search: where the search's own labelling (D, ICM's answer) says otherwise and the
   decided label's confidence is under `defer_below` (2/3: less than 2:1 odds), the row reports D's label,
   with its probability under the same scores as confidence (so below 1/2 in a binary task: flagged first).
   Rows under consistency rules keep the joint decision (a lone change could break a rule). Measured
   (bench/RESULTS.md, issue 19 item 4): on the rows where the two differ, D was right 33 times out of 47
   below 2/3 and the ensemble 16 times out of 21 above it (SST-2, 64- and 256-row runs, 6 runs).
4. Drift guard. The labelling's label share is compared with the calibrated marginal (the mean
   calibrated probability of each label). A departure beyond `drift_tolerance` on a problem without
   consistency rules is corrected by a per-label bias that brings the share to the marginal (the
   probabilities follow the same bias, so confidence and label still agree).
5. Reliability. The estimated accuracy (from the fixed labels' fit or from the kappa estimate) under
   `min_accuracy` marks the labelling unreliable: every row gets an UNRELIABLE flag saying why, and the
   confidences are already low because T was set from that estimate.
6. Review queue. Consistency violations are always flagged; low confidence by `threshold` if set,
   else the `fraction` of non-fixed rows with the lowest confidence (expected error = 1 - confidence,
   so sorting by confidence ascending is the review order).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from icm_backend.engine.consistency import Consistency
from icm_backend.engine.tasks import Problem
from icm_backend.engine.types import INCONSISTENT, LOW_CONFIDENCE, UNRELIABLE, Flag, Prediction
from icm_backend.errors import InputError

MAX_COMPONENT = 12  # rows tied by consistency rules enumerated jointly (2^12 labellings at most)


@dataclass
class ReviewConfig:
    fraction: float | None = 0.2  # flag this share of the (non-fixed) rows, lowest confidence first
    threshold: float | None = None  # or flag confidence below this; wins over `fraction` when set
    resamples: int = 2  # extra random context samples averaged into each row's scores (0 = off)
    min_fit: int = 16  # human labels needed to fit the temperature on them
    max_selection_shift: float = 0.5  # ... and how far their raw confidence may sit from the rest's (in sd)
    min_rows_unsupervised: int = 8  # fewer rows: no unsupervised temperature or reliability check (kappa too noisy)
    min_accuracy: float | None = None  # estimated accuracy under this => unreliable (default 1/K + 0.4 (1 - 1/K))
    drift_tolerance: float = 0.15  # label share vs calibrated marginal, max over labels
    drift_guard: bool = True
    defer_below: float | None = 2 / 3  # report the search's own label where the decided one is less likely (None: off)

    def __post_init__(self):
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise InputError(f"review fraction {self.fraction}: expected a number in [0, 1]")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"review threshold {self.threshold}: expected a number in [0, 1]")
        if self.defer_below is not None and not 0.0 <= self.defer_below <= 1.0:
            raise InputError(f"review defer_below {self.defer_below}: expected a number in [0, 1] (or None: off)")


@dataclass
class Assessment:
    """Project-level facts about one labelling (what job status and /versions report)."""

    n: int
    n_fixed: int
    temperature: float
    calibrated_on: str  # "N accepted labels" | "agreement with zero-shot (kappa K)" | "none: ..."
    estimated_accuracy: float | None
    kappa_zero_shot: float | None
    label_share: dict[str, float]
    marginal: dict[str, float]
    drift: float
    drift_corrected: bool
    reliable: bool
    reasons: list[str] = field(default_factory=list)
    flagged: int = 0
    mean_confidence: float = 0.0
    deferred_to_search: int = 0  # rows reporting the search's own label (ReviewConfig.defer_below)

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        acc = "n/a" if self.estimated_accuracy is None else f"{self.estimated_accuracy:.2f}"
        head = ("UNRELIABLE: " + "; ".join(self.reasons)) if not self.reliable else "reliable"
        return (f"{head}; estimated accuracy {acc}, mean confidence {self.mean_confidence:.2f}, "
                f"temperature {self.temperature:.2f} ({self.calibrated_on}), {self.flagged} flagged for review"
                + (f", {self.deferred_to_search} label(s) the search's own (the assessed one under 2:1 odds)"
                   if self.deferred_to_search else ""))


# -- small numerics ---------------------------------------------------------------------------------
def softmax_t(logp: np.ndarray, t: float) -> np.ndarray:
    z = logp / t
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def ensemble(rows_list: list[np.ndarray]) -> np.ndarray:
    """log of the mean probability over context samples, renormalised."""
    p = np.mean([np.exp(r) for r in rows_list], axis=0)
    p /= p.sum(axis=1, keepdims=True)
    return np.log(np.clip(p, 1e-12, None))


_GRID = np.exp(np.linspace(math.log(0.05), math.log(20.0), 121))


def fit_temperature(logp: np.ndarray, y: np.ndarray) -> float:
    """Maximum-likelihood temperature of `logp` for labels `y` (grid over 0.05..20)."""
    best, best_nll = 1.0, float("inf")
    for t in _GRID:
        p = softmax_t(logp, t)
        nll = -float(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best


def temperature_for_mean(logp: np.ndarray, target: float) -> float:
    """T such that the mean probability of each row's most likely label equals `target`."""
    k = logp.shape[1]
    target = min(max(target, 1.0 / k + 1e-3), 0.999)

    def mean_max(t: float) -> float:
        return float(softmax_t(logp, t).max(axis=1).mean())

    lo, hi = math.log(0.02), math.log(100.0)  # mean_max falls as T grows
    if mean_max(math.exp(lo)) <= target:
        return math.exp(lo)
    if mean_max(math.exp(hi)) >= target:
        return math.exp(hi)
    for _ in range(50):
        mid = (lo + hi) / 2
        if mean_max(math.exp(mid)) > target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def cohen_kappa(a: np.ndarray, b: np.ndarray, k: int) -> float:
    if len(a) == 0:
        return 0.0
    po = float((a == b).mean())
    pa = np.bincount(a, minlength=k) / len(a)
    pb = np.bincount(b, minlength=k) / len(b)
    pe = float((pa * pb).sum())
    return 0.0 if pe >= 1.0 else (po - pe) / (1.0 - pe)


def accuracy_from_kappa(kappa: float, k: int) -> float:
    return 1.0 / k + (1.0 - 1.0 / k) * math.sqrt(max(kappa, 0.0))


# -- consistency-constrained marginals --------------------------------------------------------------
def components(cons: Consistency, n: int) -> list[list[int]]:
    seen, out = [False] * n, []
    for s in range(n):
        if seen[s]:
            continue
        stack, comp = [s], []
        seen[s] = True
        while stack:
            i = stack.pop()
            comp.append(i)
            for j in cons.neighbours(i):
                if not seen[j]:
                    seen[j] = True
                    stack.append(j)
        out.append(sorted(comp))
    return out


def constrained_marginals(cons: Consistency, probs: np.ndarray, fixed: dict[int, int]) -> np.ndarray:
    """Per-row label marginals under the joint distribution prod_i p_i(y_i) restricted to consistent
    labellings (fixed rows clamped). Rows without relations keep their own distribution; components
    larger than MAX_COMPONENT too (enumeration would explode)."""
    out = probs.copy()
    n, k = probs.shape
    for comp in components(cons, n):
        if len(comp) == 1 or len(comp) > MAX_COMPONENT:
            continue
        choices = [[fixed[i]] if i in fixed else list(range(k)) for i in comp]
        pairs = [(a, b, cons.relation(comp[a], comp[b])) for a in range(len(comp)) for b in range(a + 1, len(comp))
                 if cons.relation(comp[a], comp[b])]
        marg = np.zeros((len(comp), k))
        total = 0.0
        for assign in itertools.product(*choices):
            if any(not cons.pair_ok(rel, assign[a], assign[b]) for a, b, rel in pairs):
                continue
            w = float(np.prod([probs[i, y] for i, y in zip(comp, assign)]))
            total += w
            for a, y in enumerate(assign):
                marg[a, y] += w
        if total > 0:
            out[comp] = marg / total
    return out


def _bias_to_share(logp: np.ndarray, target: np.ndarray, iters: int = 50) -> np.ndarray:
    """A per-label additive log-bias b such that argmax(logp + b) has about the share `target`."""
    k = logp.shape[1]
    b = np.zeros(k)
    n = len(logp)
    if k == 2:
        margin = logp[:, 1] - logp[:, 0]
        m = int(round(target[1] * n))
        order = np.sort(margin)[::-1]
        if m <= 0:
            cut = order[0] + 1e-6
        elif m >= n:
            cut = order[-1] - 1e-6
        else:
            cut = (order[m - 1] + order[m]) / 2
        b[1] = -cut
        return b
    for _ in range(iters):
        share = np.bincount((logp + b).argmax(1), minlength=k) / n
        b += 0.5 * (np.log(target + 1e-3) - np.log(share + 1e-3))
    return b


# -- the whole step ---------------------------------------------------------------------------------
@dataclass
class Calibration:
    """What `fit` decided from one labelling's scores, to apply to further rows of the same project the
    same way (`apply`): a big project fits on its core and first chunk, then labels each later chunk with
    these numbers, so a chunk's labels do not depend on which chunks came before it."""

    temperature: float
    bias: list[float] | None  # the drift guard's per-label log-bias (added after dividing by T)
    shrink: float | None  # confidences shrunk towards 1/K by this factor (consistency made them claim too much)
    low_below: float | None  # confidence at or under this is flagged for review (None: no budget)
    why_low: str
    reasons: list[str]  # why the labelling is unreliable; empty when it is not

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Calibration":
        return cls(**data)


def assess(problem: Problem, score_rows: list[np.ndarray], zero_shot: np.ndarray | None, fixed: dict[int, int],
           review: ReviewConfig, use_consistency: bool,
           search_labels: np.ndarray | None = None) -> tuple[list[Prediction], Assessment]:
    """Scores of one labelling -> calibrated Predictions (input order) and the project-level Assessment.

    score_rows: normalised label log-prob rows [n, K], one array per context sample (>= 1).
    zero_shot: rows without context (the independent view for the unsupervised temperature), or None.
    use_consistency: decide labels under the consistency rules (ICM, bootstrap) or per row (baselines).
    search_labels: the ICM search's own label index per row (-1 where it labelled none), or None.
    """
    preds, report, _ = fit(problem, score_rows, zero_shot, fixed, review, use_consistency, search_labels)
    return preds, report


def _decide(problem: Problem, cons: Consistency, logp: np.ndarray, t: float, bias, fixed: dict[int, int],
            use_consistency: bool) -> tuple[np.ndarray, np.ndarray]:
    z = logp / t + (0 if bias is None else np.asarray(bias))
    p = softmax_t(z, 1.0)
    if use_consistency and problem.constraint != "none":
        p = constrained_marginals(cons, p, fixed)
    return p.argmax(1), p


def _predictions(problem: Problem, cons: Consistency, labels: np.ndarray, conf: np.ndarray, fixed: dict[int, int],
                 low: set[int], why: str, reasons: list[str]) -> list[Prediction]:
    words = problem.label_words
    conflicts: dict[int, list[int]] = {}
    for i, j in cons.violations(labels):
        conflicts.setdefault(i, []).append(j)
        conflicts.setdefault(j, []).append(i)
    unreliable_reason = "; ".join(reasons)
    preds = []
    for i in range(len(problem.examples)):
        if i in fixed:
            preds.append(Prediction(index=i, label=words[fixed[i]], confidence=1.0, fixed=True))
            continue
        flags = []
        if i in conflicts:
            others = sorted(conflicts[i])
            flags.append(Flag(INCONSISTENT, tuple(others), "; ".join(cons.describe(i, j) for j in others),
                              tuple(cons.relation(i, j) for j in others)))
        if i in low:
            flags.append(Flag(LOW_CONFIDENCE, (), f"confidence {conf[i]:.2f} is {why}"))
        if reasons:
            flags.append(Flag(UNRELIABLE, (), "labelling unreliable: " + unreliable_reason))
        preds.append(Prediction(index=i, label=words[int(labels[i])], confidence=round(float(conf[i]), 6),
                                flags=flags))
    return preds


def fit(problem: Problem, score_rows: list[np.ndarray], zero_shot: np.ndarray | None, fixed: dict[int, int],
        review: ReviewConfig, use_consistency: bool,
        search_labels: np.ndarray | None = None) -> tuple[list[Prediction], Assessment, Calibration]:
    """`assess`, also returning the Calibration it decided (for `apply` to further rows)."""
    words = problem.label_words
    n, k = len(problem.examples), len(words)
    cons = Consistency(problem)
    logp = ensemble(score_rows)
    free = np.array([i not in fixed for i in range(n)])
    fixed_rows = np.array(sorted(fixed), dtype=int)
    reasons: list[str] = []

    def decide(t: float, bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return _decide(problem, cons, logp, t, bias, fixed, use_consistency)

    labels0, _ = decide(1.0)
    kappa = None
    if zero_shot is not None and free.sum() >= review.min_rows_unsupervised:
        kappa = cohen_kappa(labels0[free], zero_shot[free].argmax(1), k)
    # Accepted labels calibrate only if they look like the rest: a review queue hands humans the least
    # confident rows, and a temperature fitted there does not carry over to the confident ones (measured:
    # on SST-2 it made the rest badly under-confident). Standardised mean difference of raw confidence.
    raw = softmax_t(logp, 1.0).max(axis=1)
    representative = True
    if len(fixed_rows) >= review.min_fit and free.any():
        smd = abs(raw[fixed_rows].mean() - raw[free].mean()) / (raw.std() + 1e-9)
        representative = smd <= review.max_selection_shift
    fit_on_fixed = len(fixed_rows) >= review.min_fit and (representative or kappa is None)
    if fit_on_fixed:
        t = fit_temperature(logp[fixed_rows], np.array([fixed[i] for i in fixed_rows]))
        source = f"{len(fixed_rows)} accepted labels"
    elif kappa is not None and not representative:
        est = accuracy_from_kappa(kappa, k)
        t = temperature_for_mean(logp[free], est)
        source = (f"agreement with zero-shot (kappa {kappa:.2f}); the {len(fixed_rows)} accepted labels are not a "
                  "random sample (the review queue picked the least confident), so not fitted on")
    elif kappa is not None:
        est = accuracy_from_kappa(kappa, k)
        t = temperature_for_mean(logp[free], est)
        source = f"agreement with zero-shot (kappa {kappa:.2f})"
    else:
        t = 1.0
        source = ("none: " + (f"{int(free.sum())} rows, fewer than {review.min_rows_unsupervised}"
                              if zero_shot is not None else "no independent view for this method"))
    labels, probs = decide(t)

    # Estimated accuracy: from the fit on human labels, else from kappa with the zero-shot view.
    if fit_on_fixed:
        est_acc = float(probs[np.arange(n), labels][free].mean()) if free.any() else None
    elif kappa is not None:
        est_acc = accuracy_from_kappa(kappa, k)
    else:
        est_acc = None
    floor = review.min_accuracy if review.min_accuracy is not None else 1.0 / k + 0.4 * (1.0 - 1.0 / k)
    if est_acc is not None and est_acc < floor:
        reasons.append(f"estimated accuracy {est_acc:.2f} is under {floor:.2f}: the model does not separate "
                       f"these labels much better than chance ({source})")

    # Drift guard: share of the decided labels vs the calibrated marginal. Acted on only where the
    # calibration is trusted and no consistency rule decides the labels; otherwise reported.
    marginal = softmax_t(logp[free], t).mean(axis=0) if free.any() else np.full(k, 1.0 / k)
    share = np.bincount(labels[free], minlength=k) / max(int(free.sum()), 1)
    drift = float(np.abs(share - marginal).max())
    corrected, bias = False, None
    if drift > review.drift_tolerance and free.any():
        if review.drift_guard and not reasons and (problem.constraint == "none" or not use_consistency):
            bias = _bias_to_share(logp[free] / t, marginal)
            labels, probs = decide(t, bias)
            corrected = True
        elif problem.constraint != "none" or reasons:
            reasons.append(f"label share {dict(zip(words, np.round(share, 2).tolist()))} departs from the "
                           f"model's calibrated marginal {dict(zip(words, np.round(marginal, 2).tolist()))} "
                           f"by {drift:.2f}")
    conf = probs[np.arange(n), labels]
    shrink = None
    if not fit_on_fixed and est_acc is not None and free.any() and conf[free].mean() > est_acc:
        # Consistency rules can make a label likely on their own (at most one True among a question's
        # different answers favours False whatever the model says): the confidence may not claim more than
        # the labelling's estimated accuracy. Shrink towards 1/K so the mean matches it; order is kept.
        shrink = max((est_acc - 1.0 / k) / max(conf[free].mean() - 1.0 / k, 1e-9), 0.0)
        conf = np.where(free, 1.0 / k + (conf - 1.0 / k) * shrink, conf)
    deferred = 0
    if search_labels is not None and review.defer_below:
        s_lab = np.asarray(search_labels)
        tied = np.array([bool(cons.neighbours(i)) for i in range(n)], dtype=bool)
        defer = free & ~tied & (s_lab >= 0) & (s_lab != labels) & (conf < review.defer_below)
        if defer.any():
            labels = np.where(defer, s_lab, labels)
            p = probs[np.arange(n), labels]
            conf = np.where(defer, p if shrink is None else 1.0 / k + (p - 1.0 / k) * shrink, conf)
            deferred = int(defer.sum())
    share_after = np.bincount(labels[free], minlength=k) / max(int(free.sum()), 1)  # of the labels shown

    # Review queue: by threshold, or the budget's share of the free rows, least confident first; the
    # budget becomes the confidence cut-off that `apply` uses on later rows.
    low: set[int] = set()
    low_below, why = None, ""
    free_idx = np.flatnonzero(free)
    if review.threshold is not None:
        low = {int(i) for i in free_idx if conf[i] < review.threshold}
        low_below, why = review.threshold - 1e-12, f"below the review threshold {review.threshold:.2f}"
    elif review.fraction:
        budget = int(math.ceil(review.fraction * len(free_idx)))
        order = free_idx[np.argsort(conf[free_idx], kind="stable")]
        low = {int(i) for i in order[:budget]}
        low_below = float(conf[order[budget - 1]]) if budget else None
        why = f"among the {review.fraction:.0%} least confident (the review budget)"
    preds = _predictions(problem, cons, labels, conf, fixed, low, why, reasons)
    report = Assessment(
        n=n, n_fixed=len(fixed_rows), temperature=round(float(t), 4), calibrated_on=source,
        estimated_accuracy=None if est_acc is None else round(est_acc, 4),
        kappa_zero_shot=None if kappa is None else round(kappa, 4),
        label_share={w: round(float(s), 4) for w, s in zip(words, share_after)},
        marginal={w: round(float(m), 4) for w, m in zip(words, marginal)},
        drift=round(drift, 4), drift_corrected=corrected, reliable=not reasons, reasons=reasons,
        flagged=sum(1 for p in preds if p.flags),
        mean_confidence=round(float(conf[free].mean()), 4) if free.any() else 1.0, deferred_to_search=deferred)
    calibration = Calibration(float(t), None if bias is None else [float(b) for b in bias], shrink, low_below, why,
                              list(reasons))
    return preds, report, calibration


def apply(calibration: Calibration, problem: Problem, score_rows: list[np.ndarray],
          use_consistency: bool) -> list[Prediction]:
    """Predictions for rows that were not in the fit, decided exactly as `fit` decided its own rows: the
    same temperature, drift bias, confidence shrink, review cut-off and reliability verdict."""
    c = calibration
    k = len(problem.label_words)
    cons = Consistency(problem)
    labels, probs = _decide(problem, cons, ensemble(score_rows), c.temperature, c.bias, {}, use_consistency)
    conf = probs[np.arange(len(labels)), labels]
    if c.shrink is not None:
        conf = 1.0 / k + (conf - 1.0 / k) * c.shrink
    low = set() if c.low_below is None else {int(i) for i in np.flatnonzero(conf <= c.low_below)}
    return _predictions(problem, cons, labels, conf, {}, low, c.why_low, c.reasons)
