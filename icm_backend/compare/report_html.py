"""The HTML report: one self-contained file (inline CSS, plots as data: URIs) for a browser."""

from __future__ import annotations

import html
import json
from pathlib import Path

from icm_backend.compare.data import Stat
from icm_backend.compare.disagreements import KINDS
from icm_backend.compare.pipeline import CompareResult
from icm_backend.compare.plots import confusion_png, heatmap_png, reliability_png

MAX_DISAGREEMENT_ROWS = 100

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f0f0f0}.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff4d6;border-left:4px solid #e0a800;padding:0.4em 0.8em;margin:0.3em 0}
.plots img{margin:0.5em;border:1px solid #ddd;vertical-align:top}.muted{color:#777}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _num(v) -> str:
    if isinstance(v, Stat):
        return _num(v.value) if v.value is not None else f'<span class="muted" title="{_e(v.reason)}">n/a</span>'
    if v is None:
        return '<span class="muted">n/a</span>'
    return f"{v:.3f}" if isinstance(v, float) else _e(v)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{_num(c)}</td>' if not isinstance(c, str)
                                    else f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def render_html(result: CompareResult, title: str = "ICM vs crowd labels") -> str:
    s = result.summary
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
             f"<p class='muted'>{_e(s['source'])}</p>"]
    for w in s["warnings"]:
        parts.append(f"<div class='warn'>{_e(w)}</div>")

    parts.append("<h2>Headline</h2>")
    keys = ["n_tasks", "n_tasks_both", "n_annotators", "n_crowd_votes", "n_majority_ties",
            "accuracy_icm_vs_majority", "cohen_kappa_icm_vs_majority", "accuracy_icm_vs_dawid_skene",
            "cohen_kappa_icm_vs_dawid_skene", "accuracy_icm_vs_gold", "cohen_kappa_icm_vs_gold",
            "accuracy_majority_vs_gold", "fleiss_kappa_crowd", "krippendorff_alpha_crowd",
            "icm_expected_calibration_error_vs_majority"]
    parts.append(_table(["measure", "value", "why n/a"],
                        [[k, s[k], s["null_reasons"].get(k, "")] for k in keys]))
    cb = s["class_balance"]
    parts.append("<p>Class balance: " + "; ".join(f"{_e(k)} {_e(json.dumps(v))}" for k, v in cb.items()) + "</p>")

    parts.append("<h2>Plots</h2><div class='plots'>")
    parts.append(_img(reliability_png(result.reliability), "reliability diagram"))
    names, matrix = result.pairwise
    parts.append(_img(heatmap_png(names, matrix, "Pairwise Cohen's kappa"), "annotator agreement heatmap"))
    for t, c in result.confusions.items():
        parts.append(_img(confusion_png(c["labels"], c["matrix"], c["row_name"], c["col_name"], t),
                          f"confusion matrix: {t}"))
    parts.append("</div>")

    parts.append("<h2>Annotators</h2>")
    parts.append(_table(["worker", "tasks", "accuracy vs majority", "accuracy vs gold", "Cohen's kappa vs ICM",
                         "accuracy vs ICM"],
                        [[a.worker, a.n_tasks, a.accuracy_vs_majority, a.accuracy_vs_gold, a.cohen_kappa_vs_icm,
                          a.accuracy_vs_icm] for a in result.annotators]))

    parts.append("<h2>Aggregation (crowd-kit)</h2>")
    parts.append(_table(["method", "tasks", "ties", "accuracy vs gold", "agreement with ICM", "changed by ICM vote"],
                        [[k, r["n_tasks"], r["n_ties"], r["accuracy_vs_gold"], r["agreement_with_icm"],
                          r.get("n_changed_by_icm", "")] for k, r in s["aggregation"].items()]))

    d = s["disagreements"]
    parts.append("<h2>Disagreements worth a look</h2><p>" + "; ".join(
        f"{_e(k)}: {d['counts'].get(k, 0)}" for k in KINDS) + f" — thresholds {_e(json.dumps(d['thresholds']))}</p>")
    parts.append(_table(["rank", "task", "kind", "score", "ICM", "confidence", "votes", "gold", "why"],
                        [[i + 1, x.task, x.kind, x.score, x.icm_label, x.icm_confidence, json.dumps(x.votes),
                          x.gold or "", x.reason] for i, x in enumerate(result.disagreements[:MAX_DISAGREEMENT_ROWS])]))
    if len(result.disagreements) > MAX_DISAGREEMENT_ROWS:
        parts.append(f"<p class='muted'>{len(result.disagreements) - MAX_DISAGREEMENT_ROWS} more in the JSON summary "
                     "(top 50) or via the library.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html_report(result: CompareResult, path: str | Path, title: str = "ICM vs crowd labels") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result, title), encoding="utf-8")
    return path
