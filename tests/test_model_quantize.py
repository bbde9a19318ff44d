"""Quantization choice: auto is NF4 only on CUDA; --quantize 4bit really loads bitsandbytes NF4 layers."""

import numpy as np
import pytest

from icm_backend.errors import InputError
from icm_backend.engine.model import _want_4bit, load_lm
from icm_backend.engine.scorer import TransformersScorer

pytestmark = pytest.mark.slow


def test_auto_is_bf16_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA machine: auto picks NF4 here")
    assert _want_4bit("auto") is False and _want_4bit("none") is False
    with pytest.raises(InputError, match="choose one of"):
        _want_4bit("8bit")


def test_4bit_nf4_loads_and_scores_like_bf16(data_dir):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    lm4 = load_lm("smollm2-135m", quantize="4bit")
    assert lm4.quantization == "nf4"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in lm4.model.modules())
    lm16 = load_lm("smollm2-135m", quantize="none")
    lines = (data_dir / "sst2" / "dev.tsv").read_text().splitlines()[1:13]
    targets = [f"Text: {line.split(chr(9))[0]}\nLabel:" for line in lines]
    a = TransformersScorer(lm4, ["negative", "positive"]).score("", targets)
    b = TransformersScorer(lm16, ["negative", "positive"]).score("", targets)
    assert np.allclose(np.exp(a).sum(1), 1) and np.isfinite(a).all()
    # 4-bit weights move the scores but keep their ordering: margins correlate strongly with bf16's.
    margin4, margin16 = a[:, 1] - a[:, 0], b[:, 1] - b[:, 0]
    assert np.corrcoef(margin4, margin16)[0, 1] > 0.7
