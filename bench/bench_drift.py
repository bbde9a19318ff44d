"""One-class drift: how often ICM's label share departs from the calibrated marginal, and what the guard
costs when the classes really are imbalanced.

    python bench/bench_drift.py --data data/sst2/dev.tsv --labels negative,positive \\
        --n 400 --mixes 0.5,0.8,0.2 --seeds 0,1 --json runs/drift.json

For each mix (share of the first label) a set of N tasks is drawn from the file at that share (a fixed
shuffle, so every seed sees the same set). ICM runs once per (mix, seed); the same scores are then assessed
twice, with the drift guard on and off (engine.calibration.assess), so the two columns differ only by the
guard. The gold labels are used to draw the mixes and to score, never by the labelling.

The guard (ReviewConfig.drift_guard) fires when the share of a label departs from the calibrated marginal
(the mean calibrated probability) by more than `drift_tolerance`, on a problem without consistency rules;
it re-biases the labels towards the marginal. Its cost is accuracy lost when the departure was real.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loop import read_data  # noqa: E402
from icm_backend.engine.calibration import ReviewConfig, assess  # noqa: E402
from icm_backend.engine.labeler import make_scorer, run_method, zero_shot_rows  # noqa: E402
from icm_backend.engine.search import SearchConfig  # noqa: E402
from icm_backend.engine.tasks import build_problem  # noqa: E402
from icm_backend.errors import InputError  # noqa: E402


def draw(rows: list[dict], gold: list[str], labels: list[str], share: float, n: int) -> tuple[list[dict], list[str]]:
    """N rows with `share` of labels[0] (the rest spread over the others), in a fixed shuffled order."""
    order = np.random.default_rng(1234).permutation(len(rows))
    want = {labels[0]: round(n * share)}
    for w in labels[1:]:
        want[w] = (n - want[labels[0]]) // (len(labels) - 1)
    picked = []
    for i in order:
        if want.get(gold[i], 0) > 0:
            want[gold[i]] -= 1
            picked.append(int(i))
    if any(v > 0 for v in want.values()):
        raise InputError(f"--n {n} at share {share}: the file has too few rows of {[w for w, v in want.items() if v > 0]}")
    return [rows[i] for i in picked], [gold[i] for i in picked]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--mixes", default="0.5,0.8,0.2", help="shares of the first label")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--max-iters", type=int, default=None)
    ap.add_argument("--context-tokens", type=int, default=384)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    try:
        labels = [w.strip() for w in args.labels.split(",") if w.strip()]
        rows, gold = read_data(args.data, labels, None)
        mixes = [float(m) for m in args.mixes.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from icm_backend.engine.model import load_lm

    lm = load_lm(args.model, "none")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for mix in mixes:
        set_rows, set_gold = draw(rows, gold, labels, mix, args.n)
        problem = build_problem(set_rows, "classify", labels)
        scorer = make_scorer(lm, problem.label_words)
        truth = np.array([problem.label_words.index(g) for g in set_gold])
        for seed in seeds:
            t0 = time.monotonic()
            holder: dict = {}
            y, first = run_method(problem, scorer, "icm", seed, SearchConfig(max_iters=args.max_iters,
                                  context_tokens=args.context_tokens), holder=holder,
                                  window=getattr(lm, "context_window", None))
            score_rows = [first] + holder["search"].resampled_rows(y, ReviewConfig().resamples, seed)
            zs = zero_shot_rows(problem, scorer)
            rec = {"mix": mix, "seed": seed, "n": len(set_rows), "seconds": round(time.monotonic() - t0, 1),
                   "search_accuracy": round(float((y == truth).mean()), 4),
                   "search_share_first": round(float((y == 0).mean()), 4)}
            for guard in (False, True):
                preds, rep = assess(problem, score_rows, zs, {}, ReviewConfig(drift_guard=guard), use_consistency=True)
                acc = float(np.mean([p.label == g for p, g in zip(preds, set_gold)]))
                share = float(np.mean([p.label == labels[0] for p in preds]))
                key = "guard" if guard else "no_guard"
                rec[key] = {"accuracy": round(acc, 4), "share_first": round(share, 4), "drift": rep.drift,
                            "corrected": rep.drift_corrected, "reliable": rep.reliable,
                            "mean_confidence": rep.mean_confidence}
            results.append(rec)
            print(json.dumps(rec), flush=True)
            out.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"\nDrift guard on SST-2 mixes ({args.n} tasks each, model {args.model}); share = share of '{labels[0]}'\n")
    print("| true share | seed | ICM share | drift vs marginal | guard fired | acc, no guard | acc, guard | cost |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        a, b = r["no_guard"], r["guard"]
        print(f"| {r['mix']:.2f} | {r['seed']} | {a['share_first']:.3f} | {a['drift']:.3f} | {'yes' if b['corrected'] else 'no'} "
              f"| {a['accuracy']:.3f} | {b['accuracy']:.3f} | {a['accuracy'] - b['accuracy']:+.3f} |")
    departed = sum(1 for r in results if r["guard"]["corrected"])
    print(f"\nthe guard fired in {departed} of {len(results)} runs; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
