"""The promotion gate: a trained version serves only if the served method does better with it.

On the held-out slice of the accepted labels (the slice training never fitted; it did pick the early-
stopping step, which favours the new version a little), both the serving version and the new one run
the served method the way it serves: the other accepted labels fixed in context, the held-out rows
labelled. A new version that does not pass the rule below is kept on disk, not served, and the reason
is recorded.

The rule is an exact one-sided sign test (McNemar) on the discordant held-out rows: b rows only the new
version gets right, c rows only the serving one does. The new version serves iff b > c and

    P(X >= b | X ~ Binomial(b + c, 1/2)) <= alpha          (alpha = 0.2 by default)

Why not "higher accuracy wins": the held-out slice is small (a fifth of 32-128 accepted labels), and one
row more of 7 is luck as often as not (p = 0.5). Measured on the review-loop bench (SST-2, 4 rounds,
4 runs): a gate that promoted on one row, or on a tie with a higher p(true label), promoted five versions;
three of them lowered ICM's accuracy on the tasks never reviewed. Mean p(true label) is reported, not
used: a fine-tuned model that is sure of 7 easy rows says little about the other 400.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from math import comb

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.2  # the sign test's level (module docstring)


@dataclass
class GateScore:
    accuracy: float
    p_true: float  # mean probability of the true label (binary: conf if right, 1 - conf if wrong)
    seconds: float
    right: list[bool] = field(default_factory=list)  # per held-out row, in order


@dataclass
class GateResult:
    promoted: bool
    reason: str
    method: str
    n: int
    serving_version: str
    new: dict = field(default_factory=dict)
    serving: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)  # the sign test: b, c, p, alpha

    def to_json(self) -> dict:
        return asdict(self)


def served_method_score(model, rows: list[dict], gold: list[str], fixed: dict[int, str], task: str,
                        labels: list[str] | None, method: str, seed: int = 0, max_iters: int | None = None) -> GateScore:
    """Accuracy of `method` with `model` on the rows not in `fixed` (the others fixed in context)."""
    from icm_backend.engine.calibration import ReviewConfig
    from icm_backend.engine.labeler import label_rows
    from icm_backend.engine.search import SearchConfig

    t0 = time.monotonic()
    preds = label_rows(rows, task=task, labels=labels, method=method, model=model, seed=seed, fixed=fixed,
                       config=SearchConfig(max_iters=max_iters), review=ReviewConfig(resamples=0))
    k = len(labels) if labels else 2
    right, p_true = [], []
    for p, g in zip(preds, gold):
        if p.fixed:
            continue
        ok = p.label == g
        right.append(ok)
        p_true.append(p.confidence if ok else (1.0 - p.confidence) / max(k - 1, 1))
    n = max(len(right), 1)
    return GateScore(sum(right) / n, sum(p_true) / n, round(time.monotonic() - t0, 1), right)


def sign_test(new_right: list[bool], old_right: list[bool]) -> tuple[int, int, float]:
    """(b, c, one-sided p): b rows only the new version gets right, c only the old; p = P(X >= b), X ~ Bin(b+c, 1/2)."""
    b = sum(1 for x, y in zip(new_right, old_right) if x and not y)
    c = sum(1 for x, y in zip(new_right, old_right) if y and not x)
    n = b + c
    p = sum(comb(n, k) for k in range(b, n + 1)) / 2 ** n if n else 1.0
    return b, c, p


def gate(train_rows: list[tuple[dict, str]], heldout_rows: list[tuple[dict, str]], task: str,
         labels: list[str] | None, method: str, serving_model: str, serving_name: str, new_model: str,
         seed: int = 0, max_iters: int | None = None, alpha: float = DEFAULT_ALPHA) -> GateResult:
    """Compare the serving model and the new one on `heldout_rows` ((row, label word) pairs)."""
    from icm_backend.engine.model import load_lm

    if not heldout_rows:
        return GateResult(False, "no held-out slice of the accepted labels (too few labels to test the new "
                                 "version on); kept, not served", method, 0, serving_name)
    rows = [r for r, _ in train_rows] + [r for r, _ in heldout_rows]
    gold = [g for _, g in train_rows] + [g for _, g in heldout_rows]
    fixed = {i: g for i, (_, g) in enumerate(train_rows)}
    scores = {}
    for which, path in (("serving", serving_model), ("new", new_model)):
        lm = load_lm(path, "none")
        scores[which] = served_method_score(lm, rows, gold, fixed, task, labels, method, seed, max_iters)
        del lm
    new, old = scores["new"], scores["serving"]
    b, c, p = sign_test(new.right, old.right)
    better = b > c and p <= alpha
    verdict = "promoted" if better else "kept, not served"
    reason = (f"{verdict}: {method} on {len(heldout_rows)} held-out accepted labels: accuracy {new.accuracy:.3f} "
              f"(p(true label) {new.p_true:.3f}) vs {old.accuracy:.3f} ({old.p_true:.3f}) with the serving "
              f"version {serving_name}; {b} rows only the new version gets right, {c} only the serving one "
              f"(sign test p = {p:.2f}, {'<=' if p <= alpha else '>'} {alpha})")
    log.info("gate: %s", reason)
    return GateResult(better, reason, method, len(heldout_rows), serving_name, asdict(new), asdict(old),
                      {"b": b, "c": c, "p": round(p, 4), "alpha": alpha})
