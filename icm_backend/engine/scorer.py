"""Scoring label words: log P(label | prompt) normalised over the label set.

The engine talks to the LM only through `Scorer.score(prefix, targets)`: one shared context prefix,
many target prompts that end at the cue, one row of normalised label log-probabilities each. A remote
scorer (vLLM / any OpenAI-compatible server with logprobs) can implement the same method.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from icm_backend.errors import InputError

log = logging.getLogger(__name__)


class Scorer(Protocol):
    """What the engine needs from a language model (the local TransformersScorer, or a model server's)."""

    label_words: list[str]
    model_id: str

    def set_labels(self, label_words: list[str]) -> None:
        """Score these label words from now on."""

    def score(self, prefix: str, targets: list[str]) -> np.ndarray:
        """Return an array [len(targets), len(label_words)] of log-probs normalised over the label set."""

    def count_tokens(self, text: str) -> int: ...


@dataclass
class ScorerStats:
    forward_calls: int = 0
    tokens_processed: int = 0  # tokens fed through the network (a cached prefix counts once)
    prefix_cache_hits: int = 0


class TransformersScorer:
    """Local transformers model. Caches the KV state of the most recent prefixes and reuses it."""

    def __init__(self, lm, label_words: list[str], batch_size: int = 16, prefix_cache_size: int = 4):
        self.lm = lm
        self.model = lm.model
        self.tok = lm.tokenizer
        self.model_id = f"{lm.name}@{lm.version}"
        self.batch_size = batch_size
        self.stats = ScorerStats()
        self._prefix_cache: dict[str, object] = {}  # prefix text -> its KV cache
        self._prefix_cache_size = prefix_cache_size
        self.set_labels(label_words)

    # -- label words -------------------------------------------------------------------------
    def set_labels(self, label_words: list[str]) -> None:
        """Each label word is read at its first token after a space; the first tokens must differ."""
        ids = []
        for word in label_words:
            toks = self.tok.encode(" " + word, add_special_tokens=False)
            if not toks:
                raise InputError(f"--labels: label {word!r} tokenizes to nothing")
            ids.append(toks[0])
        if len(set(ids)) != len(ids):
            clash = [w for w, i in zip(label_words, ids) if ids.count(i) > 1]
            raise InputError(
                f"--labels: {', '.join(map(repr, clash))} start with the same token for this model; "
                "use label words that differ in their first word-piece"
            )
        self.label_words = list(label_words)
        self.label_ids = ids

    def count_tokens(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False))

    # -- scoring ------------------------------------------------------------------------------
    def _encode_prefix(self, prefix: str) -> list[int]:
        ids = self.tok.encode(prefix, add_special_tokens=False)
        bos = self.tok.bos_token_id
        return ([bos] if bos is not None else []) + ids

    def _prefix_state(self, prefix_ids: list[int], key: str):
        import torch

        hit = self._prefix_cache.get(key)
        if hit is not None:
            self.stats.prefix_cache_hits += 1
            return hit
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([prefix_ids], device=self.lm.device), use_cache=True,
                             logits_to_keep=1)
        self.stats.forward_calls += 1
        self.stats.tokens_processed += len(prefix_ids)
        if len(self._prefix_cache) >= self._prefix_cache_size:
            self._prefix_cache.pop(next(iter(self._prefix_cache)))
        self._prefix_cache[key] = out.past_key_values
        return out.past_key_values

    def score(self, prefix: str, targets: list[str]) -> np.ndarray:
        if not targets:
            return np.zeros((0, len(self.label_words)))
        prefix_ids = self._encode_prefix(prefix)
        # Tokenize targets on their own: the prefix always ends at a block boundary ("\n\n"), so the
        # split does not cut a token that would have merged across it.
        target_ids = [self.tok.encode(t, add_special_tokens=False) for t in targets]
        cache = self._prefix_state(prefix_ids, prefix) if prefix else None
        out = np.zeros((len(targets), len(self.label_words)))
        order = sorted(range(len(targets)), key=lambda i: len(target_ids[i]))  # less padding
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            out[rows] = self._score_batch(prefix_ids if prefix else [], cache, [target_ids[i] for i in rows])
        return out

    def _score_batch(self, prefix_ids: list[int], cache, batch: list[list[int]]) -> np.ndarray:
        import torch

        n = len(batch)
        width = max(len(b) for b in batch)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        bos = [] if prefix_ids else ([self.tok.bos_token_id] if self.tok.bos_token_id is not None else [])
        rows = [bos + b + [pad] * (width - len(b)) for b in batch]  # right padding keeps positions right
        lengths = [len(bos) + len(b) for b in batch]
        ids = torch.tensor(rows, device=self.lm.device)
        mask = torch.tensor([[1] * l + [0] * (ids.shape[1] - l) for l in lengths], device=self.lm.device)
        kwargs = {}
        if cache is not None:
            past = copy.deepcopy(cache)  # the model extends the cache in place
            past.batch_repeat_interleave(n)
            kwargs["past_key_values"] = past
            mask = torch.cat([torch.ones(n, len(prefix_ids), dtype=mask.dtype, device=mask.device), mask], 1)
            kwargs["position_ids"] = (torch.arange(ids.shape[1], device=ids.device) + len(prefix_ids)).expand(n, -1)
        with torch.no_grad():
            hidden = self._backbone()(input_ids=ids, attention_mask=mask, use_cache=cache is not None,
                                      **kwargs).last_hidden_state
            last = hidden[torch.arange(n), torch.tensor(lengths) - 1]  # logits only at the cue
            logits = self._lm_head()(last).float()
        softcap = getattr(self.model.config, "final_logit_softcapping", None) or getattr(
            getattr(self.model.config, "text_config", None), "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        picked = logits[:, self.label_ids]
        self.stats.forward_calls += 1
        self.stats.tokens_processed += sum(lengths)
        return torch.log_softmax(picked, dim=-1).cpu().numpy()

    def _backbone(self):
        m = self.model
        m = m.get_base_model() if hasattr(m, "get_base_model") else m
        return m.model

    def _lm_head(self):
        m = self.model
        m = m.get_base_model() if hasattr(m, "get_base_model") else m
        return m.lm_head
