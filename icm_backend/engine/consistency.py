"""Logical consistency between labels: the I(D) term of ICM and the pairs it can repair.

Relations between two examples (from data fields only):
- "same":      one group, same answer key       -> equal labels (implication / equivalence)
- "exclusive": one group, different answer keys -> not both True (mutual exclusion)
- "opposite":  a comparison and its mirror      -> exactly one True (asymmetry)
Plain multi-class classification has no pairwise relations: each item carries one K-way label, which is
the exactly-one-of-K constraint over its K per-class claims, satisfied by construction.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from icm_backend.engine.tasks import Problem

UNLABELLED = -1


# Why two labels conflict, by relation: flags carry the relation so callers can name rows their way.
RELATION_TEXT = {
    "same": "give the same answer to one question, so they must take the same label",
    "exclusive": "give different answers to one question, so they cannot both be True",
    "opposite": "are one comparison in both orders, so exactly one can be True",
}


@dataclass(frozen=True)
class Relation:
    other: int
    kind: str  # same | exclusive | opposite


def build_relations(problem: Problem) -> list[list[Relation]]:
    rel: list[list[Relation]] = [[] for _ in problem.examples]
    if problem.constraint == "comparison":
        for ex in problem.examples:
            if ex.partner is not None:
                rel[ex.index].append(Relation(ex.partner, "opposite"))
    elif problem.constraint == "claims":
        groups: dict[str, list] = {}
        for ex in problem.examples:
            if ex.group is not None and ex.key is not None:
                groups.setdefault(ex.group, []).append(ex)
        for members in groups.values():
            for a, b in itertools.permutations(members, 2):
                rel[a.index].append(Relation(b.index, "same" if a.key == b.key else "exclusive"))
    return rel


class Consistency:
    def __init__(self, problem: Problem):
        self.problem = problem
        self.relations = build_relations(problem)
        self.true = problem.true_index if not problem.multiclass else None
        self.k = len(problem.label_words)

    def pair_ok(self, kind: str, yi: int, yj: int) -> bool:
        if kind == "same":
            return yi == yj
        if kind == "exclusive":
            return not (yi == self.true and yj == self.true)
        return (yi == self.true) != (yj == self.true)  # opposite

    def violations(self, labels: np.ndarray) -> list[tuple[int, int]]:
        """Inconsistent labelled pairs (i < j)."""
        out = []
        for i, rels in enumerate(self.relations):
            if labels[i] == UNLABELLED:
                continue
            for r in rels:
                j = r.other
                if j > i and labels[j] != UNLABELLED and not self.pair_ok(r.kind, labels[i], labels[j]):
                    out.append((i, j))
        return out

    def count(self, labels: np.ndarray) -> int:
        return len(self.violations(labels))

    def relation(self, i: int, j: int) -> str | None:
        for r in self.relations[i]:
            if r.other == j:
                return r.kind
        return None

    def consistent_options(self, i: int, j: int) -> list[tuple[int, int]]:
        """Every consistent joint labelling of the pair (the reference code tried only two)."""
        kind = self.relation(i, j)
        return [(a, b) for a in range(self.k) for b in range(self.k) if kind is None or self.pair_ok(kind, a, b)]

    def neighbours(self, i: int) -> list[int]:
        return [r.other for r in self.relations[i]]

    def describe(self, i: int, j: int) -> str:
        return f"rows {i} and {j} {RELATION_TEXT.get(self.relation(i, j), 'conflict')}"
