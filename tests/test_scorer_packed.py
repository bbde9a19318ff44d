"""Packed scoring (many targets in one sequence after the cached prefix) gives the padded batches' numbers,
on the real models (Gemma 3's per-layer-type masks and Llama's single mask), and falls back to padded
batches when a model does not honour the mask."""

import logging

import numpy as np
import pytest

from icm_backend.engine.model import load_lm
from icm_backend.engine.scorer import TransformersScorer

pytestmark = pytest.mark.slow


def _rows(data_dir, n):
    lines = (data_dir / "sst2" / "dev.tsv").read_text().splitlines()[1:n + 1]
    return [f"Review: {line.split(chr(9))[0]}\nSentiment:" for line in lines]


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_packed_equals_padded_batches(model, data_dir, caplog):
    lm = load_lm(model)
    rows = _rows(data_dir, 30)
    labelled = "".join(f"{t} {'positive' if i % 2 else 'negative'}\n\n" for i, t in enumerate(_rows(data_dir, 40)[30:]))
    packed = TransformersScorer(lm, ["negative", "positive"], batch_size=8)
    padded = TransformersScorer(lm, ["negative", "positive"], batch_size=8)
    padded.packed = False
    calls = []
    real = packed._score_packed
    packed._score_packed = lambda *a: calls.append(1) or real(*a)
    with caplog.at_level(logging.INFO, logger="icm_backend.engine.scorer"):
        for prefix in ("", labelled):
            a, b = packed.score(prefix, rows), padded.score(prefix, rows)
            assert np.abs(a - b).max() < 1e-4
    assert packed.packed and len(calls) == 1 + 4  # the check, then 4 packs of 8 rows after the prefix (none without)
    assert "packed scoring checked against padded batches" in caplog.text


def test_a_model_that_ignores_the_mask_falls_back_to_padded_batches(data_dir, caplog):
    lm = load_lm("smollm2-135m")
    rows = _rows(data_dir, 10)
    scorer = TransformersScorer(lm, ["negative", "positive"])
    padded = scorer._score_batch
    scorer._score_packed = lambda prefix_ids, cache, batch: padded(prefix_ids, cache, batch) + 0.5
    labelled = "".join(f"{t} negative\n\n" for t in _rows(data_dir, 14)[10:])
    with caplog.at_level(logging.WARNING, logger="icm_backend.engine.scorer"):
        got = scorer.score(labelled, rows)
    assert scorer.packed is False
    assert "packed scoring disagrees with padded batches" in caplog.text
    reference = TransformersScorer(lm, ["negative", "positive"])
    reference.packed = False
    assert np.allclose(got, reference.score(labelled, rows))


def test_one_mask_for_every_layer_packs_only_inside_the_sliding_window(data_dir):
    """A model with a sliding window and one mask for all its layers (Mistral-style: no layer_types) gets the
    full-attention mask when packed: right while prefix + target fit the window, padded batches beyond."""
    lm = load_lm("smollm2-135m")
    rows = _rows(data_dir, 6)
    labelled = "".join(f"{t} negative\n\n" for t in _rows(data_dir, 14)[6:])
    scorer = TransformersScorer(lm, ["negative", "positive"])
    calls = []
    real = scorer._score_packed
    scorer._score_packed = lambda *a: calls.append(1) or real(*a)
    prefix_len = len(scorer._encode_prefix(labelled))
    longest = max(scorer.count_tokens(r) for r in rows)
    cfg = lm.model.config
    saved = getattr(cfg, "sliding_window", None), getattr(cfg, "layer_types", None)
    try:
        cfg.layer_types = None
        cfg.sliding_window = prefix_len + longest  # every target fits: packed
        scorer.score(labelled, rows)
        assert calls, "packed inside the window"
        calls.clear()
        cfg.sliding_window = prefix_len + longest - 1  # the longest target would reach past it: padded
        scorer.score(labelled, rows)
        assert not calls
    finally:
        cfg.sliding_window, cfg.layer_types = saved
