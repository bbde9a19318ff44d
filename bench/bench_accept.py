"""Accept with a stated error, on the shipped path: does the audited bound hold?

Reads label files written by the product's own CLI (`icm-backend label ... --out X.jsonl`) and the input
file's gold labels, and for each target error:

- the estimated safe set (engine.risk.safe_set: most confident first, mean(1 - confidence) <= target): its
  size, its estimated error and its TRUE error (gold);
- `--draws` (200) random audits, each the product's own audit (engine.risk.plan_audit, sized for that target)
  labelled with gold, then the product's re-choice (apply_audit): how often the audited 95% bound held
  (the true error of the chosen set <= its bound; a draw that certifies nothing claims nothing and counts as
  held; must be >= 95% of draws), how often a set was certified, the mean coverage after the audit and the
  audit size.

Saves a plot of the coverage-error curve, estimated against true, per file (OUT/accept_curve.png) and the
figures (OUT/accept.json). `--chance FILE --chance-gold INPUT` checks a labelling where the model is at
chance (GSM8K-style claims): the report must offer no safe set.

The SST-2 run (what docs/label_studio.md quotes; 872 dev rows, seeds 0-2, default model):

    for s in 0 1 2; do icm-backend label DEV.tsv --task classify --labels negative,positive --seed $s \\
        --out sst2-dev-s$s.jsonl; done
    python bench/bench_accept.py --labels sst2-dev-s0.jsonl sst2-dev-s1.jsonl sst2-dev-s2.jsonl \\
        --gold DEV.tsv --label-words negative,positive --out bench/results/accept
    # and, for the chance check (a GSM8K slice labelled the same way):
    #   --chance gsm8k.jsonl --chance-gold GSM8K.json

No path is built in: every file comes from the command line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icm_backend.commands.report import gold_correct, parse_targets  # noqa: E402
from icm_backend.engine.io import read_predictions  # noqa: E402
from icm_backend.engine.risk import (RiskConfig, apply_audit, from_predictions, plan_audit, risk_report,  # noqa: E402
                                     true_curve, true_error)


def audits(items, gold: dict[int, bool], target: float, draws: int, level: float, size: int | None) -> dict:
    """`draws` audits sized for `target`, labelled with gold; the bound's record."""
    cfg = RiskConfig(targets=(target,), level=level)
    held = certified = 0
    coverages, sizes, bounds, true_errs = [], [], [], []
    for seed in range(draws):
        report = risk_report(items, config=cfg)
        plan = plan_audit(report, seed=seed, size=size, items=items)  # the product's frame, as the server's
        if plan is None:
            return {"draws": draws, "audit_size": 0, "certified": 0, "held": draws, "held_rate": 1.0,
                    "mean_coverage": 0.0, "note": "no safe set: nothing to audit"}
        apply_audit(items, report, plan, {k: gold[k] for k in plan.keys if k in gold})
        sizes.append(len(plan.keys))
        c = report.certified_for(target)
        if c is not None and c.certified:
            certified += 1
            err = true_error(c.keys, gold)
            held += err is not None and err <= c.bound
            coverages.append(c.coverage)
            bounds.append(c.bound)
            true_errs.append(err)
        else:
            held += 1
            coverages.append(0.0)
    return {"draws": draws, "audit_size": round(statistics.mean(sizes), 1), "certified": certified,
            "held": held, "held_rate": held / draws, "mean_coverage": statistics.mean(coverages),
            "mean_bound_when_certified": statistics.mean(bounds) if bounds else None,
            "mean_true_error_when_certified": statistics.mean(true_errs) if true_errs else None}


