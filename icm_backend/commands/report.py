"""`icm-backend report LABELS.jsonl [--audit AUDITED] [--gold INPUT] [--html OUT.html]`: accept with a stated
error, outside Label Studio (engine.risk).

Prints, per target error, the estimated safe set (most confident first), and once the audit's rows are
labelled, the audited error and its 95% bound side by side, and which set may be accepted. The audit sample
is drawn with --seed: `--audit-out FILE` writes its row indices for people to label (without the model's
label: the audit is blind); `--audit FILE` reads their labels back (rows {"index", "label"}) with the same
--seed. `--gold INPUT` (the input file with its gold column) adds the true error of each set; with
`--audit-from-gold` the audit's labels are taken from gold (an evaluation, not an audit).
"""

from __future__ import annotations

import json
from pathlib import Path

from icm_backend.commands.label import parse_labels
from icm_backend.engine.io import read_predictions, read_rows
from icm_backend.engine.risk import (RiskConfig, apply_audit, from_predictions, plan_audit, risk_report, true_curve,
                                     true_error)
from icm_backend.engine.tasks import Problem, gold_label
from icm_backend.errors import InputError


def parse_targets(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--targets {text!r}: expected error rates such as 0.01,0.02,0.05") from None


def add_subcommands(sub) -> None:
    p = sub.add_parser("report", help="which labels can be accepted unread, and how wrong that will be",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("labels", help="output of `icm-backend label` (JSONL)")
    p.add_argument("--targets", default="0.01,0.02,0.05", help="target error rates (default 0.01,0.02,0.05)")
    p.add_argument("--primary", type=float, help="the target the audit is sized for (default: the largest)")
    p.add_argument("--level", type=float, default=0.95, help="confidence of the audited bound (default 0.95)")
    p.add_argument("--audit-size", type=int, help="tasks to audit (default: from the primary target and level)")
    p.add_argument("--seed", type=int, default=0, help="the audit sample's seed (use the same one to read it back)")
    p.add_argument("--audit-out", help="write the audit sample's row indices here (JSONL), to be labelled")
    p.add_argument("--audit", help="the audited rows' human labels (rows with index and label)")
    p.add_argument("--gold", help="the input file with its gold column: adds the true errors")
    p.add_argument("--gold-field", default="label")
    p.add_argument("--labels", dest="label_words",
                   help="label words when gold holds class indices (e.g. negative,positive)")
    p.add_argument("--audit-from-gold", action="store_true", help="take the audit's labels from --gold")
    p.add_argument("--html", help="write the HTML page (table and coverage-error curve) here")
    p.add_argument("--json", help="write the report as JSON here")
    p.set_defaults(func=run)


def gold_correct(preds, gold_path: str, gold_field: str, labels: list[str] | None) -> dict[int, bool]:
    """{row index: the label equals gold}; gold rows are the input's, in order (what `label` indexes)."""
    rows = read_rows(gold_path)
    words = labels or sorted({p.label for p in preds})
    multiclass = not set(words) <= {"True", "False"}
    problem = Problem("classify" if multiclass else "claims", words if multiclass else ["True", "False"], [], "none",
                      multiclass=multiclass)
    if not any(gold_field in r for r in rows):
        raise InputError(f"--gold-field {gold_field}: no row of {gold_path} has that column")
    out = {}
    for p in preds:
        if p.index >= len(rows):
            raise InputError(f"--gold {gold_path}: {len(rows)} rows, but the labels file has row {p.index}")
        g = gold_label(rows[p.index].get(gold_field), problem)
        if g is not None:
            out[p.index] = p.label.lower() == g.lower()
    return out


def audit_correct(preds, path: str) -> dict[int, bool]:
    by_index = {p.index: p.label for p in preds}
    out = {}
    for i, r in enumerate(read_rows(path)):
        if "index" not in r or "label" not in r:
            raise InputError(f"--audit {path}: row {i}: expected fields 'index' and 'label'")
        idx = int(r["index"])
        if idx not in by_index:
            raise InputError(f"--audit {path}: row {i}: index {idx} is not in the labels file")
        if str(r["label"]).strip():
            out[idx] = str(r["label"]).strip().lower() == by_index[idx].lower()
    return out


def run(args) -> int:
    preds = read_predictions(args.labels)
    items, reliable, reasons = from_predictions(preds)
    config = RiskConfig(targets=parse_targets(args.targets), primary=args.primary, level=args.level)
    report = risk_report(items, reliable, reasons, config)
    plan = plan_audit(report, seed=args.seed, size=args.audit_size, items=items)
    gold = gold_correct(preds, args.gold, args.gold_field, parse_labels(args.label_words)) if args.gold else None
    if args.audit_from_gold and gold is None:
        raise InputError("--audit-from-gold needs --gold")
    if plan is not None:
        report.audit = plan
        if args.audit_out:
            Path(args.audit_out).write_text("".join(json.dumps({"index": k}) + "\n" for k in plan.keys))
            print(f"audit: {len(plan.keys)} rows to label written to {args.audit_out} (seed {args.seed})")
        if args.audit or args.audit_from_gold:
            correct = gold if args.audit_from_gold else audit_correct(preds, args.audit)
            apply_audit(items, report, plan, {k: correct[k] for k in plan.keys if k in correct})
    print(report.table())
    truths = None
    if gold is not None:
        truths = {}
        for s in report.safe_sets:
            c = report.certified_for(s.target)
            truths[s.target] = {"estimated set": true_error(s.keys, gold),
                                "accepted set": true_error(c.keys, gold) if c is not None and c.certified else None}
            shown = ", ".join(f"{k} {'-' if v is None else f'{v:.1%}'}" for k, v in truths[s.target].items())
            print(f"true error at {s.target:.1%} (gold): {shown}")
    if args.html:
        from icm_backend.compare.risk_page import write_page

        path = write_page(args.html, report, true=true_curve(items, gold) if gold else None, true_errors=truths,
                          title=f"Accept with a stated error: {Path(args.labels).name}")
        print(f"page: {path}")
    if args.json:
        Path(args.json).write_text(json.dumps({**report.to_json(), "table": report.rows(), "true_errors": truths},
                                              indent=1))
    return 0
