"""The promotion gate's rule (unit): an exact one-sided sign test on the held-out rows only one version gets
right. The real path (train, gate, serve or keep) runs in test_finetune_job and test_review_loop_e2e."""

from math import comb

import pytest

import icm_backend.engine.model as model_mod
from icm_backend.finetune import gate as gate_mod
from icm_backend.finetune.gate import GateScore, gate, sign_test


def test_sign_test_against_hand_computed_values():
    assert sign_test([True] * 3, [False] * 3) == (3, 0, 0.125)  # 1/2^3
    assert sign_test([True, False], [False, False]) == (1, 0, 0.5)
    b, c, p = sign_test([True] * 4 + [False], [False] * 4 + [True])
    assert (b, c) == (4, 1) and p == pytest.approx((comb(5, 4) + comb(5, 5)) / 32)  # 0.1875
    assert sign_test([True, True], [True, True]) == (0, 0, 1.0)  # no discordant row: nothing to go on
    assert sign_test([False, True], [True, False])[2] == 0.75  # b = c: P(X >= 1 | n = 2)


@pytest.mark.parametrize("new,old,promoted", [
    ([1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0], True),      # 3 rows only the new one gets right: p = 0.125
    ([1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0], False),     # one row more of 7 is luck as often as not
    ([1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], False),     # a tie, whatever p(true label) says
    ([1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0], True),      # 4 vs 1: p = 0.1875
    ([0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], False),     # 4 vs 3
])
def test_gate_promotes_only_on_a_credible_gain(monkeypatch, new, old, promoted):
    monkeypatch.setattr(model_mod, "load_lm", lambda path, quantize: path)
    scores = {"serving": old, "new": new}

    def fake_score(lm, rows, gold, fixed, task, labels, method, seed, max_iters):
        right = [bool(x) for x in scores[lm]]
        # the new version is always "surer" of the true label: that alone must not promote it
        p = 0.99 if lm == "new" else 0.6
        return GateScore(sum(right) / len(right), p, 0.0, right)

    monkeypatch.setattr(gate_mod, "served_method_score", fake_score)
    pairs = [({"text": f"t{i}"}, "positive") for i in range(len(new))]
    verdict = gate([({"text": "fixed"}, "negative")], pairs, "classify", ["negative", "positive"], "icm",
                   "serving", "v-serving", "new")
    assert verdict.promoted is promoted
    assert verdict.test["b"] == sum(1 for x, y in zip(new, old) if x and not y)
    assert ("promoted:" if promoted else "kept, not served:") in verdict.reason and "sign test p =" in verdict.reason
