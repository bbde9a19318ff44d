"""Label Studio tasks -> ICM rows (and back): the only place that knows both shapes.

Row indices are what the engine's flags name; `RowSet.task_ids[i]` maps them back to LS task ids so a
review reason can say "conflicts with task #12".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from icm_backend.labelstudio.config import FIELD_ALIASES, ProjectSpec


@dataclass
class RowSet:
    rows: list[dict] = field(default_factory=list)
    task_ids: list[int] = field(default_factory=list)  # row index -> LS task id
    primary: dict[int, int] = field(default_factory=dict)  # LS task id -> the row whose label is the task's
    skipped: dict[int, str] = field(default_factory=dict)  # LS task id -> why it has no row (empty result)


def task_group(data: dict) -> str | None:
    """A task's consistency group, from the hidden group-id field (FIELD_ALIASES); None = no group."""
    group = _get(data, None, FIELD_ALIASES["consistency_id"])
    return None if group is None else str(group)


def _get(data: dict, key: str | None, aliases: tuple[str, ...] = ()) -> object:
    for k in ((key,) if key else ()) + aliases:
        if k in data and data[k] not in (None, ""):
            return data[k]
    return None


def unusable_text(values: list, max_chars: int | None) -> str:
    """Why these task texts cannot go to the engine ("" = they can): too long, or not valid Unicode."""
    total = sum(len(v) for v in values)
    if max_chars is not None and total > max_chars:
        return f"text too long: {total} characters > ICM_MAX_TEXT_CHARS={max_chars}"
    for v in values:
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"text is not valid Unicode (lone surrogate at character {exc.start})"
    return ""


def tasks_to_rows(spec: ProjectSpec, tasks: list[dict], *, max_chars: int | None = None) -> RowSet:
    """`max_chars`: a task whose texts together are longer gets no row and an empty result saying why."""
    out = RowSet()
    for task in tasks:
        tid = task["id"]
        data = task.get("data") or {}
        n_rows = len(out.rows)
        _task_rows(out, spec, tid, data)
        first = out.rows[n_rows:n_rows + 1]  # a pairwise task's second row holds the same texts swapped
        bad = unusable_text([v for row in first for v in row.values() if isinstance(v, str)], max_chars)
        if bad:
            del out.rows[n_rows:], out.task_ids[n_rows:]
            out.primary.pop(tid, None)
            out.skipped[tid] = bad
    return out


def _task_rows(out: RowSet, spec: ProjectSpec, tid: int, data: dict) -> None:
    if spec.task == "classify":
        text = _get(data, spec.fields["text"])
        if text is None:
            out.skipped[tid] = f"task data has no {spec.fields['text']!r} field"
            return
        _add(out, tid, {"text": str(text)}, primary=True)
    elif spec.task == "claims":
        claim = _get(data, spec.fields["choice"], FIELD_ALIASES["choice"])
        if claim is None:
            out.skipped[tid] = f"task data has no {spec.fields['choice']!r} field"
            return
        row = {"question": str(_get(data, spec.fields.get("question"), FIELD_ALIASES["question"]) or ""),
               "choice": str(claim)}
        group = task_group(data)
        if group is not None:
            row["consistency_id"] = group
            answer = _get(data, None, FIELD_ALIASES["answer"])
            if answer is not None:
                row["answer"] = str(answer)
        _add(out, tid, row, primary=True)
    elif spec.task == "comparison":
        a = _get(data, spec.fields["choice"])
        b = _get(data, spec.fields["choice_2"])
        if a is None or b is None:
            out.skipped[tid] = f"task data needs both {spec.fields['choice']!r} and {spec.fields['choice_2']!r}"
            return
        q = str(_get(data, spec.fields.get("question"), FIELD_ALIASES["question"]) or "")
        group = task_group(data) or f"task-{tid}"
        # Both orders of the pair in one group: the engine's asymmetry rule ("A better than B" and
        # "B better than A", exactly one True) is what keeps ICM off the all-True answer.
        _add(out, tid, {"question": q, "choice": str(a), "choice_2": str(b), "consistency_id": group}, True)
        _add(out, tid, {"question": q, "choice": str(b), "choice_2": str(a), "consistency_id": group}, False)
    else:  # pragma: no cover - parse_label_config only yields the three presets
        raise AssertionError(spec.task)


def _add(out: RowSet, tid: int, row: dict, primary: bool) -> None:
    if primary:
        out.primary[tid] = len(out.rows)
    out.rows.append(row)
    out.task_ids.append(tid)
