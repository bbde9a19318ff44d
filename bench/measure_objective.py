"""P(D) of hand-made labellings of 48 SST-2 dev sentences: why classification needs a guard.

    python bench/measure_objective.py [MODEL] [CONTEXT_TOKENS]

Prints, for all-negative, all-positive, gold, shuffled gold, random and flipped labellings, the raw
mutual predictability (sum of normalised label log-probs, the paper's P) and the calibrated one ICM uses
for multi-class tasks (each term minus the log of the label's mean probability under the same context).
Gold labels are read here only to build the labellings being compared.
"""

import sys
from pathlib import Path

import numpy as np

from icm_backend.engine.consistency import Consistency
from icm_backend.engine.context import ContextPlan, ScoreCache
from icm_backend.engine.model import load_lm
from icm_backend.engine.objective import Objective
from icm_backend.engine.scorer import TransformersScorer
from icm_backend.engine.tasks import build_problem

DEV = Path(__file__).resolve().parents[1] / "data" / "sst2" / "dev.tsv"


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "gemma3-270m"
    budget = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    lines = [line.split("\t") for line in DEV.read_text().splitlines()[1:]][:48]
    rows = [{"text": t} for t, _ in lines]
    gold = np.array([int(label) for _, label in lines])
    problem = build_problem(rows, "classify", ["negative", "positive"])
    scorer = TransformersScorer(load_lm(model), problem.label_words)
    plan = ContextPlan(problem, scorer, np.random.default_rng(0), context_tokens=budget, fold_size=12)
    cache = ScoreCache(plan)
    raw = Objective(cache, Consistency(problem), 1.0, calibrate=False)
    calibrated = Objective(cache, Consistency(problem), 1.0, calibrate=True)
    r = np.random.default_rng(1)
    labellings = {"all negative": np.zeros(48, int), "all positive": np.ones(48, int), "gold": gold,
                  "gold shuffled 1": r.permutation(gold), "gold shuffled 2": r.permutation(gold),
                  "random": r.integers(0, 2, 48), "gold flipped": 1 - gold}
    print(f"{'labelling':18} {'P raw':>8} {'P calibrated':>13} {'agreement':>10}")
    for name, labels in labellings.items():
        print(f"{name:18} {raw(labels).predictability:8.1f} {calibrated(labels).predictability:13.1f} "
              f"{np.mean(labels == gold):10.2f}")


if __name__ == "__main__":
    main()
