"""Input checks that turn messy crowd data into warnings (or an InputError when nothing is left).

Why warnings rather than errors: a crowd export nearly always has a few odd rows, and the
statistics that still make sense should still be computed; the summary lists what was dropped.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from icm_backend.compare.data import CompareInput, CrowdLabel
from icm_backend.errors import InputError

_MAX_IDS = 5  # how many example ids a warning lists


def _ids(items) -> str:
    items = sorted(items)
    more = f" (+{len(items) - _MAX_IDS} more)" if len(items) > _MAX_IDS else ""
    return ", ".join(map(str, items[:_MAX_IDS])) + more


def resolve_label_set(inp: CompareInput) -> tuple[list[str], bool]:
    """(label set, explicit?). Derived = ICM labels + gold labels; crowd labels only when ICM
    collapsed to one word and no gold says otherwise (else a collapsed ICM would hide a class)."""
    if inp.label_set:
        return sorted(inp.label_set), True
    labels = {p.label for p in inp.predictions.values()} | set(inp.gold.values())
    if len(labels) < 2:
        labels |= {c.label for c in inp.crowd}
    return sorted(labels), False


def validate(inp: CompareInput) -> CompareInput:
    """Return a cleaned copy: crowd labels mapped into the label set, duplicates removed; every
    change is recorded as a warning string in `warnings`."""
    warnings = list(inp.warnings)
    label_set, explicit = resolve_label_set(inp)
    by_fold = {lab.casefold(): lab for lab in label_set}
    where = "--label-set" if explicit else "the ICM/gold label set"

    if explicit:
        outside_icm = sorted({p.label for p in inp.predictions.values()} - set(label_set))
        if outside_icm:
            warnings.append(f"field 'label' of the ICM labels: {outside_icm} not in --label-set {label_set}; those tasks are dropped")
    predictions = {k: p for k, p in inp.predictions.items() if p.label in label_set}

    mapped, dropped = Counter(), Counter()
    seen: dict[tuple[int, str], CrowdLabel] = {}
    duplicates = 0
    for c in inp.crowd:
        label = c.label
        if label not in label_set:
            if label.casefold() in by_fold:
                mapped[label] += 1
                label = by_fold[label.casefold()]
            else:
                dropped[label] += 1
                continue
        key = (c.task, c.worker)
        duplicates += key in seen
        seen[key] = CrowdLabel(c.task, c.worker, label)  # a worker's last vote wins
    crowd = list(seen.values())
    if mapped:
        warnings.append(f"field 'label' of the crowd rows: mapped by letter case to {label_set}: {dict(mapped)}")
    if dropped:
        warnings.append(f"field 'label' of the crowd rows: {sum(dropped.values())} votes with labels outside "
                        f"{where} {label_set} were dropped: {dict(dropped)}")
    if duplicates:
        warnings.append(f"{duplicates} duplicate (task, worker) crowd votes: the last one was kept")
    if not crowd:
        raise InputError(f"field 'label' of the crowd rows: no crowd vote uses a label in {where} {label_set}")
    if not predictions:
        raise InputError(f"field 'label' of the ICM labels: no ICM label is in {where} {label_set}")

    gold = {k: v for k, v in inp.gold.items() if v in label_set}
    if len(gold) < len(inp.gold):
        warnings.append(f"field 'label' of the gold labels: {len(inp.gold) - len(gold)} outside {label_set} were ignored")

    crowd_tasks = {c.task for c in crowd}
    no_crowd = set(predictions) - crowd_tasks
    if no_crowd:
        warnings.append(f"{len(no_crowd)} ICM-labelled tasks have no crowd label (left out of ICM-vs-crowd "
                        f"measures): tasks {_ids(no_crowd)}")
    no_icm = crowd_tasks - set(predictions)
    if no_icm:
        warnings.append(f"{len(no_icm)} crowd-labelled tasks have no ICM label (used for crowd reliability only): "
                        f"tasks {_ids(no_icm)}")

    per_worker: dict[str, list[str]] = defaultdict(list)
    for c in crowd:
        per_worker[c.worker].append(c.label)
    for worker, labels in sorted(per_worker.items()):
        if len(labels) == 1:
            warnings.append(f"worker {worker!r} labelled a single task: their kappa/accuracy rest on one vote")
        elif len(set(labels)) == 1:
            warnings.append(f"worker {worker!r} gave the same label {labels[0]!r} to all {len(labels)} tasks: "
                            "Cohen's kappa is 0 or undefined for them")
    if len(per_worker) == 1:
        warnings.append(f"only one annotator ({next(iter(per_worker))!r}): crowd reliability (Fleiss' kappa, "
                        "Krippendorff's alpha) is undefined; accuracy and kappa against ICM are still computed")
    return CompareInput(predictions=predictions, crowd=crowd, gold=gold, label_set=label_set,
                        warnings=warnings, source=inp.source)
