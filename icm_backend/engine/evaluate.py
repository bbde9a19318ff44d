"""Scoring predictions against gold: accuracy and calibration (expected calibration error)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icm_backend.errors import InputError
from icm_backend.engine.tasks import Problem, gold_label
from icm_backend.engine.types import Prediction


@dataclass
class ReliabilityBin:
    low: float
    high: float
    count: int
    mean_confidence: float
    accuracy: float


@dataclass
class EvalReport:
    n: int
    accuracy: float
    ece: float
    bins: list[ReliabilityBin]
    skipped: int  # rows without a usable gold label

    def table(self) -> str:
        lines = [f"n={self.n}  accuracy={self.accuracy:.3f}  ECE={self.ece:.3f}"
                 + (f"  (skipped {self.skipped} rows without gold)" if self.skipped else ""),
                 "confidence bin   count  mean conf  accuracy"]
        for b in self.bins:
            if b.count:
                lines.append(f"[{b.low:.1f}, {b.high:.1f})    {b.count:6d}  {b.mean_confidence:9.3f}  {b.accuracy:8.3f}")
        return "\n".join(lines)


def calibration(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> tuple[float, list[ReliabilityBin]]:
    """ECE with equal-width bins over [0, 1] (a K-way label's confidence is >= 1/K)."""
    edges = np.linspace(0, 1, n_bins + 1)
    bins, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (confidence >= lo) & ((confidence < hi) if hi < 1 else (confidence <= hi))
        count = int(sel.sum())
        if count:
            mc, acc = float(confidence[sel].mean()), float(correct[sel].mean())
            ece += count / len(confidence) * abs(mc - acc)
        else:
            mc = acc = float("nan")
        bins.append(ReliabilityBin(float(lo), float(hi), count, mc, acc))
    return ece, bins


def evaluate(preds: list[Prediction], gold_rows: list[dict], problem: Problem, gold_field: str = "label") -> EvalReport:
    if len(preds) != len(gold_rows):
        raise InputError(f"--gold has {len(gold_rows)} rows but the predictions have {len(preds)}")
    conf, correct, skipped = [], [], 0
    for p in preds:
        if not 0 <= p.index < len(gold_rows):
            raise InputError(f"prediction index {p.index} is outside the gold file")
        g = gold_label(gold_rows[p.index].get(gold_field), problem)
        if g is None:
            skipped += 1
            continue
        conf.append(p.confidence)
        correct.append(p.label == g)
    if not conf:
        raise InputError(f"--gold: no row has a usable '{gold_field}' column")
    conf_a, corr_a = np.array(conf), np.array(correct, dtype=float)
    ece, bins = calibration(conf_a, corr_a)
    return EvalReport(len(conf), float(corr_a.mean()), ece, bins, skipped)
