"""The HTML page of a risk report (engine.risk): the table (estimated, audited and bound side by side), the
notes, and the coverage-error curve, estimated and, when gold labels are given, true. One self-contained
file, like the crowd comparison's report (plots as data: URIs)."""

from __future__ import annotations

import html
from pathlib import Path

from icm_backend.compare.plots import _png, plt
from icm_backend.compare.report_html import _CSS
from icm_backend.engine.risk import CurvePoint, RiskReport


def curve_png(report: RiskReport, true: list[CurvePoint] | None = None, title: str = "") -> str:
    """Estimated error (and true error) against coverage, the targets as lines, the safe sets as dots and the
    certified sets as squares with their bound."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if report.curve:
        ax.plot([p.coverage for p in report.curve], [p.estimated_error for p in report.curve], "-",
                color="tab:blue", label="estimated error, mean(1 - confidence)")
    if true:
        ax.plot([p.coverage for p in true], [p.estimated_error for p in true], "-", color="tab:red",
                label="true error (gold labels)")
    for t in report.config.targets:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
        ax.annotate(f"target {t:.0%}", (0.0, t), textcoords="offset points", xytext=(2, 2), fontsize=7, color="grey")
    for s in report.safe_sets:
        if s.size:
            ax.plot([s.coverage], [s.estimated_error], "o", color="tab:blue")
    for c in report.certified:
        if c.certified:
            ax.plot([c.coverage], [c.bound], "s", color="tab:green")
            ax.annotate(f"certified ≤{c.target:.0%}: bound {c.bound:.1%}", (c.coverage, c.bound),
                        textcoords="offset points", xytext=(4, 4), fontsize=7, color="tab:green")
    top = max([p.estimated_error for p in report.curve] + [p.estimated_error for p in (true or [])]
              + list(report.config.targets) + [0.05])
    ax.set(xlim=(0, 1), ylim=(0, min(1.0, top * 1.1)), xlabel="coverage (share of the labelled tasks accepted)",
           ylabel="error of the accepted set", title=title or "Coverage-error curve (most confident first)")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def _e(x) -> str:
    return html.escape(str(x))


def _cell(v) -> str:
    if v is None:
        return '<span class="muted">-</span>'
    if isinstance(v, float):
        return f"{v:.1%}" if v <= 1 else f"{v:.3f}"
    return _e(v)


def page(report: RiskReport, true: list[CurvePoint] | None = None, true_errors: dict[float, dict] | None = None,
         title: str = "Accept with a stated error") -> str:
    """The page's HTML. `true_errors`: per target, {"estimated set": err, "accepted set": err} from gold."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{_e(title)}</title><style>{_CSS}</style>",
             f"<h1>{_e(title)}</h1>"]
    if not report.reliable:
        parts.append("<p class='warn'>No safe set: the labelling is unreliable: " + _e("; ".join(report.reasons))
                     + "</p>")
    for w in report.warnings:
        parts.append(f"<p class='warn'>{_e(w)}</p>")
    audit = ("no audit drawn" if report.audit is None else
             f"audit: {report.audit_labelled} of {len(report.audit.keys)} sampled tasks labelled (a uniform sample "
             f"of the {report.audit.drawn_from} most confident), bound: one-sided Clopper-Pearson at "
             f"{report.audit.level:.0%}")
    parts.append(f"<p>{report.n} labelled tasks, {report.candidates} not flagged for review; {_e(audit)}.</p>")
    header = ["target", "status", "estimated set: tasks", "coverage", "estimated error", "audited in set", "wrong",
              "audited error", "95% bound", "accepted: tasks", "coverage"]
    if true_errors:
        header += ["true error, estimated set", "true error, accepted set"]
    rows = []
    for r in report.rows():
        row = [r["target"], r["status"], r["estimated_size"], r["estimated_coverage"], r["estimated_error"],
               r["audited"], r["wrong"], r["observed_error"], r["bound"], r["accepted_size"], r["accepted_coverage"]]
        if true_errors:
            te = true_errors.get(r["target"], {})
            row += [te.get("estimated set"), te.get("accepted set")]
        rows.append(row)
    parts.append("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td class='num'>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>")
    notes = [c.note for c in report.certified if c.note]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    parts.append(f"<div class='plots'><img alt='coverage-error curve' src='data:image/png;base64,"
                 f"{curve_png(report, true)}'></div>")
    parts.append("<p class='muted'>Estimated error = mean of 1 - confidence over the set; the audited bound holds "
                 "for the set's error rate with 95% confidence, the set having been chosen by fixed-sequence "
                 "testing before the audit's labels were seen (icm_backend/engine/risk.py).</p>")
    return "\n".join(parts)


def write_page(path: str | Path, report: RiskReport, **kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(report, **kw), encoding="utf-8")
    return path
