"""Data passed between the compare modules: plain dataclasses, no pandas at the boundary."""

from __future__ import annotations

from dataclasses import dataclass, field

from icm_backend.engine.types import Prediction

# Task keys are ints: the row index of the input file (`index` in the ICM jsonl) or a Label
# Studio task id. Labels are strings: the label words ICM writes ("True"/"False", ...).


@dataclass(frozen=True)
class CrowdLabel:
    """One crowd vote: worker `worker` gave `label` to task `task`."""

    task: int
    worker: str
    label: str


@dataclass
class CompareInput:
    """Everything a comparison needs; built by the file loaders or from a Label Studio project."""

    predictions: dict[int, Prediction]
    crowd: list[CrowdLabel]
    gold: dict[int, str] = field(default_factory=dict)
    label_set: list[str] = field(default_factory=list)  # sorted label words; empty = derive
    warnings: list[str] = field(default_factory=list)  # human-readable, copied into the summary
    source: str = ""  # where the data came from, for the report header


@dataclass
class Stat:
    """A statistic that may be undefined: `value` is None and `reason` says why."""

    value: float | None
    n: int = 0
    reason: str | None = None

    def to_json(self) -> dict:
        return {"value": self.value, "n": self.n, "reason": self.reason}
