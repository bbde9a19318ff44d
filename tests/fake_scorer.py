"""A deterministic stand-in for the LM, for fast unit tests of the search mechanics.

Each example's text carries its "true" class as a word ("good"/"bad", "yes"/"no"); the fake model
prefers that class, a little more strongly when the context holds correctly labelled examples.
"""

from __future__ import annotations

import numpy as np


class FakeScorer:
    model_id = "fake@0"

    def __init__(self, label_words=("True", "False"), cue_words=None, strength: float = 1.5):
        self.cue_words = cue_words
        self.strength = strength
        self.calls = 0
        self.set_labels(list(label_words))

    def set_labels(self, label_words):
        self.label_words = list(label_words)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def _truth(self, block: str) -> int:
        cues = self.cue_words or {"True": "yes", "False": "no"}
        last = block.split("\n\n")[-1]
        for k, w in enumerate(self.label_words):
            if cues[w] in last.split():
                return k
        return 0

    def score(self, prefix: str, targets):
        self.calls += 1
        out = []
        for t in targets:
            k = self._truth(t)
            logits = np.zeros(len(self.label_words))
            logits[k] = self.strength
            out.append(logits - np.log(np.exp(logits).sum()))
        return np.array(out)
