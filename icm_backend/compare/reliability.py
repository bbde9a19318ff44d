"""Reliability diagram data: is ICM's confidence the chance the crowd majority agrees with it?"""

from __future__ import annotations

from dataclasses import dataclass

from icm_backend.types import Prediction


@dataclass
class ReliabilityBin:
    low: float
    high: float
    count: int
    mean_confidence: float
    accuracy: float  # fraction of tasks in the bin where ICM's label = the crowd majority


def reliability_bins(predictions: dict[int, Prediction], majority: dict[int, str],
                     n_bins: int = 10) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1]; empty bins are left out."""
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(n_bins)]
    for t, p in predictions.items():
        if t in majority:
            i = min(int(p.confidence * n_bins), n_bins - 1)
            bins[i].append((p.confidence, p.label == majority[t]))
    out = []
    for i, items in enumerate(bins):
        if items:
            out.append(ReliabilityBin(i / n_bins, (i + 1) / n_bins, len(items),
                                      sum(c for c, _ in items) / len(items),
                                      sum(ok for _, ok in items) / len(items)))
    return out
