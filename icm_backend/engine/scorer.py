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

from icm_backend.engine.tokens import encode, label_logits, label_token_ids, logit_softcap, with_bos

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

    @property
    def context_window(self) -> int | None:
        """The model's context length in tokens (a row longer than it cannot be scored); None if unknown."""


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
        self.label_ids = label_token_ids(self.tok, label_words)
        self.label_words = list(label_words)

    @property
    def context_window(self) -> int:
        return self.lm.context_window

    def count_tokens(self, text: str) -> int:
        return len(encode(self.tok, text))

    # -- scoring ------------------------------------------------------------------------------
    def _encode_prefix(self, prefix: str) -> list[int]:
        return with_bos(self.tok, encode(self.tok, prefix))

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
        target_ids = [encode(self.tok, t) for t in targets]
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
        bos = [] if prefix_ids else with_bos(self.tok, [])
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
            picked = label_logits(last, self._lm_head(), self.label_ids, logit_softcap(self.model.config))
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
