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

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from icm_backend.errors import InputError

# Claims / comparison presets carry truth values; files may write them as booleans or 0/1.
_TRUTHY = {"1", "true", "yes"}
_FALSY = {"0", "false", "no"}


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


def annotation_label(result: list[dict], spec) -> tuple[str | None, str]:
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


def _when(obj: dict) -> tuple:
    # Latest = updated_at, then created_at, then id (ISO strings sort chronologically).
    return (str(obj.get("updated_at") or ""), str(obj.get("created_at") or ""), obj.get("id") or 0)


def resolve_task_annotations(task_id, annotations: list[dict], spec) -> tuple[TrainingRow | None, list[dict], bool]:
    """One task's annotations -> (label row without its input fields, or None; skipped entries; had_conflict)."""
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
        valid.append((label, ann))
    if not valid:
        return None, skipped, False
    counts = Counter(label for label, _ in valid)
    top = max(counts.values())
    tied = {label for label, n in counts.items() if n == top}
    # Majority; a tie goes to the label of the most recently updated annotation among the tied ones.
    latest = max((a for a in valid if a[0] in tied), key=lambda a: _when(a[1]))
    return TrainingRow(row={}, label=latest[0], source="human", task_id=task_id,
                       annotation_ids=[a.get("id") for _, a in valid]), skipped, len(counts) > 1


def icm_label(predictions: list[dict], spec) -> tuple[str, float] | None:
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


def _other(label: str) -> str:
    return "False" if label == "True" else "True"


def training_set_from_ls_tasks(tasks: list[dict], spec, include_icm: bool = False,
                               min_confidence: float = 0.9) -> TrainingSet:
    """Build the training set from LS tasks as `tasks.list(fields="all")` returns them."""
    from icm_backend.labelstudio.rows import tasks_to_rows

    out = TrainingSet(rows=[])
    labelled: dict[int, TrainingRow] = {}
    for t in tasks:
        tid = t.get("id")
        row, skipped, conflict = resolve_task_annotations(tid, t.get("annotations") or [], spec)
        out.skipped.extend(skipped)
        out.conflicts += int(conflict)
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


def fetch_ls_tasks(url: str, api_key: str, project_id: int) -> list[dict]:
    """All tasks of a project with annotations and predictions (label-studio-sdk 2.1.2)."""
    from label_studio_sdk import LabelStudio

    client = LabelStudio(base_url=url.rstrip("/"), api_key=api_key, timeout=60)
    tasks = []
    for t in client.tasks.list(project=project_id, fields="all", page_size=200):
        d = t.model_dump() if hasattr(t, "model_dump") else dict(t)
        tasks.append({"id": d.get("id"), "data": d.get("data") or {},
                      "annotations": [_plain(a) for a in d.get("annotations") or []],
                      "predictions": [_plain(p) for p in d.get("predictions") or []]})
    return tasks


def _plain(obj) -> dict:
    return obj.model_dump() if hasattr(obj, "model_dump") else dict(obj)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _required(task: str) -> tuple[str, ...]:
    from icm_backend.engine.tasks import PRESETS

    if task not in PRESETS:
        raise InputError(f"--task {task}: unknown preset; choose one of {', '.join(PRESETS)}")
    return PRESETS[task].required


def read_rows(path: str | Path) -> list[dict]:
    """JSON (a list of objects), JSONL, CSV or TSV, chosen by extension."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"LABELS {p}: file not found")
    suffix = p.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(p.read_text())
            if not isinstance(data, list):
                raise InputError(f"LABELS {p}: a .json file must hold a list of objects")
            return data
        if suffix == ".jsonl":
            return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        if suffix in (".csv", ".tsv"):
            with p.open(newline="") as fh:
                return list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
    except json.JSONDecodeError as exc:
        raise InputError(f"LABELS {p}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    raise InputError(f"LABELS {p}: unknown file type {suffix!r}; use .json, .jsonl, .csv or .tsv")


def normalise_label(value, task: str, labels: list[str]) -> str | None:
    """Map a file's label to a label word. Claims/comparison: booleans and 0/1 mean True/False.
    Classify: the label word itself, or an integer index into --labels (SST-2's 0/1 with
    --labels negative,positive)."""
    text = str(value).strip()
    if text in labels:
        return text
    if task != "classify":
        low = text.lower()
        if low in _TRUTHY and "True" in labels:
            return "True"
        if low in _FALSY and "False" in labels:
            return "False"
        return None
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(labels):
        return labels[int(text)]
    return None


def training_set_from_file(path: str | Path, task: str, labels: list[str]) -> TrainingSet:
    required = _required(task)
    rows = read_rows(path)
    if not rows:
        raise InputError(f"LABELS {path}: no rows")
    out = TrainingSet(rows=[])
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise InputError(f"LABELS {path}: row {i + 1} is not an object")
        missing = [f for f in required + ("label",) if r.get(f) in (None, "")]
        if missing:
            raise InputError(f"LABELS {path}: row {i + 1} has no field {missing[0]!r} (task {task} needs "
                             f"{', '.join(required + ('label',))})")
        label = normalise_label(r["label"], task, labels)
        if label is None:
            raise InputError(f"LABELS {path}: row {i + 1} field 'label' = {r['label']!r} is not one of {labels}"
                             + (" or an index into them" if task == "classify" else ""))
        row = {k: v for k, v in r.items() if k != "label"}
        out.rows.append(TrainingRow(row=row, label=label, source="file", task_id=r.get("id", i)))
    return out
