"""ICM search: simulated annealing over label sets (Algorithm 1) with ConsistencyFix (Algorithm 2).

Faithful to the paper, with the reference code's mistakes fixed: temperature follows the iteration
count, every consistent joint labelling of a pair is tried, a repair is applied only if U improves,
and consistency groups come from data fields only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from icm_backend.engine.consistency import UNLABELLED, Consistency
from icm_backend.engine.context import ContextPlan, ScoreCache
from icm_backend.errors import InputError
from icm_backend.engine.objective import Objective, calibrate_rows
from icm_backend.engine.tasks import Problem, gold_label

log = logging.getLogger(__name__)


@dataclass
class SearchConfig:
    alpha: float = 50.0
    t0: float = 10.0
    t_min: float = 0.01
    beta: float = 0.99
    init_k: int = 8  # examples labelled at random to start
    fix_rounds: int = 10  # M in ConsistencyFix
    group_weight: float = 100.0  # sampling weight of unlabelled examples next to a labelled group member
    max_iters: int | None = None  # default 20 * N; a core's search (engine.core) core_iters_per_row * N
    patience: int | None = None  # iterations per sweep once all are labelled (default N)
    context_tokens: int = 384  # token budget of the shared in-context prefix
    fold_size: int = 64
    checkpoint_every_s: float = 20.0
    # A project with more free rows than this: ICM on a random core of this size, one pass for the rest
    # (engine.core). 0 or None: the search runs on every row.
    core_size: int | None = 256
    chunk_size: int = 512  # rows per one-pass chunk (what a job writes back at a time)
    # A core's search budget per free row when max_iters is not given: the reference code's 3000 iterations
    # per batch of 256. The 20 x N of a whole-set search bought a core nothing measurable (bench/RESULTS.md,
    # "the core's search budget") and cost a 10,000-task project 5 of its 64 minutes.
    core_iters_per_row: int = 12


@dataclass
class SearchState:
    labels: list[int]
    iteration: int = 0
    since_change: int = 0
    sweep_start: int = 0  # iteration at which the current context sample was drawn
    sweeps: int = 0  # context samples drawn after D was complete
    accepted: int = 0
    rng_state: dict = field(default_factory=dict)
    label_order: list[int] = field(default_factory=list)  # order in which examples entered D
    history: list[list[float]] = field(default_factory=list)  # [iteration, U, n_labelled, accepted]
    fingerprint: str = ""
    done: bool = False
    # LM tokens the reference code's scheme would process for the same accepted changes: 1 + L calls
    # per changed label, each with all L labelled examples in context and no prefix cache.
    reference_tokens: float = 0.0
    reference_tokens_same_context: float = 0.0  # the same, with contexts capped at our token budget


def run_fingerprint(problem: Problem, scorer_id: str, method: str, seed: int, config: SearchConfig,
                    fixed: dict[int, int] | None = None) -> str:
    h = hashlib.sha256()
    # Budgets and checkpoint cadence may change between a crash and the resume; nothing else may.
    settings = {k: v for k, v in asdict(config).items()
                if k not in ("max_iters", "patience", "checkpoint_every_s", "core_size", "chunk_size",
                             "core_iters_per_row")}
    h.update(json.dumps([problem.task, problem.label_words, method, seed, scorer_id, settings]).encode())
    if fixed:  # human labels are part of the run: other labels, other search
        h.update(json.dumps(sorted(fixed.items())).encode())
    for ex in problem.examples:
        h.update(ex.prompt.encode())
        h.update(f"|{ex.group}|{ex.key}|{ex.partner}\n".encode())
    return h.hexdigest()[:16]


class Checkpoint:
    """The search state as a JSON file, replaced atomically, so a crash loses at most a few seconds."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None

    def load(self, fingerprint: str) -> SearchState | None:
        if not self.path or not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text())
            state = SearchState(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise InputError(f"checkpoint {self.path}: unreadable ({exc}); delete it to start over") from None
        if state.fingerprint != fingerprint:
            raise InputError(f"checkpoint {self.path}: belongs to a different run (other input, task, model, "
                             "method, seed or settings); delete it or pass another --checkpoint")
        return state

    def save(self, state: SearchState) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(state)))
        os.replace(tmp, self.path)


