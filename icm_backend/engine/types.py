"""Data the engine hands out: one Prediction per input row, with its review Flags."""

from __future__ import annotations

from dataclasses import dataclass, field

INCONSISTENT = "inconsistent"
LOW_CONFIDENCE = "low_confidence"
UNRELIABLE = "unreliable"  # the whole labelling: the model does not separate these labels (calibration.assess)


@dataclass(frozen=True)
class Flag:
    """Why a row needs a human look. `rows` are input row indices (never task ids: the caller maps them)."""

    kind: str  # INCONSISTENT | LOW_CONFIDENCE | UNRELIABLE
    rows: tuple[int, ...] = ()  # the other rows this one conflicts with
    reason: str = ""
    relations: tuple[str, ...] = ()  # per other row: consistency.RELATION_TEXT key ("same", ...)

    def to_json(self) -> dict:
        # The JSONL keys predate this class; kept so `icm-backend label` output is stable.
        return {"type": self.kind, "with": list(self.rows), "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict) -> "Flag":
        return cls(str(d.get("type", "")), tuple(int(j) for j in d.get("with") or ()), str(d.get("reason", "")))


@dataclass(frozen=True)
class CoreOrigin:
    """How a labelling's core (engine.core) came about: `how` is SEARCHED (no previous core to reuse),
    REUSED (a previous labelling's core and labels, no search; `why`: which of its labels human labels
    replaced, if any) or SEARCHED_AGAIN (a previous core existed and could not be reused: `why`). `rows`: the core's rows; `human`: the human labels among them."""

    SEARCHED = "searched"
    REUSED = "reused"
    SEARCHED_AGAIN = "searched again"

    how: str
    rows: int
    human: int = 0
    why: str = ""

    def text(self) -> str:
        if self.how == self.REUSED:
            return (f"previous core of {self.rows} rows reused ({self.human} human labels"
                    f"{'; ' + self.why if self.why else ''}): no search, one pass over the rest")
        if self.how == self.SEARCHED_AGAIN:
            return f"ICM on a core of {self.rows} rows, searched again: {self.why}"
        return f"ICM on a core of {self.rows} rows"

    def to_json(self) -> dict:
        return {"how": self.how, "rows": self.rows, "human": self.human, "why": self.why}

    @classmethod
    def from_json(cls, d: dict | None) -> "CoreOrigin | None":
        if not d:
            return None
        return cls(str(d["how"]), int(d["rows"]), int(d.get("human", 0)), str(d.get("why", "")))


@dataclass
class Prediction:
    """One labelled input row, as written by `icm-backend label` (one JSON object per line)."""

    index: int
    label: str
    confidence: float  # probability the model gives `label`, normalised over the label set
    flags: list[Flag] = field(default_factory=list)
    fixed: bool = False  # a human label passed in (`fixed=`): returned as given, confidence 1

    def to_json(self) -> dict:
        out = {"index": self.index, "label": self.label, "confidence": self.confidence,
               "flags": [f.to_json() for f in self.flags]}
        if self.fixed:
            out["fixed"] = True
        return out


class Labelling(list):
    """What label_rows returns: the Predictions (a plain list, input order) plus `assessment`, the
    project-level facts (calibration, estimated accuracy, reliability, drift; engine.calibration), and for
    a project labelled on a core (engine.core) `core`, {row index: label word} of the core's coherent
    labelling (what a later relabel may reuse), and `core_origin` (CoreOrigin), how that core came about."""

    assessment = None
    core: dict | None = None
    core_origin: CoreOrigin | None = None
