"""File loaders: ICM output (JSONL), crowd rows (JSONL/CSV), gold labels, the paper's Alpaca file.

Every problem in a file becomes an InputError naming the file, the line and the field, because
the CLI turns InputError into one readable line.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from icm_backend.compare.data import CompareInput, CrowdLabel
from icm_backend.errors import InputError
from icm_backend.engine.types import Flag, Prediction

CROWD_FORMATS = ("auto", "jsonl", "csv", "alpaca")


def label_word(value) -> str:
    """Normalise a label value to the word ICM writes.

    JSON booleans become "True"/"False" because ICM's label words for binary claims are those;
    everything else is its stripped string form.
    """
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _rows(path: Path, fmt: str) -> list[tuple[int, dict]]:
    """(line number, row dict) from a JSONL or CSV file."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if fmt == "auto":
        fmt = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    text = path.read_text(encoding="utf-8")
    if fmt == "csv":
        reader = csv.DictReader(text.splitlines())
        return [(i + 2, dict(row)) for i, row in enumerate(reader)]  # line 1 is the header
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object per line")
        rows.append((lineno, obj))
    return rows


def _int_field(path, lineno, row, name) -> int:
    if name not in row or row[name] in (None, ""):
        raise InputError(f"{path}:{lineno}: missing field '{name}'")
    value = row[name]
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"{path}:{lineno}: field '{name}' must be an integer, got {value!r}") from None


def _label_field(path, lineno, row, name="label") -> str:
    if name not in row or row[name] is None or label_word(row[name]) == "":
        raise InputError(f"{path}:{lineno}: missing field '{name}'")
    return label_word(row[name])


def load_icm_labels(path: str | Path) -> dict[int, Prediction]:
    """`icm-backend label` output: {"index", "label", "confidence", "flags"} per line."""
    path = Path(path)
    out: dict[int, Prediction] = {}
    for lineno, row in _rows(path, "jsonl"):
        index = _int_field(path, lineno, row, "index")
        label = _label_field(path, lineno, row)
        conf = row.get("confidence")
        try:
            conf = float(conf)
        except (TypeError, ValueError):
            raise InputError(f"{path}:{lineno}: field 'confidence' must be a number in [0, 1], got {conf!r}") from None
        if not (0.0 <= conf <= 1.0) or math.isnan(conf):
            raise InputError(f"{path}:{lineno}: field 'confidence' must be in [0, 1], got {conf}")
        if index in out:
            raise InputError(f"{path}:{lineno}: field 'index' {index} appears twice")
        out[index] = Prediction(index=index, label=label, confidence=conf, flags=[Flag.from_json(f) for f in row.get("flags") or [] if isinstance(f, dict)])
    if not out:
        raise InputError(f"{path}: no ICM labels (expected JSONL with 'index', 'label', 'confidence')")
    return out


def load_crowd(path: str | Path, fmt: str = "auto") -> list[CrowdLabel]:
    """Crowd rows with fields task, worker, label (JSONL or CSV with a header)."""
    path = Path(path)
    if fmt == "alpaca":
        return load_alpaca(path)[0]
    if fmt not in CROWD_FORMATS:
        raise InputError(f"--crowd-format must be one of {', '.join(CROWD_FORMATS)}, got {fmt!r}")
    out = []
    for lineno, row in _rows(path, fmt):
        task = _int_field(path, lineno, row, "task")
        worker = row.get("worker")
        if worker is None or str(worker).strip() == "":
            raise InputError(f"{path}:{lineno}: missing field 'worker'")
        out.append(CrowdLabel(task, str(worker).strip(), _label_field(path, lineno, row)))
    if not out:
        raise InputError(f"{path}: no crowd labels (expected rows with 'task', 'worker', 'label')")
    return out


def load_gold(path: str | Path, fmt: str = "auto") -> dict[int, str]:
    """Gold labels: rows with task (or index) and label (JSONL/CSV), or an alpaca-style JSON list."""
    path = Path(path)
    if fmt == "alpaca" or (fmt == "auto" and path.suffix.lower() == ".json"):
        return load_alpaca(path)[1]
    gold = {}
    for lineno, row in _rows(path, fmt):
        key = "task" if "task" in row else "index"
        gold[_int_field(path, lineno, row, key)] = _label_field(path, lineno, row)
    return gold


def load_alpaca(path: str | Path, mirror_pairs: bool = False) -> tuple[list[CrowdLabel], dict[int, str]]:
    """The paper's test_alpaca.json: (crowd votes, gold labels), task = row index.

    The first row of each pair carries `candidate_label`: 4 crowd votes on "choice is better than
    choice_2". The file does not say who cast them, so vote position k becomes worker "crowd_k";
    per-annotator numbers are therefore per vote *slot*, not per person (Fleiss' kappa and
    Krippendorff's alpha do not depend on identities). With `mirror_pairs` the second row of a
    pair (the same comparison with choices swapped, asymmetry rule) gets the negated votes.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}); --crowd-format alpaca expects a JSON list") from None
    if not isinstance(rows, list):
        raise InputError(f"{path}: --crowd-format alpaca expects a JSON list of rows")
    crowd: list[CrowdLabel] = []
    gold: dict[int, str] = {}
    for i, row in enumerate(rows):
        if "label" in row and row["label"] is not None:
            value = row["label"]
            # the file mixes JSON booleans (first row of a pair) and 0/1 ints (second row)
            gold[i] = label_word(bool(value) if isinstance(value, (int, float)) else value)
        votes = row.get("candidate_label")
        if votes is None:
            continue
        if not isinstance(votes, list):
            raise InputError(f"{path}: row {i}: field 'candidate_label' must be a list of votes")
        for k, vote in enumerate(votes):
            crowd.append(CrowdLabel(i, f"crowd_{k}", label_word(vote)))
            if mirror_pairs and i + 1 < len(rows) and rows[i + 1].get("consistency_id") == row.get("consistency_id"):
                crowd.append(CrowdLabel(i + 1, f"crowd_{k}", label_word(not bool(vote))))
    if not crowd:
        raise InputError(f"{path}: no row has field 'candidate_label' (crowd votes); is this the alpaca file?")
    return crowd, gold


def write_crowd_rows(crowd: list[CrowdLabel], path: str | Path) -> None:
    """Write crowd votes as JSONL or CSV rows (task, worker, label), chosen by the file suffix."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["task", "worker", "label"])
            for c in crowd:
                w.writerow([c.task, c.worker, c.label])
    else:
        with path.open("w", encoding="utf-8") as fh:
            for c in crowd:
                fh.write(json.dumps({"task": c.task, "worker": c.worker, "label": c.label}) + "\n")


def load_inputs(labels: str | Path, crowd: str | Path, gold: str | Path | None = None,
                crowd_format: str = "auto", label_set: list[str] | None = None,
                mirror_pairs: bool = False) -> CompareInput:
    """Load ICM output + crowd (+ gold). With the alpaca format, gold comes from the same file."""
    predictions = load_icm_labels(labels)
    gold_labels: dict[int, str] = {}
    if crowd_format == "alpaca":
        crowd_rows, gold_labels = load_alpaca(crowd, mirror_pairs=mirror_pairs)
    else:
        crowd_rows = load_crowd(crowd, crowd_format)
    if gold is not None:
        gold_labels = load_gold(gold)
    return CompareInput(predictions=predictions, crowd=crowd_rows, gold=gold_labels,
                        label_set=sorted(label_set or []), source=f"labels={labels} crowd={crowd}")
