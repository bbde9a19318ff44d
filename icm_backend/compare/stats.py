"""Agreement statistics. Each returns a Stat: value None + a reason when the number is undefined
(rather than NaN or an exception), so the summary stays valid JSON and says why."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from icm_backend.compare.data import Stat


def accuracy(a: Sequence[str], b: Sequence[str]) -> Stat:
    """Fraction of positions where a and b give the same label."""
    if len(a) != len(b):
        raise ValueError("accuracy: sequences differ in length")
    if not a:
        return Stat(None, 0, "no task has both labels")
    return Stat(float(np.mean([x == y for x, y in zip(a, b)])), len(a))


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> Stat:
    """Cohen's kappa between two raters on the same tasks: (p_o - p_e) / (1 - p_e)."""
    if len(a) != len(b):
        raise ValueError("cohen_kappa: sequences differ in length")
    n = len(a)
    if n == 0:
        return Stat(None, 0, "no task has both labels")
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    if p_e >= 1.0:
        # both raters used one and the same label everywhere: chance agreement is total
        return Stat(None, n, "both raters gave one and the same label to every task (chance agreement = 1)")
    return Stat(float((p_o - p_e) / (1.0 - p_e)), n)


def fleiss_kappa(votes_per_task: Sequence[Sequence[str]]) -> Stat:
    """Fleiss' kappa over tasks with >= 2 votes.

    Uses the per-task form P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)), which equals Fleiss'
    formula when every task has the same number of votes and stays defined when a few tasks have
    more (the alpaca file has one task with 5 votes instead of 4).
    """
    tasks = [list(v) for v in votes_per_task if len(v) >= 2]
    if not tasks:
        return Stat(None, 0, "no task has two or more crowd votes")
    p_i, totals = [], Counter()
    for votes in tasks:
        counts = Counter(votes)
        n_i = len(votes)
        p_i.append((sum(c * c for c in counts.values()) - n_i) / (n_i * (n_i - 1)))
        totals.update(counts)
    n_votes = sum(totals.values())
    p_e = sum((c / n_votes) ** 2 for c in totals.values())
    if p_e >= 1.0:
        return Stat(None, len(tasks), "every crowd vote uses the same label (chance agreement = 1)")
    return Stat(float((np.mean(p_i) - p_e) / (1.0 - p_e)), len(tasks))


def krippendorff_alpha(matrix: np.ndarray, n_labels: int) -> Stat:
    """Krippendorff's alpha (nominal) from a workers x tasks matrix of label indices (NaN = no vote),
    computed by the `krippendorff` package."""
    import krippendorff

    pairable = int(np.sum(np.sum(~np.isnan(matrix), axis=0) >= 2)) if matrix.size else 0
    if matrix.shape[0] < 2:
        return Stat(None, pairable, "needs two or more annotators")
    if pairable == 0:
        return Stat(None, 0, "no task has two or more crowd votes")
    values = matrix[~np.isnan(matrix)]
    if len(np.unique(values)) < 2:
        return Stat(None, pairable, "every crowd vote uses the same label (no variation to measure)")
    alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal",
                               value_domain=list(range(n_labels)))
    return Stat(float(alpha), pairable)


def confusion(a: Sequence[str], b: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Counts: rows = labels of a, columns = labels of b."""
    idx = {lab: i for i, lab in enumerate(labels)}
    m = [[0] * len(labels) for _ in labels]
    for x, y in zip(a, b):
        m[idx[x]][idx[y]] += 1
    return m
