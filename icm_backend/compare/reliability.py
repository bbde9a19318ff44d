"""Reliability diagram data: is ICM's confidence the chance the crowd majority agrees with it?"""

from __future__ import annotations

import numpy as np

from icm_backend.engine.evaluate import ReliabilityBin, calibration
from icm_backend.engine.types import Prediction

__all__ = ["ReliabilityBin", "reliability_bins"]


def reliability_bins(predictions: dict[int, Prediction], majority: dict[int, str],
                     n_bins: int = 10) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1], "accuracy" = agreement with the crowd majority; empty bins left out."""
    pairs = [(p.confidence, p.label == majority[t]) for t, p in predictions.items() if t in majority]
    if not pairs:
        return []
    _, bins = calibration(np.array([c for c, _ in pairs]), np.array([ok for _, ok in pairs], dtype=float), n_bins)
    return [b for b in bins if b.count]
