"""The number format by hardware: bf16 only where the CPU computes it natively (engine.model.choose_dtype)."""

from __future__ import annotations

import logging

import pytest

from icm_backend.engine.model import NATIVE_BF16_FLAGS, choose_dtype, cpu_flags, load_lm
from icm_backend.errors import InputError

AVX2_EPYC = {"fpu", "sse2", "avx", "avx2", "fma"}
SAPPHIRE_RAPIDS = AVX2_EPYC | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


@pytest.mark.parametrize("flags, device, want", [
    (AVX2_EPYC, "cpu", "fp32"),  # bf16 emulated there: 5-8x slower
    (AVX2_EPYC | {"avx512f"}, "cpu", "fp32"),  # AVX-512 without its BF16 extension is not enough
    (AVX2_EPYC | {"avx512_bf16"}, "cpu", "bf16"),
    (AVX2_EPYC | {"amx_bf16"}, "cpu", "bf16"),
    (SAPPHIRE_RAPIDS, "cpu", "bf16"),
    (AVX2_EPYC, "cuda", "bf16"),
    (set(), "cpu", "fp32"),  # no /proc/cpuinfo (macOS): the safe choice
])
def test_auto_picks_bf16_only_where_it_is_native(flags, device, want):
    got, why = choose_dtype("auto", device, flags)
    assert got == want and why


def test_an_override_wins_and_a_typo_is_named():
    assert choose_dtype("bf16", "cpu", AVX2_EPYC)[0] == "bf16"
    assert choose_dtype("fp32", "cuda", SAPPHIRE_RAPIDS)[0] == "fp32"
    with pytest.raises(InputError, match="--dtype float16: choose one of auto, bf16, fp32"):
        choose_dtype("float16", "cpu", AVX2_EPYC)


def test_a_real_load_on_this_machine_uses_what_its_cpu_computes_natively(caplog):
    import torch

    native = bool(cpu_flags() & set(NATIVE_BF16_FLAGS))
    with caplog.at_level(logging.INFO, logger="icm_backend.engine.model"):
        lm = load_lm("smollm2-135m")
    want = "bf16" if native else "fp32"
    assert lm.dtype == want
    assert next(lm.model.parameters()).dtype == (torch.bfloat16 if native else torch.float32)
    line = [r.getMessage() for r in caplog.records if "loaded" in r.getMessage()][-1]
    assert f"{want} (no quantization)" in line and ("native bf16" in line if native else "no native bf16" in line)
