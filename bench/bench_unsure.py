"""Does the model say "unsure" where it does not know? Mean confidence vs accuracy, and the labelling's
reliability verdict, on the paper's GSM8K-verification and TruthfulQA claims (and SST-2 as the control
where the model does know).

    python bench/bench_unsure.py --datasets gsm8k,truthfulqa,sst2 --n-paper 32 --n-sst2 128 --icm-max-iters 64

Per dataset: ICM labels the rows (gold never read), then accuracy against gold, the mean reported
confidence (the calibrated probability of the chosen label), ECE, and the engine's assessment
(estimated accuracy, what calibrated it, reliable or not and why). Appends to OUT/results.jsonl.
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

from bench_icm import load_dataset  # noqa: E402
from icm_backend.engine.evaluate import calibration  # noqa: E402
from icm_backend.engine.labeler import label_rows  # noqa: E402
from icm_backend.engine.search import SearchConfig  # noqa: E402
from icm_backend.engine.tasks import build_problem, gold_label  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: the embedded gemma3-270m")
    ap.add_argument("--datasets", default="gsm8k,truthfulqa,sst2")
    ap.add_argument("--n-paper", type=int, default=32)
    ap.add_argument("--n-sst2", type=int, default=128)
    ap.add_argument("--icm-max-iters", type=int, default=None)
    ap.add_argument("--paper-context-tokens", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench_unsure")
    args = ap.parse_args()
    import torch

    from icm_backend.engine.model import load_lm
    from icm_backend.finetune.lora import training_threads

    torch.set_num_threads(training_threads())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_lm(args.model)
    rows_out = []
    for name in args.datasets.split(","):
        rows, gold, task, labels = load_dataset(name, args.n_sst2, args.n_paper)
        problem = build_problem(rows, task, labels)
        gold_words = [gold_label(g, problem) for g in gold]
        cfg = SearchConfig(max_iters=args.icm_max_iters,
                           context_tokens=384 if name == "sst2" else args.paper_context_tokens)
        t0 = time.monotonic()
        preds = label_rows(rows, task=task, labels=labels, method="icm", model=lm, seed=args.seed, config=cfg)
        correct = np.array([p.label == g for p, g in zip(preds, gold_words)], dtype=float)
        conf = np.array([p.confidence for p in preds])
        ece, _ = calibration(conf, correct)
        a = preds.assessment
        rec = {"dataset": name, "n": len(rows), "seed": args.seed, "accuracy": float(correct.mean()),
               "mean_confidence": float(conf.mean()), "ece": float(ece), "seconds": round(time.monotonic() - t0, 1),
               "label_share": {w: float(np.mean([p.label == w for p in preds])) for w in problem.label_words},
               "flagged": sum(bool(p.flags) for p in preds), "assessment": a.to_json()}
        rows_out.append(rec)
        with (out / "results.jsonl").open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{name}: acc {rec['accuracy']:.3f} mean conf {rec['mean_confidence']:.3f} ECE {ece:.3f} "
              f"{a.summary()} ({rec['seconds']:.0f}s)", flush=True)
    print("\n| dataset | n | accuracy | mean confidence | |conf - acc| | ECE | verdict | flagged |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows_out:
        a = r["assessment"]
        verdict = "reliable" if a["reliable"] else "UNRELIABLE"
        print(f"| {r['dataset']} | {r['n']} | {r['accuracy']:.3f} | {r['mean_confidence']:.3f} | "
              f"{abs(r['mean_confidence'] - r['accuracy']):.3f} | {r['ece']:.3f} | {verdict} | {r['flagged']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
