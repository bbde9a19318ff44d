"""Engine Predictions -> Label Studio prediction JSON ({"result": [...], "score", "model_version"})."""

from __future__ import annotations

import re
from dataclasses import dataclass

from icm_backend.server.label_config import ProjectSpec
from icm_backend.server.rows import RowSet
from icm_backend.types import Prediction

# Without a review block the only place a flag can show is the score column: flagged tasks get
# their score halved so "sort by prediction score ascending" puts them first.
FLAGGED_SCORE_FACTOR = 0.5


@dataclass
class TaskPrediction:
    task_id: int
    result: list[dict]
    score: float | None
    flagged: bool = False
    reason: str = ""

    def to_ls(self, model_version: str) -> dict:
        item = {"result": self.result, "model_version": model_version}
        if self.score is not None:
            item["score"] = self.score
        return item


def empty(task_id: int, reason: str = "") -> TaskPrediction:
    return TaskPrediction(task_id=task_id, result=[], score=None, reason=reason)


_ROW_REF = re.compile(r"\brows? (\d+)(?: and (\d+))?")


def _rows_to_tasks(text: str, rowset: RowSet) -> str:
    """The engine's reasons name row indices ("rows 3 and 5 ..."); LS users need task ids."""
    def tid(idx: str) -> str:
        i = int(idx)
        return f"#{rowset.task_ids[i]}" if 0 <= i < len(rowset.task_ids) else f"row {i}"

    def sub(m: re.Match) -> str:
        if m.group(2):
            return f"tasks {tid(m.group(1))} and {tid(m.group(2))}"
        return f"task {tid(m.group(1))}"

    return _ROW_REF.sub(sub, text)


def review_reason(task_id: int, pred: Prediction, rowset: RowSet, threshold: float) -> str:
    """One line per flag, naming the other LS task ids (never engine row indices)."""
    parts = []
    for flag in pred.flags:
        others = sorted({rowset.task_ids[j] for j in flag.get("with", []) if 0 <= j < len(rowset.task_ids)}
                        - {task_id})
        kind = flag.get("type", "flag")
        if kind == "inconsistent":
            who = ", ".join(f"#{t}" for t in others) or "another task"
            why = _rows_to_tasks(str(flag.get("reason", "")), rowset)
            parts.append(f"inconsistent with task {who}: {why}".rstrip(": "))
        elif kind == "low_confidence":
            parts.append(f"low confidence {pred.confidence:.2f} < {threshold:.2f}")
        else:
            parts.append(f"{kind}: {flag.get('reason', '')}")
    return "; ".join(parts)


def build(spec: ProjectSpec, rowset: RowSet, preds: list[Prediction], threshold: float) -> dict[int, TaskPrediction]:
    """Map engine predictions (one per row) to one TaskPrediction per LS task id."""
    by_row = {p.index: p for p in preds}
    out: dict[int, TaskPrediction] = {}
    for tid, reason in rowset.skipped.items():
        out[tid] = empty(tid, reason)
    for tid, row_idx in rowset.primary.items():
        pred = by_row.get(row_idx)
        if pred is None:
            out[tid] = empty(tid, "no prediction from the engine")
            continue
        conf = max(0.0, min(1.0, float(pred.confidence)))
        flags = list(pred.flags)
        if conf < threshold and not any(f.get("type") == "low_confidence" for f in flags):
            flags.append({"type": "low_confidence", "with": [], "reason": ""})
        pred = Prediction(index=pred.index, label=pred.label, confidence=conf, flags=flags)
        flagged = bool(flags)
        reason = review_reason(tid, pred, rowset, threshold) if flagged else ""
        result = [_label_result(spec, pred, conf)]
        score = conf
        if flagged and spec.has_review:
            result += _review_results(spec, reason)
        elif flagged:
            score = conf * FLAGGED_SCORE_FACTOR
        out[tid] = TaskPrediction(task_id=tid, result=result, score=round(score, 6), flagged=flagged, reason=reason)
    return out


def _label_result(spec: ProjectSpec, pred: Prediction, conf: float) -> dict:
    if spec.control_type == "pairwise":
        is_true = str(pred.label).lower() == "true"
        return {"from_name": spec.from_name, "to_name": spec.to_name, "type": "pairwise",
                "value": {"selected": "left" if is_true else "right"}, "score": conf}
    value = pred.label
    if spec.task == "claims":  # engine speaks True/False; the config may spell them "true"/"FALSE"
        value = spec.choice_values[0] if str(pred.label).lower() == "true" else spec.choice_values[1]
    return {"from_name": spec.from_name, "to_name": spec.to_name, "type": "choices",
            "value": {"choices": [value]}, "score": conf}


def _review_results(spec: ProjectSpec, reason: str) -> list[dict]:
    out = []
    to_name = spec.review.to_name or spec.to_name
    if spec.review.choices_name:
        out.append({"from_name": spec.review.choices_name, "to_name": to_name, "type": "choices",
                    "value": {"choices": [spec.review.choice_value]}})
    if spec.review.reason_name:
        out.append({"from_name": spec.review.reason_name, "to_name": to_name, "type": "textarea",
                    "value": {"text": [reason]}})
    return out
