"""Crowd aggregation with crowd-kit: majority vote and Dawid-Skene, with or without ICM as one
more annotator (so one can see how much ICM's vote moves the aggregate)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import pandas as pd

from icm_backend.compare.data import CrowdLabel
from icm_backend.engine.types import Prediction

ICM_WORKER = "ICM"


@dataclass
class Aggregate:
    """One aggregation's result. `ties` = tasks whose top labels are equally likely: crowd-kit
    still picks one (the first column), but ICM-vs-aggregate measures leave those tasks out."""

    name: str
    labels: dict[int, str]
    probas: dict[int, dict[str, float]] = field(default_factory=dict)
    ties: set[int] = field(default_factory=set)


def icm_worker_name(crowd: list[CrowdLabel]) -> str:
    """'ICM', unless a crowd worker already has that name."""
    workers = {c.worker for c in crowd}
    name = ICM_WORKER
    while name in workers:
        name += "*"
    return name


def _frame(crowd: list[CrowdLabel], predictions: dict[int, Prediction] | None, icm_name: str) -> pd.DataFrame:
    rows = [(c.task, c.worker, c.label) for c in crowd]
    if predictions is not None:
        crowd_tasks = {c.task for c in crowd}
        # ICM votes only where the crowd voted: the aggregate is about the crowd's tasks
        rows += [(t, icm_name, p.label) for t, p in predictions.items() if t in crowd_tasks]
    return pd.DataFrame(rows, columns=["task", "worker", "label"])


def _result(name: str, model, df: pd.DataFrame) -> Aggregate:
    with warnings.catch_warnings():
        # crowd-kit 1.4.2 uses pandas keywords that pandas 3 deprecates: noise, not our problem
        warnings.simplefilter("ignore", category=Warning)
        labels = model.fit_predict(df)
    probas = model.probas_
    ties = set()
    for task, row in probas.iterrows():
        top = row.max()
        if (abs(row - top) < 1e-9).sum() > 1:
            ties.add(int(task))
    return Aggregate(
        name=name,
        labels={int(t): str(lab) for t, lab in labels.items()},
        probas={int(t): {str(k): float(v) for k, v in row.items()} for t, row in probas.iterrows()},
        ties=ties,
    )


def aggregate_all(crowd: list[CrowdLabel], predictions: dict[int, Prediction],
                  ds_iterations: int = 100) -> dict[str, Aggregate]:
    """majority_vote, dawid_skene, majority_vote+icm, dawid_skene+icm."""
    from crowdkit.aggregation import DawidSkene, MajorityVote

    icm_name = icm_worker_name(crowd)
    out = {}
    for suffix, preds in (("", None), ("+icm", predictions)):
        df = _frame(crowd, preds, icm_name)
        out["majority_vote" + suffix] = _result("majority_vote" + suffix, MajorityVote(), df)
        out["dawid_skene" + suffix] = _result("dawid_skene" + suffix, DawidSkene(n_iter=ds_iterations), df)
    return out
