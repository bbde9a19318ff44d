"""Label Studio annotations (and predictions) -> label words of a ProjectSpec.

Rules (documented in docs/finetune.md):
- A task's human annotations decide its label. Cancelled (skipped) annotations, empty results and
  choices outside the label set are dropped, each with a reason.
- Several valid annotations of one task: majority vote; a tie goes to the most recently updated one.
- Provisional predictions (zero-shot stand-ins, version "...-provisional") never count as ICM labels.
- An annotation made from a prediction (LS records its `parent_prediction`: the Data Manager's "Create
  Annotations From Predictions", or a pre-annotation submitted as is) is the model's label, not a human's,
  while its label is the prediction's: it never counts as human evidence (calibration, the promotion gate,
  a trial verdict, training). Once a person changes the label, it does. With the parent prediction not
  among the task's predictions (deleted, or not passed), nobody can tell it was changed: not human.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from icm_backend.labelstudio.config import ProjectSpec


@dataclass
class TaskLabel:
    """The label the humans gave one task, and which annotations gave it."""

    task_id: int
    label: str
    annotation_ids: list[int] = field(default_factory=list)


def annotation_label(result: list[dict], spec: ProjectSpec) -> tuple[str | None, str]:
    """An annotation's (or prediction's) result -> (label word, "") or (None, why not)."""
    if not result:
        return None, "empty result: the annotation holds no choice"
    for item in result:
        if item.get("from_name") != spec.from_name:
            continue
        value = item.get("value") or {}
        if spec.control_type == "pairwise":
            sel = value.get("selected")
            # Pairwise "left" = the first response (choice) is better: the primary row's claim is True.
            if sel == "left":
                return "True", ""
            if sel == "right":
                return "False", ""
            return None, f"unknown choice: pairwise selection {sel!r} is not left/right"
        choices = list(value.get("choices") or [])
        if not choices:
            return None, f"empty result: no choice in control {spec.from_name!r}"
        if len(choices) != 1:
            return None, f"multiple choices: {choices} (training needs exactly one)"
        values = spec.choice_values or spec.labels
        if choices[0] not in values:
            return None, f"unknown choice: {choices[0]!r} is not in the label set {values}"
        return spec.labels[values.index(choices[0])], ""
    return None, f"empty result: no choice in control {spec.from_name!r}"


def _when(obj: dict) -> tuple:  # also used by risk_items: one "newest" rule
    # Latest = updated_at, then created_at, then id (ISO strings sort chronologically).
    return (str(obj.get("updated_at") or ""), str(obj.get("created_at") or ""), obj.get("id") or 0)


def _parent_id(ann: dict) -> int | None:
    # LS 1.23.2 serialises the foreign key as an id; be lenient about a nested {"id": ...}.
    parent = ann.get("parent_prediction")
    if isinstance(parent, dict):
        parent = parent.get("id")
    return parent if isinstance(parent, int) and not isinstance(parent, bool) else None


def unchanged_from_prediction(ann: dict, label: str, predictions: list[dict], spec: ProjectSpec) -> str:
    """Why `ann` (whose label is `label`) is the model's label rather than a person's; "" when a person's.
    See the module's rules: made from a prediction and holding that prediction's label."""
    parent = _parent_id(ann)
    if parent is None:
        return ""
    pred = next((p for p in predictions or [] if p.get("id") == parent), None)
    if pred is None:
        return (f"made from prediction #{parent}, which is not among the task's predictions: cannot tell a person "
                "changed it, so not a human label")
    if annotation_label(pred.get("result") or [], spec)[0] == label:
        return f"made from prediction #{parent} and its label unchanged: the model's label, not a human's"
    return ""


def resolve_task_annotations(task_id, annotations: list[dict], spec: ProjectSpec,
                             predictions: list[dict] | None = None) -> tuple[TaskLabel | None, list[dict], bool]:
    """One task's annotations -> (its label, or None; skipped entries {task, annotation, reason}; had_conflict).
    `predictions`: the task's predictions, to tell an annotation a person changed from one made from a
    prediction and left as is (module rules)."""
    skipped, valid = [], []
    for ann in annotations or []:
        aid = ann.get("id")
        if ann.get("was_cancelled"):
            skipped.append({"task": task_id, "annotation": aid, "reason": "cancelled: the annotator skipped the task"})
            continue
        label, why = annotation_label(ann.get("result") or [], spec)
        if label is None:
            skipped.append({"task": task_id, "annotation": aid, "reason": why})
            continue
        why = unchanged_from_prediction(ann, label, predictions or [], spec)
        if why:
            skipped.append({"task": task_id, "annotation": aid, "reason": why})
            continue
        valid.append((label, ann))
    if not valid:
        return None, skipped, False
    counts = Counter(label for label, _ in valid)
    top = max(counts.values())
    tied = {label for label, n in counts.items() if n == top}
    # Majority; a tie goes to the label of the most recently updated annotation among the tied ones.
    latest = max((a for a in valid if a[0] in tied), key=lambda a: _when(a[1]))
    return TaskLabel(task_id, latest[0], [a.get("id") for _, a in valid]), skipped, len(counts) > 1


def human_labels(tasks: list[dict], spec: ProjectSpec) -> dict[int, str]:
    """{task id: label word} for the tasks whose annotations give a label (resolve_task_annotations), in order."""
    out = {}
    for t in tasks:
        if t.get("annotations"):
            got, _, _ = resolve_task_annotations(t["id"], t["annotations"], spec, t.get("predictions"))
            if got is not None:
                out[int(t["id"])] = got.label
    return out


def icm_label(predictions: list[dict], spec: ProjectSpec) -> tuple[str, float] | None:
    """The newest non-provisional prediction's label and score (provisional = zero-shot stand-ins)."""
    best = None
    for pred in predictions or []:
        if str(pred.get("model_version") or "").endswith("-provisional"):
            continue
        label, _ = annotation_label(pred.get("result") or [], spec)
        if label is None:
            continue
        if best is None or _when(pred) > _when(best[2]):
            best = (label, float(pred.get("score") or 0.0), pred)
    return None if best is None else best[:2]
