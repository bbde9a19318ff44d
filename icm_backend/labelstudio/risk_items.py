"""Label Studio tasks -> what the risk report (engine.risk) reads: one Item per task holding a prediction
of the labelling's version, and the audit's outcomes (the humans' label against the prediction's).

What ships is what counts: the score LS holds (the calibrated confidence) and the label shown. A task is
flagged when its prediction carries the config's review block (the "needs review" choice or a reason);
without a review block LS holds no flag, and the safe set is decided by confidence alone.
Human labels follow labelstudio.annotations (an annotation made from a prediction and left unchanged is
not one), so accepting predictions through LS never audits itself.
"""

from __future__ import annotations

from icm_backend.engine.risk import Item
from icm_backend.labelstudio.annotations import _when, annotation_label, human_labels
from icm_backend.labelstudio.config import ProjectSpec


def version_prediction(task: dict, version: str) -> dict | None:
    """The task's newest prediction of `version` that holds a result; None if it has none."""
    preds = [p for p in task.get("predictions") or [] if p.get("model_version") == version and p.get("result")]
    return max(preds, key=_when) if preds else None


def is_flagged(prediction: dict, spec: ProjectSpec) -> bool:
    names = {spec.review.choices_name, spec.review.reason_name} - {None}
    return any(r.get("from_name") in names for r in prediction.get("result") or [])


def risk_items(tasks: list[dict], spec: ProjectSpec, version: str) -> list[Item]:
    """One Item per task with a prediction of `version` (key = LS task id), in task order. A prediction
    without a score or without a readable label is left out (nothing to accept)."""
    out = []
    for t in tasks:
        pred = version_prediction(t, version)
        if pred is None or pred.get("score") is None:
            continue
        label, _ = annotation_label(pred.get("result") or [], spec)
        if label is None:
            continue
        out.append(Item(key=int(t["id"]), confidence=min(1.0, max(0.0, float(pred["score"]))), label=label,
                        flagged=is_flagged(pred, spec)))
    return out


def audit_outcomes(tasks: list[dict], spec: ProjectSpec, version: str, keys: list[int]) -> dict[int, bool]:
    """{task id: the prediction's label equals the humans'} for the audited tasks people have labelled."""
    wanted = set(keys)
    mine = [t for t in tasks if int(t["id"]) in wanted]
    humans = human_labels(mine, spec)
    out = {}
    for t in mine:
        tid = int(t["id"])
        pred = version_prediction(t, version)
        if tid not in humans or pred is None:
            continue
        out[tid] = annotation_label(pred.get("result") or [], spec)[0] == humans[tid]
    return out
