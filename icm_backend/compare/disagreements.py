"""Tasks worth a human look: where ICM and the crowd disagree, ranked by how surprising it is."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from icm_backend.engine.types import Prediction

# In priority order: a confident model against a clear crowd majority is the most likely label
# error (on one side or the other); a split crowd that ICM is sure about may be settled by ICM;
# both unsure = an ambiguous or badly posed task.
KINDS = ("icm_confident_crowd_against", "crowd_split_icm_confident", "both_unsure")


@dataclass
class Thresholds:
    confident: float = 0.8  # ICM confidence at or above this = confident
    unsure: float = 0.6  # ICM confidence below this = unsure
    split_share: float = 0.6  # crowd top-label share at or below this = split (2-2, 3-2; not 3-1)


@dataclass
class Disagreement:
    task: int
    kind: str
    score: float  # higher = look first (within a kind)
    icm_label: str
    icm_confidence: float
    votes: dict[str, int]
    majority: str | None  # None when the top labels tie
    gold: str | None
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


def find_disagreements(predictions: dict[int, Prediction], votes: dict[int, Counter],
                       gold: dict[int, str], th: Thresholds) -> list[Disagreement]:
    """Ranked list: by kind (KINDS order), then score descending, then task id."""
    out = []
    for task, pred in predictions.items():
        counts = votes.get(task)
        if not counts:
            continue
        n = sum(counts.values())
        ranked = counts.most_common()
        top_label, top = ranked[0]
        second = ranked[1][1] if len(ranked) > 1 else 0
        tie = second == top
        majority = None if tie else top_label
        share, margin = top / n, (top - second) / n
        split = tie or share <= th.split_share
        conf = pred.confidence
        vote_txt = ", ".join(f"{lab}: {c}" for lab, c in sorted(counts.items()))
        if conf >= th.confident and majority is not None and majority != pred.label and share > 0.5:
            kind, score = KINDS[0], conf * share
            reason = f"ICM says {pred.label} ({conf:.2f}) but the crowd majority says {majority} ({vote_txt})"
        elif conf >= th.confident and split:
            kind, score = KINDS[1], conf * (1.0 - margin)
            reason = f"crowd split ({vote_txt}); ICM confident in {pred.label} ({conf:.2f})"
        elif conf < th.unsure and split:
            kind, score = KINDS[2], (1.0 - conf) * (1.0 - margin)
            reason = f"crowd split ({vote_txt}) and ICM unsure ({pred.label}, {conf:.2f})"
        else:
            continue
        out.append(Disagreement(task, kind, round(score, 6), pred.label, conf, dict(sorted(counts.items())),
                                majority, gold.get(task), reason))
    out.sort(key=lambda d: (KINDS.index(d.kind), -d.score, d.task))
    return out
