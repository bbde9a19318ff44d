"""Training rows: from Label Studio annotations (accepted labels) and from label files.

Rules (documented in docs/finetune.md):
- A task's human annotations decide its label. Cancelled (skipped) annotations, empty results and
  choices outside the label set are dropped, each with a reason in the report.
- Several valid annotations of one task: majority vote; a tie goes to the most recently updated one.
- Optionally (`include_icm=True`, the paper's iterative path) tasks with no valid human annotation
  contribute their ICM prediction when its score >= `min_confidence`. A human label always wins over
  an ICM label of the same task: ICM labels are only read for tasks no human labelled.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from icm_backend.engine import io
from icm_backend.engine.tasks import normalise_label
from icm_backend.errors import InputError
from icm_backend.labelstudio.annotations import icm_label, resolve_task_annotations
from icm_backend.labelstudio.rows import tasks_to_rows

@dataclass
class TrainingRow:
    row: dict  # the input fields of the task preset (e.g. {"text": ...})
    label: str
    source: str  # "human" | "icm" | "file"
    task_id: int | None = None
    annotation_ids: list[int] = field(default_factory=list)
    confidence: float = 1.0


@dataclass
class TrainingSet:
    rows: list[TrainingRow]
    skipped: list[dict] = field(default_factory=list)  # {"task": id, "annotation": id, "reason": str}
    conflicts: int = 0  # tasks whose valid annotations disagreed (resolved by the rule above)

    def ids(self) -> dict:
        """What versions/<v>/training_set.json records: which tasks/annotations trained the version."""
        return {
            "human": [{"task": r.task_id, "annotations": r.annotation_ids, "label": r.label}
                      for r in self.rows if r.source == "human"],
            "icm": [{"task": r.task_id, "label": r.label, "confidence": r.confidence}
                    for r in self.rows if r.source == "icm"],
            "file_rows": sum(r.source == "file" for r in self.rows),
            "skipped": self.skipped,
            "conflicts": self.conflicts,
        }

    def summary(self) -> str:
        by = Counter(r.source for r in self.rows)
        reasons = Counter(s["reason"].split(":")[0] for s in self.skipped)
        parts = [f"{len(self.rows)} training rows ({', '.join(f'{k} {v}' for k, v in sorted(by.items())) or 'none'})"]
        if self.conflicts:
            parts.append(f"{self.conflicts} tasks with disagreeing annotations resolved by majority, then latest")
        if reasons:
            parts.append("skipped: " + ", ".join(f"{n} {r}" for r, n in reasons.most_common()))
        return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Label Studio
# ---------------------------------------------------------------------------------------------
# The project's label config is read by the server's parser (icm_backend.labelstudio.config) and
# tasks become rows through its tasks_to_rows, so training rows are built exactly as served rows are.


def _other(label: str) -> str:
    return "False" if label == "True" else "True"


def training_set_from_ls_tasks(tasks: list[dict], spec, include_icm: bool = False,
                               min_confidence: float = 0.9) -> TrainingSet:
    """Build the training set from LS tasks as `tasks.list(fields="all")` returns them."""
    out = TrainingSet(rows=[])
    labelled: dict[int, TrainingRow] = {}
    for t in tasks:
        tid = t.get("id")
        human, skipped, conflict = resolve_task_annotations(tid, t.get("annotations") or [], spec,
                                                           t.get("predictions") or [])
        out.skipped.extend(skipped)
        out.conflicts += int(conflict)
        row = None if human is None else TrainingRow(row={}, label=human.label, source="human", task_id=tid,
                                                     annotation_ids=human.annotation_ids)
        if row is None and include_icm:
            got = icm_label(t.get("predictions") or [], spec)
            if got and got[1] >= min_confidence:
                row = TrainingRow(row={}, label=got[0], source="icm", task_id=tid, confidence=got[1])
        if row is not None:
            labelled[tid] = row
    rowset = tasks_to_rows(spec, [t for t in tasks if t.get("id") in labelled])
    for tid, why in rowset.skipped.items():
        out.skipped.append({"task": tid, "annotation": None, "reason": f"no input: {why}"})
    for i, (tid, fields) in enumerate(zip(rowset.task_ids, rowset.rows)):
        base = labelled[tid]
        primary = rowset.primary.get(tid) == i
        # Comparison tasks give two rows (both orders of the pair): the swapped order takes the other label.
        label = base.label if primary else _other(base.label)
        out.rows.append(TrainingRow(row=fields, label=label, source=base.source, task_id=tid,
                                    annotation_ids=base.annotation_ids, confidence=base.confidence))
    return out


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _required(task: str) -> tuple[str, ...]:
    from icm_backend.engine.tasks import PRESETS

    if task not in PRESETS:
        raise InputError(f"--task {task}: unknown preset; choose one of {', '.join(PRESETS)}")
    return PRESETS[task].required


def read_rows(path: str | Path) -> list[dict]:
    """A labels file (JSON, JSONL, CSV or TSV): the engine's reader, errors prefixed with LABELS."""
    try:
        return io.read_rows(path)
    except InputError as exc:
        raise InputError(f"LABELS {exc}") from None


def training_set_from_file(path: str | Path, task: str, labels: list[str]) -> TrainingSet:
    required = _required(task)
    rows = read_rows(path)
    out = TrainingSet(rows=[])
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise InputError(f"LABELS {path}: row {i + 1} is not an object")
        missing = [f for f in required + ("label",) if r.get(f) in (None, "")]
        if missing:
            raise InputError(f"LABELS {path}: row {i + 1} has no field {missing[0]!r} (task {task} needs "
                             f"{', '.join(required + ('label',))})")
        label = normalise_label(r["label"], labels, multiclass=task == "classify")
        if label is None:
            raise InputError(f"LABELS {path}: row {i + 1} field 'label' = {r['label']!r} is not one of {labels}"
                             + (" or an index into them" if task == "classify" else ""))
        row = {k: v for k, v in r.items() if k != "label"}
        out.rows.append(TrainingRow(row=row, label=label, source="file", task_id=r.get("id", i)))
    return out
