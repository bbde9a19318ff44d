"""Data passed between the engine, the CLI, the Label Studio layer and the crowd comparison."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Prediction:
    """One labelled input row, as written by `icm-backend label` (one JSON object per line)."""

    index: int
    label: str
    confidence: float  # probability the model gives `label`, normalised over the label set
    flags: list[dict] = field(default_factory=list)  # {"type": "inconsistent"|"low_confidence", "with": [j], "reason": str}

    def to_json(self) -> dict:
        return asdict(self)
