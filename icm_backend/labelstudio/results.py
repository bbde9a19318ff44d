"""Engine Predictions -> Label Studio prediction JSON ({"result": [...], "score", "model_version"})."""

from __future__ import annotations

from dataclasses import dataclass

from icm_backend.labelstudio.config import ProjectSpec
from icm_backend.labelstudio.rows import RowSet
from icm_backend.engine.consistency import RELATION_TEXT
from icm_backend.engine.types import INCONSISTENT, LOW_CONFIDENCE, Prediction

# The score is the engine's confidence unchanged: the probability of the label shown (>= 1/K of K labels),
# under the scoring that chose it. Nothing here rescales it (flagged tasks used to get theirs halved when
# the config had no review block; that made the score column lie about the label). Sorting by score
# ascending still lists the low-confidence flags first; consistency flags need the review block to show.


@dataclass
class TaskPrediction:
    task_id: int
    result: list[dict]
    score: float | None
    flagged: bool = False
    reason: str = ""
    label: str | None = None  # the engine's label word (e.g. "True" for a pairwise "left"): what a shard carries

    def to_ls(self, model_version: str) -> dict:
        if not self.result:
            # LS 1.23.2 stores every item holding a "result" key as a prediction, and never asks again about a
            # task holding one with the current version: an empty result would stand as the answer. An item
            # without "result" is logged by LS and skipped (nothing stored, the task is asked again later).
            return {"model_version": model_version, "error": self.reason or "not labelled"}
        item = {"result": self.result, "model_version": model_version}
        if self.score is not None:
            item["score"] = self.score
        return item


def empty(task_id: int, reason: str = "") -> TaskPrediction:
    return TaskPrediction(task_id=task_id, result=[], score=None, reason=reason)


def review_reason(task_id: int, pred: Prediction, rowset: RowSet, threshold: float) -> str:
    """One clause per flag, naming the other LS task ids (never engine row indices)."""
    parts = []
    for flag in pred.flags:
        if flag.kind == INCONSISTENT:
            clauses = []
            for j, rel in zip(flag.rows, flag.relations or ("",) * len(flag.rows)):
                other = rowset.task_ids[j] if 0 <= j < len(rowset.task_ids) else None
                if other is None or other == task_id:
                    continue  # comparison tasks hold both orders of a pair: a task cannot conflict with itself
                clauses.append(f"task #{other}: the two " + RELATION_TEXT.get(rel, "conflict"))
            parts.append("inconsistent with " + ("; ".join(clauses) if clauses else "another task"))
        elif flag.kind == LOW_CONFIDENCE:  # the engine says which rule flagged it (threshold or review budget)
            parts.append(f"low {flag.reason}" if flag.reason.startswith("confidence") else
                         f"low confidence {pred.confidence:.2f} < {threshold:.2f}")
        else:
            parts.append(f"{flag.kind}: {flag.reason}")
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
        pred = Prediction(index=pred.index, label=pred.label, confidence=conf, flags=list(pred.flags))
        flagged = bool(pred.flags)
        reason = review_reason(tid, pred, rowset, threshold) if flagged else ""
        result = [_label_result(spec, pred, conf)]
        if flagged and spec.has_review:
            result += _review_results(spec, reason)
        out[tid] = TaskPrediction(task_id=tid, result=result, score=round(conf, 6), flagged=flagged, reason=reason,
                                  label=str(pred.label))
    return out


def _label_result(spec: ProjectSpec, pred: Prediction, conf: float) -> dict:
    value = _display(spec, pred.label)
    if spec.control_type == "pairwise":
        return {"from_name": spec.from_name, "to_name": spec.to_name, "type": "pairwise",
                "value": {"selected": value}, "score": conf}
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


def on_trial(spec: ProjectSpec, tp: TaskPrediction, challenger: str, label: str, confidence: float) -> TaskPrediction:
    """`tp` (the serving version's prediction) where the version on trial, `challenger`, chose `label` with
    `confidence`. Where the two agree, `tp` unchanged. Where they disagree, the task is flagged (one of the
    two labels is wrong, and the reviewer's label is the trial's evidence: finetune.trial) and its score is
    the two versions' mean probability of the label shown,

        score = (p_serving(shown) + p_challenger(shown)) / 2,   p_challenger(shown) = (1 - confidence) / (K - 1)

    (the challenger's probability of a label it did not choose is taken as its remaining mass shared evenly
    over the K - 1 other labels; exact for K = 2). Binary: at most 0.75, so sorting by score ascending
    brings these tasks up with the least confident ones."""
    if not tp.result or tp.label is None or label == tp.label or tp.score is None:
        return tp
    k = max(len(spec.labels), 2)
    other = (1.0 - max(0.0, min(1.0, float(confidence)))) / (k - 1)
    score = round((tp.score + other) / 2, 6)
    shown = _display(spec, label)
    clause = (f"version {challenger} (trained on your labels, on trial) labels it {shown!r} "
              f"({confidence:.2f}; score shown {score:.2f}, the two versions' mean): your label decides which "
              "version serves")
    reason = f"{tp.reason}; {clause}" if tp.reason else clause
    main = [dict(r) for r in tp.result if r.get("from_name") == spec.from_name][:1]
    for r in main:
        r["score"] = score
    result = main + (_review_results(spec, reason) if spec.has_review else [])
    return TaskPrediction(task_id=tp.task_id, result=result, score=score, flagged=True, reason=reason, label=tp.label)


def _display(spec: ProjectSpec, word: str) -> str:
    """An engine label word as the project's config spells the choice: pairwise True = "left" (the first response
    is the better one); claims True/False as the config spells them ("true"/"FALSE"...); classify unchanged."""
    if spec.control_type == "pairwise":
        return "left" if str(word).lower() == "true" else "right"
    if spec.task == "claims":
        return spec.choice_values[0] if str(word).lower() == "true" else spec.choice_values[1]
    return word

