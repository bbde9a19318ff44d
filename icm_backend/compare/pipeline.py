"""compare(): every measure from one CompareInput, gathered into a CompareResult (JSON-ready)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from icm_backend.compare.aggregate import Aggregate, aggregate_all
from icm_backend.compare.data import CompareInput, Stat
from icm_backend.compare.disagreements import Disagreement, Thresholds, find_disagreements
from icm_backend.compare.reliability import ReliabilityBin, reliability_bins
from icm_backend.compare.stats import accuracy, cohen_kappa, confusion, fleiss_kappa, krippendorff_alpha
from icm_backend.compare.validate import validate

MAX_HEATMAP_WORKERS = 15  # a heatmap of hundreds of workers is unreadable: keep the busiest


@dataclass
class AnnotatorRow:
    worker: str
    n_tasks: int
    accuracy_vs_majority: Stat
    accuracy_vs_gold: Stat
    cohen_kappa_vs_icm: Stat
    accuracy_vs_icm: Stat


@dataclass
class CompareResult:
    inp: CompareInput  # the validated input
    summary: dict  # the JSON summary (flat headline numbers + tables)
    annotators: list[AnnotatorRow]
    aggregates: dict[str, Aggregate]
    disagreements: list[Disagreement]
    reliability: list[ReliabilityBin]
    pairwise: tuple[list[str], list[list[float | None]]]  # rater names, Cohen's kappa matrix
    confusions: dict[str, dict] = field(default_factory=dict)  # title -> {rows, cols, matrix, row_name, col_name}


def _pair(a: dict[int, str], b: dict[int, str], tasks=None) -> tuple[list[str], list[str]]:
    keys = sorted(set(a) & set(b) if tasks is None else set(a) & set(b) & set(tasks))
    return [a[k] for k in keys], [b[k] for k in keys]


def _v(stat: Stat) -> float | None:
    return None if stat.value is None else round(stat.value, 6)


def compare(raw: CompareInput, thresholds: Thresholds | None = None) -> CompareResult:
    """Validate, aggregate, measure. Raises InputError only when nothing usable is left."""
    th = thresholds or Thresholds()
    inp = validate(raw)
    labels = inp.label_set
    icm = {t: p.label for t, p in inp.predictions.items()}

    by_worker: dict[str, dict[int, str]] = defaultdict(dict)
    votes: dict[int, Counter] = defaultdict(Counter)
    for c in inp.crowd:
        by_worker[c.worker][c.task] = c.label
        votes[c.task][c.label] += 1

    aggs = aggregate_all(inp.crowd, inp.predictions)
    mv = aggs["majority_vote"]
    majority = {t: lab for t, lab in mv.labels.items() if t not in mv.ties}  # ties have no majority
    ds = aggs["dawid_skene"].labels

    # --- ICM against crowd aggregates and gold
    acc_mv, kap_mv = accuracy(*_pair(icm, majority)), cohen_kappa(*_pair(icm, majority))
    acc_ds, kap_ds = accuracy(*_pair(icm, ds)), cohen_kappa(*_pair(icm, ds))
    gold = inp.gold
    acc_gold = accuracy(*_pair(icm, gold)) if gold else Stat(None, 0, "no gold labels given")
    kap_gold = cohen_kappa(*_pair(icm, gold)) if gold else Stat(None, 0, "no gold labels given")

    # --- crowd reliability
    fleiss = fleiss_kappa([list(cnt.elements()) for cnt in votes.values()])
    workers = sorted(by_worker)
    tasks = sorted(votes)
    if len(workers) < 2:
        fleiss = Stat(None, fleiss.n, "needs two or more annotators")
    col = {t: j for j, t in enumerate(tasks)}
    lab_idx = {lab: i for i, lab in enumerate(labels)}
    matrix = np.full((len(workers), len(tasks)), np.nan)
    for i, w in enumerate(workers):
        for t, lab in by_worker[w].items():
            matrix[i, col[t]] = lab_idx[lab]
    alpha = krippendorff_alpha(matrix, len(labels))

    # --- per annotator
    annotators = []
    for w in workers:
        mine = by_worker[w]
        annotators.append(AnnotatorRow(
            worker=w, n_tasks=len(mine),
            accuracy_vs_majority=accuracy(*_pair(mine, majority)),
            accuracy_vs_gold=accuracy(*_pair(mine, gold)) if gold else Stat(None, 0, "no gold labels given"),
            cohen_kappa_vs_icm=cohen_kappa(*_pair(mine, icm)),
            accuracy_vs_icm=accuracy(*_pair(mine, icm)),
        ))

    # --- aggregation table
    agg_rows = {}
    for name, agg in aggs.items():
        row = {"n_tasks": len(agg.labels), "n_ties": len(agg.ties),
               "accuracy_vs_gold": _v(accuracy(*_pair(agg.labels, gold))) if gold else None,
               "agreement_with_icm": _v(accuracy(*_pair(agg.labels, icm)))}
        if name.endswith("+icm"):
            base = aggs[name[:-4]].labels
            row["n_changed_by_icm"] = sum(base[t] != agg.labels[t] for t in base if t in agg.labels)
        agg_rows[name] = row

    # --- pairwise Cohen's kappa between raters (busiest workers, ICM, the majority)
    busiest = sorted(workers, key=lambda w: (-len(by_worker[w]), w))[:MAX_HEATMAP_WORKERS]
    raters = {w: by_worker[w] for w in sorted(busiest)}
    raters["ICM"] = icm
    raters["majority"] = majority
    names = list(raters)
    kmatrix = [[cohen_kappa(*_pair(raters[a], raters[b])).value for b in names] for a in names]

    confusions = {}
    for title, a, b, an, bn in (("ICM vs crowd majority", icm, majority, "ICM", "majority"),
                                ("ICM vs Dawid-Skene", icm, ds, "ICM", "Dawid-Skene"),
                                ("ICM vs gold", icm, gold, "ICM", "gold"),
                                ("crowd majority vs gold", majority, gold, "majority", "gold")):
        x, y = _pair(a, b)
        if x:
            confusions[title] = {"labels": labels, "matrix": confusion(x, y, labels), "row_name": an, "col_name": bn}

    rel = reliability_bins(inp.predictions, majority)
    n_rel = sum(b.count for b in rel)
    ece = sum(b.count * abs(b.accuracy - b.mean_confidence) for b in rel) / n_rel if n_rel else None

    dis = find_disagreements(inp.predictions, votes, gold, th)

    reasons = {}
    for key, stat in (("cohen_kappa_icm_vs_majority", kap_mv), ("accuracy_icm_vs_majority", acc_mv),
                      ("krippendorff_alpha_crowd", alpha), ("fleiss_kappa_crowd", fleiss),
                      ("accuracy_icm_vs_gold", acc_gold), ("cohen_kappa_icm_vs_gold", kap_gold),
                      ("cohen_kappa_icm_vs_dawid_skene", kap_ds)):
        if stat.value is None:
            reasons[key] = stat.reason
    summary = {
        "n_tasks": len(set(inp.predictions) | set(votes)),
        "n_tasks_icm": len(inp.predictions),
        "n_tasks_crowd": len(votes),
        "n_tasks_both": len(set(inp.predictions) & set(votes)),
        "n_tasks_with_majority": len(majority),
        "n_majority_ties": len(mv.ties),
        "n_annotators": len(workers),
        "n_crowd_votes": len(inp.crowd),
        "label_set": labels,
        "accuracy_icm_vs_majority": _v(acc_mv),
        "cohen_kappa_icm_vs_majority": _v(kap_mv),
        "accuracy_icm_vs_dawid_skene": _v(acc_ds),
        "cohen_kappa_icm_vs_dawid_skene": _v(kap_ds),
        "accuracy_icm_vs_gold": _v(acc_gold),
        "cohen_kappa_icm_vs_gold": _v(kap_gold),
        "accuracy_majority_vs_gold": _v(accuracy(*_pair(majority, gold))) if gold else None,
        "fleiss_kappa_crowd": _v(fleiss),
        "krippendorff_alpha_crowd": _v(alpha),
        "icm_expected_calibration_error_vs_majority": None if ece is None else round(ece, 6),
        "class_balance": {"icm": dict(Counter(icm.values())), "crowd_votes": dict(Counter(c.label for c in inp.crowd)),
                          "majority": dict(Counter(majority.values()))},
        "aggregation": agg_rows,
        "annotators": [{"worker": a.worker, "n_tasks": a.n_tasks,
                        "accuracy_vs_majority": _v(a.accuracy_vs_majority),
                        "accuracy_vs_gold": _v(a.accuracy_vs_gold),
                        "cohen_kappa_vs_icm": _v(a.cohen_kappa_vs_icm),
                        "accuracy_vs_icm": _v(a.accuracy_vs_icm)} for a in annotators],
        "disagreements": {"thresholds": vars(th), "counts": dict(Counter(d.kind for d in dis)),
                          "top": [d.to_json() for d in dis[:50]]},
        "null_reasons": reasons,
        "warnings": inp.warnings,
        "source": inp.source,
    }
    return CompareResult(inp, summary, annotators, aggs, dis, rel, (names, kmatrix), confusions)