def one_file(path: str, gold_path: str, gold_field: str, words, targets, draws: int, level: float,
             size: int | None) -> dict:
    preds = read_predictions(path)
    items, reliable, reasons = from_predictions(preds)
    gold = gold_correct(preds, gold_path, gold_field, words)
    report = risk_report(items, reliable, reasons, RiskConfig(targets=targets, level=level))
    out = {"file": path, "n": len(items), "reliable": reliable, "reasons": reasons,
           "accuracy": sum(gold.values()) / max(len(gold), 1), "targets": []}
    for t in targets:
        s = report.safe_set(t)
        row = {"target": t, "size": 0 if s is None else s.size, "coverage": 0.0 if s is None else s.coverage,
               "estimated_error": None if s is None else s.estimated_error,
               "true_error": None if s is None else true_error(s.keys, gold)}
        if reliable:
            t0 = time.monotonic()
            row["audits"] = audits(items, gold, t, draws, level, size)
            row["audits"]["seconds"] = round(time.monotonic() - t0, 1)
        out["targets"].append(row)
    out["curve"] = [(p.coverage, p.estimated_error) for p in report.curve]
    out["true_curve"] = [(p.coverage, p.estimated_error) for p in true_curve(items, gold)]
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def plot(results: list[dict], targets, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, r in enumerate(results):
        color = f"C{i}"
        name = Path(r["file"]).name
        if r["curve"]:
            ax.plot(*zip(*r["curve"]), "--", color=color, label=f"{name}: estimated")
        if r["true_curve"]:
            ax.plot(*zip(*r["true_curve"]), "-", color=color, label=f"{name}: true (gold)")
    for t in targets:
        ax.axhline(t, color="grey", lw=0.7, ls=":")
    ax.set(xlim=(0, 1), ylim=(0, None), xlabel="coverage (most confident first)", ylabel="error of the accepted set",
           title="Coverage-error curve: estimated mean(1 - confidence) vs true")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", nargs="+", required=True, help="`icm-backend label` outputs (JSONL)")
    ap.add_argument("--gold", required=True, help="the labelled input file with its gold column")
    ap.add_argument("--gold-field", default="label")
    ap.add_argument("--label-words", help="label words when gold holds class indices, e.g. negative,positive")
    ap.add_argument("--targets", default="0.01,0.02,0.05")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--level", type=float, default=0.95)
    ap.add_argument("--audit-size", type=int, help="default: the product's (engine.risk.audit_size, <= 200)")
    ap.add_argument("--chance", help="a labelling where the model is at chance: the report must offer no safe set")
    ap.add_argument("--chance-gold", help="its input file with gold (for its accuracy)")
    ap.add_argument("--out", default="bench/results/accept")
    args = ap.parse_args(argv)
    targets = parse_targets(args.targets)
    words = [w.strip() for w in args.label_words.split(",")] if args.label_words else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, ok = [], True
    for path in args.labels:
        r = one_file(path, args.gold, args.gold_field, words, targets, args.draws, args.level, args.audit_size)
        results.append(r)
        head = "reliable" if r["reliable"] else "UNRELIABLE: " + "; ".join(r["reasons"])
        print(f"\n{path}: {r['n']} rows, accuracy {r['accuracy']:.3f}, {head}")
        print(f"{'target':>7} {'safe set':>8} {'est.err':>8} {'true err':>8} | {'audit':>6} {'held':>7} "
              f"{'certified':>9} {'coverage':>9} {'bound':>7} {'true':>7}")
        for row in r["targets"]:
            a = row.get("audits") or {}
            held = a.get("held_rate")
            ok &= held is None or held >= 0.95
            print(f"{row['target']:>7.1%} {row['size']:>8} {_pct(row['estimated_error']):>8} "
                  f"{_pct(row['true_error']):>8} | {a.get('audit_size', '-'):>6} {_pct(held):>7} "
                  f"{str(a.get('certified', '-')) + '/' + str(a.get('draws', '-')):>9} "
                  f"{_pct(a.get('mean_coverage')):>9} {_pct(a.get('mean_bound_when_certified')):>7} "
                  f"{_pct(a.get('mean_true_error_when_certified')):>7}")
    chance = None
    if args.chance:
        preds = read_predictions(args.chance)
        items, reliable, reasons = from_predictions(preds)
        report = risk_report(items, reliable, reasons, RiskConfig(targets=targets, level=args.level))
        offered = [s for s in report.safe_sets if s.size]
        acc = None
        if args.chance_gold:
            g = gold_correct(preds, args.chance_gold, args.gold_field, None)
            acc = sum(g.values()) / max(len(g), 1)
        chance = {"file": args.chance, "reliable": reliable, "reasons": reasons, "accuracy": acc,
                  "safe_sets": [(s.target, s.size) for s in offered]}
        print(f"\nat chance: {args.chance}: accuracy {_pct(acc)}, "
              + ("no safe set (" + ("; ".join(reasons) if reasons else "no set within any target") + ")"
                 if not offered else f"SAFE SET OFFERED: {chance['safe_sets']}"))
        ok &= not offered
    plot(results, targets, out / "accept_curve.png")
    (out / "accept.json").write_text(json.dumps({"results": results, "chance": chance}, indent=1))
    print(f"\nplot: {out / 'accept_curve.png'}; figures: {out / 'accept.json'}")
    print("bound held in >= 95% of draws for every target" + ("" if not args.chance else
                                                               ", no safe set at chance") if ok else "CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
