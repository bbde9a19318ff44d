"""The ICM objective U(D) = alpha * P(D) - I(D)  [- balance term], computed from cached scores.

P(D) is the sum of log P(y_i | x_i, D \\ i) over labelled examples. While D is still growing, sums over
sets of different sizes are not comparable (every added example adds a negative term), so P is the
mean term scaled to the number of examples N: exactly the paper's sum once every example is labelled.

Multi-class classification has no cross-item constraint to stop a one-class collapse (a labelling in
which every item has the same label is the most "predictable" one). For it, each term is calibrated by
the label's marginal under the same context: log P(y_i | x_i, ctx) - log mean_k P(y_i | x_k, ctx), the
pointwise mutual information between item and label. A one-class labelling then scores ~0 instead of
~0 log-loss, while a labelling that follows the items scores > 0. No class balance is assumed: the
marginal is whatever the model predicts for that context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icm_backend.engine.consistency import UNLABELLED, Consistency
from icm_backend.engine.context import ScoreCache


def calibrate_rows(rows: np.ndarray, context_ids: np.ndarray) -> np.ndarray:
    """log P(y | x, ctx) - log mean_k P(y | x_k, ctx) over the targets that share a context, renormalised.

    Used for multi-class decisions and confidences (and inside P(D)), so that the label the search
    proposes, the label it keeps and the confidence it reports all follow the same rule.
    """
    out = rows.copy()
    probs = np.exp(rows)
    for c in np.unique(context_ids):
        sel = context_ids == c
        out[sel] -= np.log(probs[sel].mean(axis=0) + 1e-12)
    out -= np.log(np.exp(out).sum(axis=1, keepdims=True))
    return out


@dataclass
class Utility:
    value: float
    predictability: float
    inconsistencies: int
    n_labelled: int


class Objective:
    def __init__(self, cache: ScoreCache, consistency: Consistency, alpha: float, calibrate: bool):
        self.cache = cache
        self.consistency = consistency
        self.alpha = alpha
        self.calibrate = calibrate
        self.n = len(cache.plan.problem.examples)

    def terms(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labelled indices, their rows, per-example terms)."""
        idx = np.flatnonzero(labels != UNLABELLED)
        if len(idx) == 0:
            return idx, np.zeros((0, len(self.cache.plan.words))), np.zeros(0)
        rows = self.cache.get(idx, labels)
        y = labels[idx]
        terms = rows[np.arange(len(idx)), y]
        if self.calibrate:
            folds = self.cache.plan.fold_of[idx]
            probs = np.exp(rows)
            for f in np.unique(folds):
                sel = folds == f
                marginal = probs[sel].mean(axis=0)
                terms[sel] -= np.log(marginal[y[sel]] + 1e-12)
        return idx, rows, terms

    def __call__(self, labels: np.ndarray) -> Utility:
        idx, _, terms = self.terms(labels)
        if len(idx) == 0:
            return Utility(0.0, 0.0, 0, 0)
        p = float(terms.mean() * self.n)
        inc = self.consistency.count(labels)
        return Utility(self.alpha * p - inc, p, inc, len(idx))
