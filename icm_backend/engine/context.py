"""Which labelled examples go into each target's prompt, and the cached scores of every target.

Prefix caching needs many targets to share one context. Examples are split into folds (a consistency
group never straddles two folds); every target of a fold shares one prefix: the labelled examples of
the *other* folds, earliest-labelled first, as many as fit the token budget. Taking the earliest-labelled
keeps the prefixes stable once they are full: later additions do not reshuffle every context (which
would force rescoring everything after each step), and a flip invalidates only the targets whose
context holds the flipped example. A target's own group members (minus itself) follow the shared
prefix, so "same-group first" holds without breaking sharing.

A target's score is cached under the signature of its context (which examples, which labels): a label
change invalidates exactly the scores whose context it touches, and rejecting a proposal costs nothing.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from icm_backend.engine.consistency import UNLABELLED
from icm_backend.errors import InputError
from icm_backend.engine.tasks import Problem

SEP = "\n\n"


class ContextPlan:
    def __init__(self, problem: Problem, scorer, rng: np.random.Generator, context_tokens: int = 1024,
                 fold_size: int = 32, max_window: int | None = None):
        self.problem = problem
        self.scorer = scorer
        self.words = problem.label_words
        n = len(problem.examples)
        self.prompt_tokens = np.array([scorer.count_tokens(ex.prompt) for ex in problem.examples])
        label_tokens = max(scorer.count_tokens(" " + w) for w in self.words)
        self.block_tokens = self.prompt_tokens + label_tokens + 1
        window = max_window or 10**9
        self.context_tokens = min(context_tokens, max(0, window - int(self.prompt_tokens.max()) - 8))
        for i, t in enumerate(self.prompt_tokens):
            if t + 8 > window:
                raise InputError(f"row {i}: {t} tokens, longer than the model's context window ({window})")
        # Groups stay whole inside one fold; folds are balanced by size.
        groups: OrderedDict[str, list[int]] = OrderedDict()
        for ex in problem.examples:
            groups.setdefault(ex.group if ex.group is not None else f"#{ex.index}", []).append(ex.index)
        n_folds = max(2, math.ceil(n / fold_size))
        keys = list(groups)
        rng.shuffle(keys)
        self.fold_of = np.zeros(n, dtype=int)
        sizes = [0] * n_folds
        for key in keys:
            f = int(np.argmin(sizes))
            for i in groups[key]:
                self.fold_of[i] = f
            sizes[f] += len(groups[key])
        self.n_folds = n_folds
        # Order in which examples entered D; a search appends to it, baselines label all at once.
        self.label_order: list[int] = [int(i) for i in rng.permutation(n)]
        self.group_members = {i: [j for j in groups[k] if j != i] for k in groups for i in groups[k]}

    # -- composition ----------------------------------------------------------------------------
    def prefix_members(self, fold: int, labels: np.ndarray) -> tuple[int, ...]:
        out, used = [], 0
        for j in self.label_order:
            if labels[j] == UNLABELLED or self.fold_of[j] == fold:
                continue
            if used + self.block_tokens[j] > self.context_tokens:
                break
            out.append(int(j))
            used += self.block_tokens[j]
        return tuple(out)

    def suffix_members(self, i: int, labels: np.ndarray) -> tuple[int, ...]:
        return tuple(j for j in self.group_members[i] if labels[j] != UNLABELLED)

    def block(self, j: int, label: int | None) -> str:
        text = self.problem.examples[j].prompt
        return text if label is None else f"{text} {self.words[label]}"

    def render(self, members: tuple[int, ...], labels: np.ndarray) -> str:
        return "".join(self.block(j, int(labels[j])) + SEP for j in members)


class ScoreCache:
    """Rows of normalised label log-probs per target, keyed by the target's context signature."""

    def __init__(self, plan: ContextPlan, max_entries: int = 200_000):
        self.plan = plan
        self.rows: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.max_entries = max_entries

    def signature(self, i: int, labels: np.ndarray, prefixes: dict[int, tuple]) -> tuple:
        f = int(self.plan.fold_of[i])
        if f not in prefixes:
            prefixes[f] = self.plan.prefix_members(f, labels)
        pre = prefixes[f]
        suf = self.plan.suffix_members(i, labels)
        return (i, tuple((j, int(labels[j])) for j in pre), tuple((j, int(labels[j])) for j in suf))

    def get(self, targets, labels: np.ndarray) -> np.ndarray:
        """Rows for `targets` under `labels`, scoring (batched per fold) only what is not cached."""
        prefixes: dict[int, tuple] = {}
        sigs = [self.signature(int(i), labels, prefixes) for i in targets]
        missing: dict[int, list[tuple[int, tuple]]] = {}
        for i, sig in zip(targets, sigs):
            if sig not in self.rows:
                missing.setdefault(int(self.plan.fold_of[i]), []).append((int(i), sig))
        for f, items in missing.items():
            prefix = self.plan.render(prefixes[f], labels)
            texts = [self.plan.render(self.plan.suffix_members(i, labels), labels) + self.plan.block(i, None)
                     for i, _ in items]
            scored = self.plan.scorer.score(prefix, texts)
            for (i, sig), row in zip(items, scored):
                self.rows[sig] = row
        out = np.empty((len(targets), len(self.plan.words)))
        for n, sig in enumerate(sigs):
            self.rows.move_to_end(sig)
            out[n] = self.rows[sig]
        while len(self.rows) > self.max_entries:
            self.rows.popitem(last=False)
        return out
