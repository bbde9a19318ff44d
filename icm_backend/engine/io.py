"""Reading input rows (JSON, JSONL, CSV, TSV) and writing predictions (JSONL)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from icm_backend.errors import InputError
from icm_backend.engine.types import Flag, Prediction

FORMATS = ("json", "jsonl", "csv", "tsv")


def read_rows(path: str | Path) -> list[dict]:
    """Rows as dicts, in file order. Raises InputError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown format '.{fmt}'; use one of {', '.join('.' + f for f in FORMATS)}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); re-save the file as UTF-8") from None
    if not text.strip():
        raise InputError(f"{path}: file is empty")
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        if isinstance(data, dict) and isinstance(data.get("rows"), list):
            data = data["rows"]
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of objects")
        rows = data
    elif fmt == "jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: line {n}: invalid JSON: {exc.msg}") from None
    else:
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if fmt == "tsv" else ",",
                                quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
        rows = [dict(r) for r in reader]
    if not rows:
        raise InputError(f"{path}: no rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"{path}: row {i} is not an object")
    return rows


def write_predictions(preds: list[Prediction], path: str | Path) -> None:
    """One JSON object per line, in input order; written atomically so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for p in preds:
            f.write(json.dumps(p.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_predictions(path: str | Path) -> list[Prediction]:
    rows = read_rows(path)
    out = []
    for i, r in enumerate(rows):
        for key in ("index", "label", "confidence"):
            if key not in r:
                raise InputError(f"{path}: row {i}: missing field '{key}' (is this an `icm-backend label` output?)")
        out.append(Prediction(index=int(r["index"]), label=str(r["label"]), confidence=float(r["confidence"]),
                              flags=[Flag.from_json(f) for f in r.get("flags") or []], fixed=bool(r.get("fixed"))))
    return out