def fixed_indices(problem: Problem, fixed: dict | None, field: str = "fixed") -> dict[int, int]:
    """Row index -> label word (or an index into the label words) => row index -> label index.

    Fixed rows are human labels (accepted predictions or annotations): members of D from the start,
    never proposed or flipped, and taken as given by ConsistencyFix. Bad input names the row.
    """
    out: dict[int, int] = {}
    n = len(problem.examples)
    for key, value in (fixed or {}).items():
        try:
            i = int(key)
        except (TypeError, ValueError):
            raise InputError(f"{field}: row {key!r} is not a row index") from None
        if not 0 <= i < n:
            raise InputError(f"{field}: row {i} is outside the input (0..{n - 1})")
        word = gold_label(value if not isinstance(value, np.integer) else int(value), problem)
        if word is None:
            raise InputError(f"{field}: row {i} has label {value!r}, not one of {problem.label_words}")
        out[i] = problem.label_words.index(word)
    return out


class ICMSearch:
    def __init__(self, problem: Problem, scorer, config: SearchConfig | None = None, seed: int = 0,
                 checkpoint: str | Path | None = None, method: str = "icm", max_window: int | None = None,
                 fixed: dict | None = None, iters_per_row: int = 20):
        self.problem = problem
        self.config = config or SearchConfig()
        self.seed = seed
        self.n = len(problem.examples)
        self.fixed = fixed_indices(problem, fixed)  # row -> label index; never changed by the search
        self.fixed_mask = np.zeros(self.n, dtype=bool)
        self.fixed_mask[list(self.fixed)] = True
        self.n_free = self.n - len(self.fixed)
        self.rng = np.random.default_rng(seed)
        self.plan = ContextPlan(problem, scorer, np.random.default_rng(seed), self.config.context_tokens,
                                self.config.fold_size, max_window)
        self.cache = ScoreCache(self.plan)
        self.consistency = Consistency(problem)
        self.objective = Objective(self.cache, self.consistency, self.config.alpha, calibrate=problem.multiclass)
        self.checkpoint = Checkpoint(checkpoint)
        self.fingerprint = run_fingerprint(problem, scorer.model_id, method, seed, self.config, self.fixed)
        self.max_iters = self.config.max_iters or iters_per_row * max(self.n_free, 1)
        self.patience = self.config.patience or max(self.n_free, 1)

    # -- pieces of Algorithm 1 ---------------------------------------------------------------------
    def temperature(self, n: int) -> float:
        c = self.config
        return max(c.t_min, c.t0 / (1 + c.beta * math.log(max(n, 1))))

    def sample(self, labels: np.ndarray) -> int:
        weights = np.ones(self.n)
        weights[self.fixed_mask] = 0.0  # human labels are never proposed
        unlabelled = labels == UNLABELLED
        if unlabelled.any() and (~unlabelled).any():
            for i in np.flatnonzero(unlabelled):
                if any(labels[j] != UNLABELLED for j in self.consistency.neighbours(i)) or \
                        any(labels[j] != UNLABELLED for j in self.plan.group_members[i]):
                    weights[i] = self.config.group_weight
        return int(self.rng.choice(self.n, p=weights / weights.sum()))

    def propose(self, i: int, labels: np.ndarray) -> int:
        # Score i's whole fold at once: stale rows of its neighbours come almost free in the same batch.
        fold = np.flatnonzero(self.plan.fold_of == self.plan.fold_of[i])
        rows = self.cache.get(fold, labels)
        if self.problem.multiclass:
            # Propose by the same calibrated score that P(D) uses, or a majority label in the context
            # would win every proposal and the labelling would snowball into one class.
            rows = calibrate_rows(rows, np.zeros(len(fold), dtype=int))
        return int(np.argmax(rows[int(np.flatnonzero(fold == i)[0])]))

    def consistency_fix(self, labels: np.ndarray, utility=None):
        """Algorithm 2: repair inconsistent pairs, keeping a repair only when it raises U."""
        labels = labels.copy()
        tried: set[tuple[int, int]] = set()
        for _ in range(self.config.fix_rounds):
            pairs = [p for p in self.consistency.violations(labels) if p not in tried]
            if not pairs:
                break
            utility = utility or self.objective(labels)
            i, j = pairs[int(self.rng.integers(len(pairs)))]
            tried.add((i, j))
            best, best_u = None, utility
            for a, b in self.consistency.consistent_options(i, j):
                if self.fixed.get(i, a) != a or self.fixed.get(j, b) != b:
                    continue  # a fixed (human) label is taken as given
                cand = labels.copy()
                cand[i], cand[j] = a, b
                u = self.objective(cand)
                if u.value > best_u.value:
                    best, best_u = cand, u
            if best is not None:
                labels, utility = best, best_u
        return labels, utility  # None when nothing needed repair and U was not asked for

    # -- the loop ------------------------------------------------------------------------------
    def initial_state(self) -> SearchState:
        labels = np.full(self.n, UNLABELLED)
        if self.fixed:
            # Human labels enter D first, so they lead every context; K random labels among the rest.
            order = [int(i) for i in self.rng.permutation(sorted(self.fixed))]
            labels[order] = [self.fixed[i] for i in order]
            free = np.flatnonzero(~self.fixed_mask)
            k = min(self.config.init_k, len(free))
            chosen = self.rng.choice(free, size=k, replace=False) if k else np.zeros(0, dtype=int)
        else:
            order = []
            k = min(self.config.init_k, self.n)
            chosen = self.rng.choice(self.n, size=k, replace=False)
        labels[chosen] = self.rng.integers(0, len(self.problem.label_words), size=k)
        self.plan.label_order = order + [int(i) for i in chosen]
        labels, _ = self.consistency_fix(labels)
        return SearchState(labels=labels.tolist(), fingerprint=self.fingerprint, label_order=self.plan.label_order)

    def adopt(self, labels: np.ndarray) -> SearchState:
        """A finished state for a labelling found before instead of a search (a relabel that reuses a
        previous core): human labels as given, ConsistencyFix applied, D's order drawn as a sweep draws it."""
        labels = np.array(labels)
        for i, y in self.fixed.items():
            labels[i] = y
        if (labels == UNLABELLED).any():
            raise ValueError("adopt: every row needs a label")
        self.plan.label_order = self.context_order(self.rng)
        labels, _ = self.consistency_fix(labels)
        return SearchState(labels=labels.tolist(), fingerprint=self.fingerprint, label_order=self.plan.label_order,
                           done=True)

    def run(self, progress=None) -> SearchState:
        state = self.checkpoint.load(self.fingerprint)
        if state is not None:
            log.info("resuming ICM from %s at iteration %d (%d/%d labelled)", self.checkpoint.path,
                     state.iteration, sum(l != UNLABELLED for l in state.labels), self.n)
            self.rng.bit_generator.state = state.rng_state
            self.plan.label_order = state.label_order
            if state.done:
                return state
        else:
            state = self.initial_state()
        labels = np.array(state.labels)
        utility = None  # computed lazily: while D grows, additions need no U
        last_save = time.monotonic()
        bar = tqdm(total=self.max_iters, initial=state.iteration, desc="ICM", unit="it", leave=False,
                   disable=None)
        while state.iteration < self.max_iters and self.n_free > 0:
            n_labelled = int((labels != UNLABELLED).sum())
            if n_labelled == self.n and state.iteration - state.sweep_start >= self.patience:
                if state.sweeps > 0 and state.since_change >= state.iteration - state.sweep_start:
                    log.info("ICM converged: a whole sweep of %d iterations changed no label", self.patience)
                    break
                self._new_sweep(state)
                utility = None
            state.iteration += 1
            state.since_change += 1
            i = self.sample(labels)
            y_hat = self.propose(i, labels)
            if labels[i] == UNLABELLED:
                # Adding an example always goes ahead: U of sets of different sizes are not comparable
                # (each added term is a negative log-prob), so annealing decides between labellings of
                # the same set, and the label an example enters with is the model's best guess.
                self._count_reference_cost(state, labels)
                labels = labels.copy()
                labels[i] = y_hat
                self.plan.label_order.append(i)
                labels, utility = self.consistency_fix(labels)  # U is computed when a flip needs it
                state.accepted += 1
                state.since_change = 0
            elif labels[i] != y_hat:
                utility = utility or self.objective(labels)
                cand = labels.copy()
                cand[i] = y_hat
                cand, cand_u = self.consistency_fix(cand)
                cand_u = cand_u or self.objective(cand)
                delta = cand_u.value - utility.value
                temp = self.temperature(state.iteration)
                if delta > 0 or self.rng.random() < math.exp(delta / temp):
                    self._count_reference_cost(state, labels)
                    labels, utility = cand, cand_u
                    state.accepted += 1
                    state.since_change = 0
            n_labelled = int((labels != UNLABELLED).sum())
            u_text = f"{utility.value:.1f}" if utility else "-"
            if state.iteration % 10 == 0:
                state.history.append([state.iteration, utility.value if utility else None, n_labelled,
                                      state.accepted])
            bar.update(1)
            bar.set_postfix(labelled=f"{n_labelled}/{self.n}", U=u_text)
            if progress:
                progress(n_labelled, self.n, f"iteration {state.iteration}, {n_labelled}/{self.n} labelled, U={u_text}")
            if time.monotonic() - last_save > self.config.checkpoint_every_s:
                self._save(state, labels)
                last_save = time.monotonic()
        bar.close()
        # Whatever the budget left unlabelled gets its most likely label under the final context.
        if (labels == UNLABELLED).any():
            rest = np.flatnonzero(labels == UNLABELLED)
            log.info("labelling %d examples the search did not reach by their most likely label", len(rest))
            rows = self.final_rows(labels)[rest]
            labels[rest] = rows.argmax(axis=1)
            self.plan.label_order.extend(int(i) for i in rest)
        state.done = True
        self._save(state, labels)
        log.info("ICM finished after %d iterations, %d accepted, U=%.1f, %d inconsistencies left",
                 state.iteration, state.accepted, self.objective(labels).value, self.consistency.count(labels))
        return state

    def _new_sweep(self, state: SearchState) -> None:
        """Draw a fresh sample of D as the in-context examples, as the paper's context is all of D.

        While D grows, contexts hold the earliest-labelled examples (8 of them random at the start), so
        they stay fixed and cacheable; once every example is labelled, each sweep of N iterations sees a
        new random sample of the current labels, until a whole sweep changes nothing.
        """
        state.sweeps += 1
        state.sweep_start = state.iteration
        state.since_change = 0
        self.plan.label_order = self.context_order(self.rng)
        log.info("ICM sweep %d at iteration %d: new in-context sample of the labelled set", state.sweeps,
                 state.iteration)

    def context_order(self, rng: np.random.Generator) -> list[int]:
        """A fresh random order of D for the contexts. With human labels, they and the search's labels
        alternate (human first), so a context holds both whenever both exist."""
        if not self.fixed:
            return [int(i) for i in rng.permutation(self.n)]
        fixed = [int(i) for i in rng.permutation(sorted(self.fixed))]
        free = [int(i) for i in rng.permutation(np.flatnonzero(~self.fixed_mask))]
        out = []
        for k in range(max(len(fixed), len(free))):
            out += fixed[k:k + 1] + free[k:k + 1]
        return out

    def _count_reference_cost(self, state: SearchState, labels: np.ndarray) -> None:
        labelled = labels != UNLABELLED
        n_l = int(labelled.sum())
        context = float(self.plan.block_tokens[labelled].sum())
        prompt = float(self.plan.prompt_tokens.mean())
        state.reference_tokens += (1 + n_l) * (context + prompt)
        state.reference_tokens_same_context += (1 + n_l) * (min(context, self.plan.context_tokens) + prompt)

    def _save(self, state: SearchState, labels: np.ndarray) -> None:
        state.labels = labels.tolist()
        state.label_order = list(self.plan.label_order)
        state.rng_state = self.rng.bit_generator.state
        self.checkpoint.save(state)

    def resampled_rows(self, labels: np.ndarray, samples: int, seed: int) -> list[np.ndarray]:
        """final_rows under `samples` fresh random samples of D as context (human labels first, as in a
        sweep): an ensemble over contexts. The search's own context order is left as it was."""
        saved = list(self.plan.label_order)
        rng = np.random.default_rng([seed, 104729])
        out = []
        try:
            for _ in range(samples):
                self.plan.label_order = self.context_order(rng)
                out.append(self.final_rows(labels))
        finally:
            self.plan.label_order = saved
        return out

    def final_rows(self, labels: np.ndarray) -> np.ndarray:
        """Each example scored in the context of all the others' (current) labels; multi-class rows
        calibrated per shared context, as the search decides by them."""
        rows = self.cache.get(np.arange(self.n), labels)
        return calibrate_rows(rows, self.plan.fold_of) if self.problem.multiclass else rows
