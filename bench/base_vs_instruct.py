"""Why base models suit ICM better than instruct models: how much the labels in the context move the
model's predictions (ICM's signal, mutual predictability), and how calibrated its label scores are.

    python bench/base_vs_instruct.py [--models gemma3-270m,smollm2-135m] [--rows 128]

For each model, on SST-2 dev rows 100..: zero-shot, random-label few-shot and gold-label few-shot
accuracy, ECE of the gold few-shot confidences, and the share of next-token probability mass on the two
label words at the cue (in gold few-shot context). "context gain" = gold few-shot - random few-shot
accuracy: what correct labels in context are worth, the quantity ICM's search climbs. The two local
models differ in family and size as well as in tuning (the only two that ship offline): read the
comparison as indicative; with the weights at hand, compare a base model and its own instruct variant
(--models org/base,org/base-instruct, local folders or hub ids).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from icm_backend.engine.evaluate import evaluate  # noqa: E402
from icm_backend.engine.labeler import label_rows  # noqa: E402
from icm_backend.engine.model import load_lm  # noqa: E402
from icm_backend.engine.scorer import TransformersScorer  # noqa: E402
from icm_backend.engine.tasks import build_problem  # noqa: E402

LABELS = ["negative", "positive"]


def label_mass(lm, problem, gold, n_ctx: int = 8) -> float:
    """Mean probability the model puts on the label tokens (of the whole vocabulary) at the cue."""
    import torch

    tok = lm.tokenizer
    ids = [tok.encode(" " + w, add_special_tokens=False)[0] for w in LABELS]
    prefix = "".join(f"{ex.prompt} {LABELS[g]}\n\n" for ex, g in zip(problem.examples[:n_ctx], gold[:n_ctx]))
    masses = []
    for ex in problem.examples[n_ctx:n_ctx + 48]:
        seq = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + tok.encode(prefix + ex.prompt,
                                                                                        add_special_tokens=False)
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([seq], device=lm.device)).logits[0, -1].float()
        masses.append(float(torch.softmax(logits, -1)[ids].sum()))
    return float(np.mean(masses))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gemma3-270m,smollm2-135m")
    ap.add_argument("--rows", type=int, default=128)
    args = ap.parse_args(argv)
    lines = (REPO / "data" / "sst2" / "dev.tsv").read_text().splitlines()[101:101 + args.rows]
    rows = [{"text": line.split("\t")[0].strip(), "label": line.split("\t")[1]} for line in lines]
    inputs = [{"text": r["text"]} for r in rows]
    gold = [int(r["label"]) for r in rows]
    problem = build_problem(inputs, "classify", LABELS)
    out = []
    for name in args.models.split(","):
        lm = load_lm(name, quantize="none")
        scorer = TransformersScorer(lm, LABELS)
        acc = {}
        ece = None
        for method in ("zero-shot", "random-fewshot", "gold-fewshot"):
            preds = label_rows(inputs, task="classify", labels=LABELS, method=method, model=scorer, seed=0,
                               gold=[r["label"] for r in rows])
            rep = evaluate(preds, rows, problem)
            acc[method] = rep.accuracy
            if method == "gold-fewshot":
                ece = rep.ece
        out.append((name, acc, ece, label_mass(lm, problem, gold)))
    print(f"\nSST-2 dev, {args.rows} rows, seed 0\n")
    print(f"{'model':16} {'zero-shot':>9} {'random-fs':>9} {'gold-fs':>8} {'context gain':>12} {'ECE gold-fs':>11} "
          f"{'label mass':>10}")
    for name, acc, ece, mass in out:
        print(f"{name:16} {acc['zero-shot']:9.3f} {acc['random-fewshot']:9.3f} {acc['gold-fewshot']:8.3f} "
              f"{acc['gold-fewshot'] - acc['random-fewshot']:+12.3f} {ece:11.3f} {mass:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
