"""ICM on a core, one pass for the rest: what makes a project of any size cost the same per task.

The search (Algorithm 1) rescoring labels in context costs super-linearly in the number of examples, and a
whole-set search over 10,000 tasks takes days on a CPU. But once a random core of the project has coherent
labels, every other task needs only to be read once in the context of the core's labelled examples:

    core C  = random consistency groups, drawn with the seed, until |C| >= core_size (human-labelled rows and
              their groups always belong to it: they are D's fixed members and lead its contexts);
    D_C     = ICM(C)                   (the search, checkpointed, as a small project's with the reference
                                        code's budget: 12 iterations per row, not 20)
    for each context order o in (the search's final order, `resamples` fresh random orders of D_C):
        prefix_o = the labelled blocks of C in order o, up to the context budget   (one string, one KV cache)
        s_o(x)   = log P(y | prefix_o, x), normalised over the labels, for every x outside C
    label(x), confidence(x) = calibration.apply(fit, ensemble_o s_o(x))

`fit` is calibration.fit on C plus the first chunk of the rest (a random sample of it, scored exactly as
every later chunk): temperature, drift bias, review cut-off and the reliability verdict come from there,
and every later chunk is decided with the same numbers, so a chunk's labels depend on nothing but its own
rows (a crash, a resume or another chunking gives the same labels). Multi-class rows are PMI-calibrated by
the label marginal of each context, estimated on that first chunk for the same reason. Consistency groups
never straddle two chunks, and a group outside C gets its most likely consistent joint labelling.

Cost: the core's search (fixed, whatever the project's size) plus, per task, (1 + resamples) forward
passes of its own tokens over a cached prefix and one zero-shot pass (the independent view the unsupervised
temperature is fitted from): flat per task as projects grow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from icm_backend.engine.calibration import Assessment, Calibration, ReviewConfig
from icm_backend.engine.calibration import apply as apply_calibration, fit as fit_assessment
from icm_backend.engine.consistency import RELATION_TEXT
from icm_backend.engine.context import SEP
from icm_backend.engine.search import ICMSearch, SearchConfig
from icm_backend.engine.tasks import Problem, build_problem
from icm_backend.engine.types import INCONSISTENT, CoreOrigin, Flag, Labelling, Prediction
from icm_backend.errors import InputError

log = logging.getLogger(__name__)


def groups_of(problem: Problem, rows: list[int] | None = None) -> list[list[int]]:
    """Consistency groups (rows tied by a group id or a comparison partner), in first-seen order."""
    rows = range(len(problem.examples)) if rows is None else rows
    by_key: dict[str, list[int]] = {}
    for i in rows:
        ex = problem.examples[i]
        by_key.setdefault(ex.group if ex.group is not None else f"#{ex.index}", []).append(int(i))
    return list(by_key.values())


def draw_core(problem: Problem, fixed: set[int], size: int, seed: int) -> list[int]:
    """Row indices of the core: every fixed row's group, then random whole groups until `size` free rows."""
    groups = groups_of(problem)
    rng = np.random.default_rng([seed, 7411])
    core: list[int] = []
    free = 0
    rest = []
    for g in groups:
        if any(i in fixed for i in g):
            core += g
            free += sum(i not in fixed for i in g)
        else:
            rest.append(g)
    for k in rng.permutation(len(rest)):
        if free >= size:
            break
        core += rest[k]
        free += len(rest[k])
    return sorted(core)


def reuse_core(problem: Problem, fixed: dict[int, int], prior: dict[int, int]) -> tuple[list[int] | None, str]:
    """The core a relabel reuses (row indices) and what the human labels changed in it, in words; or None
    and why it must search again.

    A previous labelling's core (`prior`, row -> label index) is kept, its labels with the human labels in
    place of its own (ConsistencyFix then repairs what they break), whenever every row of its groups has a
    label (the human-labelled rows and their groups join it, as in draw_core): a relabel, after a review or
    under a new model version, is then the one-pass phase alone. Measured on SST-2 dev with the default
    model (bench_scale.py relabel, the 100 least confident rows given gold labels, 10-14 of them
    contradicting the core, seeds 0 and 1): the reused core labelled the rows nobody reviewed as well as a new search or
    better, at a third of its time (bench/RESULTS.md). Searching again on every contradiction, the rule
    before, meant a full search after every review round: the review loop's queue puts its least
    confident rows, core rows among them, in front of the humans, so some always contradict it."""
    core = sorted({i for g in groups_of(problem) if any(j in prior or j in fixed for j in g) for i in g})
    missing = [i for i in core if i not in prior and i not in fixed]
    if missing:
        return None, f"{len(missing)} row(s) of the previous core's groups have no label"
    replaced = sorted(i for i, y in fixed.items() if i in prior and prior[i] != y)
    if not replaced:
        return core, ""
    return core, (f"{len(replaced)} human label(s) in place of the core's (rows "
                  f"{', '.join(map(str, replaced[:5]))}{', ...' if len(replaced) > 5 else ''})")


def chunk_rest(problem: Problem, rest: list[int], chunk_size: int, seed: int) -> list[list[int]]:
    """The rows outside the core in chunks of about `chunk_size`, whole groups, in a random order (drawn
    with the seed): the first chunk is a random sample of the rest, which the calibration is fitted on."""
    groups = groups_of(problem, rest)
    rng = np.random.default_rng([seed, 2029])
    chunks, cur = [], []
    for k in rng.permutation(len(groups)):
        if cur and len(cur) + len(groups[k]) > chunk_size:
            chunks.append(sorted(cur))
            cur = []
        cur += groups[k]
    if cur:
        chunks.append(sorted(cur))
    return chunks


def core_prefix(problem: Problem, order: list[int], labels: dict[int, int], block_tokens: dict[int, int],
                budget: int) -> str:
    """The labelled core blocks in `order`, as many as fit `budget` tokens (the search's context rule)."""
    out, used = [], 0
    for j in order:
        if j not in labels:
            continue
        if used + block_tokens[j] > budget:
            break
        out.append(f"{problem.examples[j].prompt} {problem.label_words[labels[j]]}{SEP}")
        used += block_tokens[j]
    return "".join(out)


def pmi(rows: np.ndarray, marginal: np.ndarray) -> np.ndarray:
    """log P(y | x, ctx) - log marginal(y | ctx), renormalised (objective.calibrate_rows with the marginal
    given instead of taken over the rows scored together)."""
    out = rows - np.log(np.asarray(marginal) + 1e-12)
    return out - np.log(np.exp(out).sum(axis=1, keepdims=True))


@dataclass
class CoreState:
    """The one-pass phase's progress, saved beside the search's checkpoint (`<checkpoint>.core.json`)."""

    fingerprint: str
    calibration: dict | None = None  # calibration.Calibration.to_json, once fitted
    marginals: list[list[float]] | None = None  # per context (and the zero-shot view, last) for PMI
    done_chunks: list[int] = field(default_factory=list)  # chunks handed to on_chunk and so kept by the caller
    assessment: dict | None = None

    @classmethod
    def load(cls, path: Path | None, fingerprint: str) -> "CoreState":
        if path is None or not path.exists():
            return cls(fingerprint)
        try:
            data = json.loads(path.read_text())
            state = cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise InputError(f"checkpoint {path}: unreadable ({exc}); delete it to start over") from None
        return state if state.fingerprint == fingerprint else cls(fingerprint)

    def save(self, path: Path | None) -> None:
        if path is None:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)


def one_pass_scores(problem: Problem, scorer, prefixes: list[str], targets: list[int],
                    batch: int = 512) -> list[np.ndarray]:
    """Raw normalised label log-prob rows of `targets`, one array per prefix: each target read once after
    the prefix (one shared prefix per call, so the KV cache or the server's prefix cache serves all)."""
    out = []
    for prefix in prefixes:
        rows = np.zeros((len(targets), len(problem.label_words)))
        for s in range(0, len(targets), batch):
            part = targets[s:s + batch]
            rows[s:s + len(part)] = scorer.score(prefix, [problem.examples[i].prompt for i in part])
        out.append(rows)
    return out


def _remap(preds: list[Prediction], rows: list[int]) -> list[Prediction]:
    """Predictions of a sub-problem (indices into `rows`) as predictions of the whole input."""
    out = []
    for p in preds:
        i = rows[p.index]
        flags = []
        for f in p.flags:
            if f.kind == INCONSISTENT:
                others = tuple(rows[j] for j in f.rows)
                reason = "; ".join(f"rows {i} and {j} {RELATION_TEXT.get(rel, 'conflict')}"
                                   for j, rel in zip(others, f.relations))
                f = Flag(f.kind, others, reason, f.relations)
            flags.append(f)
        out.append(Prediction(index=i, label=p.label, confidence=p.confidence, flags=flags, fixed=p.fixed))
    return out


def _sub_problem(problem: Problem, rows: list[dict], idx: list[int]) -> Problem:
    return build_problem([rows[i] for i in idx], problem.task,
                         problem.label_words if problem.task == "classify" else None)


def label_with_core(rows: list[dict], problem: Problem, scorer, config: SearchConfig, seed: int, checkpoint,
                    progress, fixed: dict[int, int], review: ReviewConfig, window, on_chunk,
                    prior: dict[int, int] | None = None) -> Labelling:
    """ICM on a core, one pass for the rest (engine.core has the method and its cost). `prior`: a previous
    labelling's core, row -> label index, reused as the core when reuse_core allows."""
    n = len(problem.examples)
    reused, why = reuse_core(problem, fixed, prior) if prior else (None, "")
    core = reused if reused is not None else draw_core(problem, set(fixed), config.core_size, seed)
    core_problem = _sub_problem(problem, rows, core)
    core_fixed = {k: problem.label_words[fixed[i]] for k, i in enumerate(core) if i in fixed}
    how = CoreOrigin.REUSED if reused is not None else CoreOrigin.SEARCHED_AGAIN if prior else CoreOrigin.SEARCHED
    origin = CoreOrigin(how, len(core), len(core_fixed), why)
    log.info("%s (%d human labels), then one pass over the other %d", origin.text(), len(core_fixed), n - len(core))
    from icm_backend.engine.labeler import zero_shot_rows  # the labeler imports this module

    search = ICMSearch(core_problem, scorer, config, seed, checkpoint, "icm", max_window=window, fixed=core_fixed,
                       iters_per_row=config.core_iters_per_row)
    if reused is not None:
        state = search.adopt(np.array([fixed[i] if i in fixed else prior[i] for i in core]))
    else:  # the search's progress in rows of the whole project: a job's bar must not read 100% after the core
        state = search.run((lambda d, t, m: progress(d, n, f"ICM on the core ({len(core)} rows): {m}"))
                           if progress else None)
    core_labels = np.array(state.labels)
    # The one-pass contexts: the search's final order and the same resampled orders the core is assessed with.
    rng = np.random.default_rng([seed, 104729])
    orders = [list(search.plan.label_order)] + [search.context_order(rng) for _ in range(review.resamples)]
    labels_of = {core[k]: int(y) for k, y in enumerate(core_labels)}
    tokens_of = {core[k]: int(t) for k, t in enumerate(search.plan.block_tokens)}
    prefixes = [core_prefix(problem, [core[k] for k in o], labels_of, tokens_of, search.plan.context_tokens)
                for o in orders]
    in_core = set(core)
    chunks = chunk_rest(problem, [i for i in range(n) if i not in in_core], config.chunk_size, seed)
    side = Path(str(checkpoint) + ".core.json") if checkpoint else None
    h = hashlib.sha256(json.dumps([search.fingerprint, n, config.chunk_size, review.resamples,
                                   sorted(labels_of.items()) if reused is not None else None]).encode())
    for ex in problem.examples:
        h.update(ex.prompt.encode())
    cstate = CoreState.load(side, h.hexdigest()[:16])
    resume = on_chunk is not None  # only a caller that kept the chunks it was handed may skip them
    out: list[Prediction] = []
    done = len(core)

    def report(k: int) -> None:
        if progress:
            progress(done, n, f"one pass over the rest: chunk {k + 1}/{len(chunks)}, {done}/{n} rows labelled")

    def chunk_rows(idx: list[int]) -> list[np.ndarray]:
        got = one_pass_scores(problem, scorer, prefixes, idx)
        if problem.multiclass:
            got = [pmi(r, m) for r, m in zip(got, cstate.marginals)]
        return got

    # The fit: the core as assessed for a small project, plus the first chunk, scored as every later one.
    first = chunks[0] if chunks else []
    if not (resume and 0 in cstate.done_chunks and cstate.calibration):
        core_rows = [search.final_rows(core_labels)] + search.resampled_rows(core_labels, review.resamples, seed)
        raw = one_pass_scores(problem, scorer, prefixes + [""], first)
        cstate.marginals = [np.exp(r).mean(axis=0).tolist() for r in raw]
        if problem.multiclass:
            raw = [pmi(r, m) for r, m in zip(raw, cstate.marginals)]
        zero = np.concatenate([zero_shot_rows(core_problem, scorer), raw[-1]])
        fit_idx = core + first
        fit_problem = _sub_problem(problem, rows, fit_idx)
        fit_fixed = {k: fixed[i] for k, i in enumerate(fit_idx) if i in fixed}
        score_rows = [np.concatenate([c, r]) for c, r in zip(core_rows, raw[:-1])]
        own = np.concatenate([core_labels, np.full(len(first), -1)])  # the search labelled the core only
        preds, assessment, calib = fit_assessment(fit_problem, score_rows, zero, fit_fixed, review,
                                                  use_consistency=True, search_labels=own)
        cstate.calibration, cstate.assessment = calib.to_json(), assessment.to_json()
        preds = _remap(preds, fit_idx)
        done += len(first)
        report(0)
        if on_chunk is not None:
            on_chunk(preds)
        out += preds
        cstate.done_chunks = [0]
        cstate.save(side)
    else:
        done += len(first)
    calib = Calibration.from_json(cstate.calibration)
    for k, idx in enumerate(chunks[1:], start=1):
        if resume and k in cstate.done_chunks:
            done += len(idx)
            continue
        preds = _remap(apply_calibration(calib, _sub_problem(problem, rows, idx), chunk_rows(idx), True), idx)
        done += len(idx)
        report(k)
        if on_chunk is not None:
            on_chunk(preds)
        out += preds
        cstate.done_chunks.append(k)
        cstate.save(side)
    out.sort(key=lambda p: p.index)
    result = Labelling(out)
    result.core = {i: problem.label_words[y] for i, y in labels_of.items()}
    result.core_origin = origin
    result.assessment = _whole(Assessment(**cstate.assessment), out, problem, len(core) + len(first))
    log.info("labelling assessed (fitted on the core and the first chunk, %d rows): %s",
             len(core) + len(first), result.assessment.summary())
    return result


def _whole(fitted: Assessment, preds: list[Prediction], problem: Problem, fitted_on: int) -> Assessment:
    """The fitted Assessment with the counts of the whole labelling (what a user reads per project)."""
    free = [p for p in preds if not p.fixed]
    words = problem.label_words
    if free:
        fitted.label_share = {w: round(sum(p.label == w for p in free) / len(free), 4) for w in words}
        fitted.mean_confidence = round(float(np.mean([p.confidence for p in free])), 4)
    fitted.flagged = sum(1 for p in preds if p.flags)
    fitted.calibrated_on += f"; fitted on {fitted_on} of {len(problem.examples)} rows (the core and a random chunk)"
    fitted.n = len(problem.examples)
    return fitted
