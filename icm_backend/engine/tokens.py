"""The token rules every scorer shares: how a label word becomes a token, how a prompt is encoded, and
how label logits are read off the LM head. The local scorer, the model-server scorer and LoRA training
all call these, so the three score exactly the same tokens."""

from __future__ import annotations

from icm_backend.errors import InputError


def label_token_ids(tokenizer, label_words: list[str]) -> list[int]:
    """Each label word is read at its first token after a space; the first tokens must differ."""
    ids = []
    for word in label_words:
        toks = tokenizer.encode(" " + word, add_special_tokens=False)
        if not toks:
            raise InputError(f"--labels: label {word!r} tokenizes to nothing")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        clash = [w for w, i in zip(label_words, ids) if ids.count(i) > 1]
        raise InputError(
            f"--labels: {', '.join(map(repr, clash))} start with the same token for this model; "
            "use label words that differ in their first word-piece"
        )
    return ids


def with_bos(tokenizer, ids: list[int]) -> list[int]:
    """[BOS] + ids: a prompt starts at the tokenizer's BOS where it has one (Gemma scores badly without)."""
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + list(ids)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a piece of prompt text, no special tokens."""
    return tokenizer.encode(text, add_special_tokens=False)


def logit_softcap(config) -> float | None:
    """Gemma's final-logit soft-capping (tanh(x / c) * c), from the model's config or its text config."""
    return getattr(config, "final_logit_softcapping", None) or getattr(
        getattr(config, "text_config", None), "final_logit_softcapping", None)


def label_logits(last_hidden, lm_head, label_ids, softcap: float | None):
    """Logits of the label tokens only, float32: [n, hidden] x [hidden, labels]. The full-vocabulary
    product (262k rows for Gemma) would be thrown away: only the label rows are read, and soft-capping is
    elementwise, so picking the rows first gives the same numbers."""
    import torch

    w = lm_head.weight[label_ids]
    logits = last_hidden.to(w.dtype) @ w.T
    if getattr(lm_head, "bias", None) is not None:
        logits = logits + lm_head.bias[label_ids]
    logits = logits.float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits
