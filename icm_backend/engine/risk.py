"""Accept with a stated error: which labels can be accepted unread, and how wrong that will be.

Input: one `Item` per labelled task (its calibrated confidence c_i = the probability of its label, and
whether the labelling flagged it for review) and the labelling's verdict (calibration.Assessment's
`reliable` / `reasons`). No Label Studio, no files: the server, the CLI and the bench share this module.

1. Coverage-error curve. Candidates are the unflagged items (a flagged task is reviewed, not accepted),
   sorted by confidence, most confident first. For the first n of them the *estimated* error is

       e(n) = (1/n) * sum_{i <= n} (1 - c_i)

   (the expected number of wrong labels among them, over n, if the confidences are calibrated). e(n)
   never decreases with n: each added item's 1 - c is at least every earlier one's, so at least their mean.
   Coverage = n / (all items that need a label: fixed/human rows excluded).

2. Safe set for a target error t: the largest prefix with e(n) <= t. Prefixes end only where the
   confidence changes (tied items are all in or all out), so the set is exactly "confidence >= cut".
   An unreliable labelling gets no safe set (its reasons are kept): its confidences were set from an
   accuracy estimate the labelling itself failed.

3. Audit. The estimate is optimistic exactly where it matters (measured: estimated accuracy 0.81 where
   the true one was 0.70), so a claim must be checked by people. The audit is a uniform random sample
   without replacement of its frame S: a prefix of the largest safe set over the targets (every other
   target's set is a prefix of it too). Its size m (`audit_size`) is the smallest audit that certifies the
   *primary* target t even when it finds errors at `tolerance` x t (default half the target): the smallest
   m with U(floor(m * tolerance * t), m) <= t. At 95% that is 153 for t = 5% (59 if it must find no error
   at all), 386 for 2%, 773 for 1%; it is capped by `max_audit` and by |S|. The frame (`frame_size`) is
   the prefix where the audit is expected to let the most tasks through unread, (|S| - m) x P[its test
   passes], that probability taken as if the estimate were 1.5 times too optimistic: audits spent on the
   least confident end of a set that cannot pass are wasted (measured on a synthetic labelling whose
   true error is 1.3 x the estimate: 17 of 60 audits certified a set with this frame, 4 of 60 with the
   whole safe set). It is chosen from the confidences alone, before any label is seen. Only the frame can
   be accepted after the audit: the tasks beyond it were never sampled.

4. Bound. U(k, n) is the exact one-sided Clopper-Pearson upper bound at level gamma (default 95%) on an
   error rate after k errors in n audited tasks: the p with P[Binomial(n, p) <= k] = 1 - gamma (U = 1 when
   k = n or n = 0). For k = 0 it is 1 - (1 - gamma)^(1/n). The audited tasks are a sample without
   replacement from a finite set, which varies less than the binomial: the bound is (generally) conservative.

5. Re-choosing after the audit, and what the bound then means. For a *fixed* prefix S' of S, the audited
   tasks that fall in S' are a uniform sample of S' (given how many fall there), so U on them is a valid
   95% bound for S' alone. Choosing S' *after* seeing the audit (the largest that passes) would test many
   S' and keep a lucky one, so the choice is made by fixed-sequence testing, which keeps the 95%:
   the candidate prefixes S_1 < S_2 < ... < S_G = S are fixed before any label is seen, from the
   confidences, m and |S| only (`candidate_sizes`: S_1 maximises |S_1| x the chance its test passes were
   its error 1.5 x the estimate; then `audit_steps` evenly spaced sizes up to S); they are tested in that
   order and testing stops at the first that fails. The accepted set is the last one that
   passed. What is guaranteed is the *target*: the probability that the accepted set (or any passed set)
   has a true error above t is at most 1 - gamma, because a wrong claim needs the first candidate whose
   true error exceeds t (which candidate that is does not depend on the audit) to pass, which has
   probability <= 1 - gamma on its own. The bound shown beside it, U on the audited tasks inside the
   accepted set, is that set's exact bound taken alone; as the set was chosen with the audit, its own 95%
   is not guaranteed by this argument (it is at most t, so the target claim covers it): bench_accept.py
   measures how often it holds. The claim is about the error *rate of that set of tasks* (a finite set,
   the audit being the only randomness), assumes the audit's labels are right, and says nothing about
   tasks added to the project later.
   An incomplete audit (some sampled tasks still unlabelled) certifies nothing: people may leave the hard
   ones for last, and the labelled part would no longer be a random sample.
   If nothing passes, the report says so and how many more audited tasks, all correct, would certify the
   target's estimated safe set: the smallest e with U(k, n + e) <= t for the k errors among its n audited
   tasks (auditing more after seeing a failure is itself a choice made after looking: say so when quoting
   the result).

Figures are always shown side by side: estimated error, audited (observed) error, and the bound.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import asdict, dataclass, field

from icm_backend.engine.types import UNRELIABLE, Prediction
from icm_backend.errors import InputError

DEFAULT_TARGETS = (0.01, 0.02, 0.05)


@dataclass(frozen=True)
class Item:
    """One labelled task as shipped: `key` is what the caller names it by (an LS task id, a row index)."""

    key: int
    confidence: float
    label: str | None = None
    flagged: bool = False


@dataclass
class RiskConfig:
    targets: tuple[float, ...] = DEFAULT_TARGETS  # error rates a team may accept
    primary: float | None = None  # the target the audit is sized for and the accept tab shows (default: largest)
    level: float = 0.95  # one-sided confidence of the audited bound
    tolerance: float = 0.5  # the audit certifies the primary target even at this share of it in errors
    max_audit: int = 200  # never ask people for more than this in one audit
    audit_steps: int = 10  # candidate sets tested in sequence after the audit

    def __post_init__(self):
        self.targets = tuple(sorted({float(t) for t in self.targets}))
        if not self.targets:
            raise InputError("targets: give at least one target error, e.g. 0.01,0.02,0.05")
        for t in self.targets:
            if not 0.0 < t < 1.0:
                raise InputError(f"targets: {t} is not an error rate in (0, 1)")
        if self.primary is None:
            self.primary = self.targets[-1]
        elif float(self.primary) not in self.targets:
            raise InputError(f"primary: {self.primary} is not one of the targets {list(self.targets)}")
        if not 0.5 <= self.level < 1.0:
            raise InputError(f"level: {self.level} is not a confidence level in [0.5, 1)")
        if not 0.0 <= self.tolerance < 1.0:
            raise InputError(f"tolerance: {self.tolerance} is not a share of the target in [0, 1)")
        if self.max_audit < 1:
            raise InputError(f"max_audit: {self.max_audit} must be at least 1")
        if self.audit_steps < 1:
            raise InputError(f"audit_steps: {self.audit_steps} must be at least 1")


@dataclass
class CurvePoint:
    size: int
    coverage: float
    min_confidence: float
    estimated_error: float


@dataclass
class SafeSet:
    """The estimated safe set for one target (before any audit)."""

    target: float
    size: int
    coverage: float
    min_confidence: float | None  # the cut: the set is every candidate with confidence >= this
    estimated_error: float | None
    keys: list[int] = field(default_factory=list)


@dataclass
class AuditPlan:
    """The tasks to audit: a uniform random sample of the largest safe set (`drawn_from` tasks)."""

    keys: list[int]
    drawn_from: int
    level: float
    seed: int


@dataclass
class Certified:
    """One target after the audit: the chosen set and its three figures, side by side."""

    target: float
    certified: bool
    size: int  # tasks in the chosen set (0 when not certified)
    coverage: float
    min_confidence: float | None
    estimated_error: float | None  # mean(1 - c) over the chosen set
    audited: int  # audited tasks inside the chosen set (or inside the estimated safe set if none passed)
    errors: int
    observed_error: float | None
    bound: float | None  # U(errors, audited) at `level`
    more_audits_needed: int | None = None  # zero-error audits that would certify the estimated safe set
    note: str = ""
    keys: list[int] = field(default_factory=list)


@dataclass
class RiskReport:
    n: int  # items that need a label (fixed rows excluded)
    candidates: int  # unflagged among them
    reliable: bool
    reasons: list[str]
    config: RiskConfig
    curve: list[CurvePoint]
    safe_sets: list[SafeSet]  # one per target; empty when unreliable
    audit: AuditPlan | None = None
    audit_labelled: int = 0  # sampled tasks people have labelled so far
    certified: list[Certified] = field(default_factory=list)  # one per target once the audit is complete
    warnings: list[str] = field(default_factory=list)  # e.g. confidences not calibrated (the caller knows)

    def safe_set(self, target: float) -> SafeSet | None:
        return next((s for s in self.safe_sets if s.target == target), None)

    def certified_for(self, target: float) -> Certified | None:
        return next((c for c in self.certified if c.target == target), None)

    @property
    def audit_complete(self) -> bool:
        return self.audit is not None and self.audit_labelled >= len(self.audit.keys)

    def to_json(self, keys: bool = False) -> dict:
        """Plain JSON; `keys=False` leaves out the task lists (what /jobs and /versions show)."""
        d = asdict(self)
        d["config"]["targets"] = list(self.config.targets)
        d["curve"] = [asdict(p) for p in thin_curve(self.curve, 50)]
        if not keys:
            for s in d["safe_sets"] + d["certified"]:
                s.pop("keys", None)
        d["audit_complete"] = self.audit_complete
        return d

    def status(self, target: float) -> str:
        c = self.certified_for(target)
        if not self.reliable:
            return "unreliable"
        if self.audit is None:
            return "no audit"
        if not self.audit_complete:
            return "audit incomplete"
        return "certified" if c is not None and c.certified else "not certified"

    def rows(self) -> list[dict]:
        """One row per target, the three figures side by side: the estimated safe set (size, estimated
        error); the audit (in the certified set, or in the estimated one when none passed: audited, wrong,
        observed error, bound); and the accepted set (what may be taken unread: the certified set, else 0)."""
        out = []
        for s in self.safe_sets:
            c = self.certified_for(s.target)
            out.append({"target": s.target, "status": self.status(s.target),
                        "estimated_size": s.size, "estimated_coverage": round(s.coverage, 4),
                        "estimated_error": _r(s.estimated_error),
                        "audited": None if c is None else c.audited, "wrong": None if c is None else c.errors,
                        "observed_error": None if c is None else _r(c.observed_error),
                        "bound": None if c is None else _r(c.bound),
                        "accepted_size": None if c is None else c.size,
                        "accepted_coverage": None if c is None else round(c.coverage, 4),
                        "accepted_estimated_error": None if c is None or not c.certified else _r(c.estimated_error),
                        "more_audits_needed": None if c is None else c.more_audits_needed,
                        "note": "" if c is None else c.note})
        return out

    def table(self) -> str:
        if not self.reliable:
            return "no safe set: the labelling is unreliable: " + "; ".join(self.reasons)
        notes = [f"warning: {w}" for w in self.warnings]
        lines = [f"{self.n} labelled tasks, {self.candidates} not flagged; audit: " + (
            "none drawn" if self.audit is None else
            f"{self.audit_labelled}/{len(self.audit.keys)} labelled, drawn from the {self.audit.drawn_from} most "
            f"confident, bound at {self.audit.level:.0%}"),
            f"{'target':>7} | {'estimated':^22} | {'audited':^30} | {'accepted':^15} | status",
            f"{'':>7} | {'tasks':>6} {'cover':>6} {'error':>7} | {'tasks':>6} {'wrong':>5} {'error':>7} "
            f"{'bound':>8} | {'tasks':>6} {'cover':>7} |"]
        for r in self.rows():
            lines.append(
                f"{r['target']:>7.1%} | {r['estimated_size']:>6} {r['estimated_coverage']:>6.1%} "
                f"{_pct(r['estimated_error']):>7} | {_dash(r['audited']):>6} {_dash(r['wrong']):>5} "
                f"{_pct(r['observed_error']):>7} {_pct(r['bound']):>8} | {_dash(r['accepted_size']):>6} "
                f"{_pct(r['accepted_coverage']):>7} | {r['status']}")
        if self.audit is None:
            lines.append("no audit yet: the figures are estimates only, nothing is accepted")
        elif not self.audit_complete:
            lines.append(f"audit incomplete: {self.audit_labelled} of {len(self.audit.keys)} sampled tasks labelled; "
                         "nothing is certified until all are")
        for c in self.certified:
            if c.note:
                lines.append(f"{c.target:.1%}: {c.note}")
        return "\n".join(lines + notes)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def _dash(x) -> str:
    return "-" if x is None else str(x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def from_predictions(preds: list[Prediction]) -> tuple[list[Item], bool, list[str]]:
    """What `icm-backend label` wrote -> (items keyed by row index, reliable, reasons). Fixed (human) rows are
    not items; the labelling is unreliable when its rows carry the UNRELIABLE flag (calibration.assess puts
    it on every row, with the reason)."""
    items, reasons = [], []
    for p in preds:
        if p.fixed:
            continue
        for f in p.flags:
            why = f.reason.removeprefix("labelling unreliable: ")  # calibration.assess's prefix; we say it once
            if f.kind == UNRELIABLE and why not in reasons:
                reasons.append(why)
        items.append(Item(key=p.index, confidence=float(p.confidence), label=p.label, flagged=bool(p.flags)))
    return items, not reasons, reasons


# -- exact binomial bounds ---------------------------------------------------------------------------
def _binom_cdf(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) <= k], summed in log space (exact up to rounding; k, n up to ~1e5 here)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    terms = [base - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * lp + (n - j) * lq for j in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def clopper_pearson_upper(errors: int, n: int, level: float = 0.95) -> float:
    """One-sided exact upper bound on an error rate after `errors` in `n` trials (see the module doc)."""
    if n < 0 or errors < 0 or errors > n:
        raise InputError(f"errors {errors} of n {n}: expected 0 <= errors <= n")
    if not 0.0 < level < 1.0:
        raise InputError(f"level: {level} is not in (0, 1)")
    if n == 0 or errors == n:
        return 1.0
    alpha = 1.0 - level
    if errors == 0:
        return 1.0 - alpha ** (1.0 / n)
    lo, hi = errors / n, 1.0  # the cdf falls as p grows; the bound lies above the observed rate
    for _ in range(100):
        mid = (lo + hi) / 2
        if _binom_cdf(errors, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def zero_error_audit_size(target: float, level: float = 0.95) -> int:
    """The fewest audited tasks that certify `target` when none is wrong: ceil(log(1-level) / log(1-target))."""
    return math.ceil(math.log(1.0 - level) / math.log(1.0 - target) - 1e-12)


def audit_size(target: float, level: float = 0.95, tolerance: float = 0.5) -> int:
    """The smallest m with U(floor(m * tolerance * target), m) <= target (module doc, point 3)."""
    m = zero_error_audit_size(target, level)
    while clopper_pearson_upper(math.floor(m * tolerance * target + 1e-9), m, level) > target:
        m += 1
    return m


def more_audits_needed(errors: int, audited: int, target: float, level: float = 0.95,
                       limit: int = 10_000_000) -> int | None:
    """The fewest extra audited tasks, all correct, after which U(errors, audited + extra) <= target."""
    if clopper_pearson_upper(errors, audited, level) <= target:
        return 0
    hi = 1
    while clopper_pearson_upper(errors, audited + hi, level) > target:
        hi *= 2
        if hi > limit:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if clopper_pearson_upper(errors, audited + mid, level) <= target:
            hi = mid
        else:
            lo = mid
    return hi


# -- curve and safe sets -----------------------------------------------------------------------------
def _check_items(items: list[Item]) -> None:
    seen = set()
    for it in items:
        if not (isinstance(it.confidence, (int, float)) and 0.0 <= it.confidence <= 1.0) or math.isnan(it.confidence):
            raise InputError(f"confidence: task {it.key} has {it.confidence!r}; expected a probability in [0, 1]")
        if it.key in seen:
            raise InputError(f"key: task {it.key} appears twice")
        seen.add(it.key)


def ranked(items: list[Item]) -> list[Item]:
    """The candidates (unflagged), most confident first; ties by key so the order is reproducible."""
    return sorted((it for it in items if not it.flagged), key=lambda it: (-it.confidence, it.key))


def block_ends(order: list[Item]) -> list[int]:
    """Prefix sizes where the confidence changes (a prefix never splits tied items)."""
    return [i + 1 for i in range(len(order)) if i + 1 == len(order) or order[i + 1].confidence != order[i].confidence]


def coverage_curve(items: list[Item]) -> list[CurvePoint]:
    """e(n) and coverage at every prefix end (module doc, point 1)."""
    _check_items(items)
    order, total = ranked(items), max(len(items), 1)
    out, err = [], 0.0
    ends = set(block_ends(order))
    for i, it in enumerate(order):
        err += 1.0 - it.confidence
        if i + 1 in ends:
            out.append(CurvePoint(i + 1, (i + 1) / total, it.confidence, err / (i + 1)))
    return out


def true_curve(items: list[Item], correct: dict[int, bool]) -> list[CurvePoint]:
    """The coverage-error curve with the *true* error (from gold labels) in `estimated_error`'s place, at the
    same prefix ends; items without a gold label are left out of both counts."""
    order, total = ranked(items), max(len(items), 1)
    ends = set(block_ends(order))
    out, wrong, known = [], 0, 0
    for i, it in enumerate(order):
        if it.key in correct:
            known += 1
            wrong += not correct[it.key]
        if i + 1 in ends and known:
            out.append(CurvePoint(i + 1, (i + 1) / total, it.confidence, wrong / known))
    return out


def true_error(keys: list[int], correct: dict[int, bool]) -> float | None:
    """The share of `keys` whose label is wrong, among those with a gold label (None if none has one)."""
    known = [correct[k] for k in keys if k in correct]
    return None if not known else sum(not c for c in known) / len(known)


def thin_curve(curve: list[CurvePoint], points: int) -> list[CurvePoint]:
    """At most about `points` evenly spaced points of the curve (the last one kept), for JSON."""
    if len(curve) <= points:
        return list(curve)
    step = len(curve) / points
    picked = sorted({int(i * step) for i in range(points)} | {len(curve) - 1})
    return [curve[i] for i in picked]


def safe_set(items: list[Item], target: float) -> SafeSet:
    """The largest prefix (by confidence) whose estimated error is within `target`."""
    curve = coverage_curve(items)
    best = None
    for p in curve:  # e(n) never decreases: the last point within the target is the largest set
        if p.estimated_error <= target + 1e-12:
            best = p
        else:
            break
    order = ranked(items)
    if best is None:
        return SafeSet(target, 0, 0.0, None, None, [])
    return SafeSet(target, best.size, best.coverage, best.min_confidence, best.estimated_error,
                   [it.key for it in order[:best.size]])


def risk_report(items: list[Item], reliable: bool = True, reasons: list[str] | None = None,
                config: RiskConfig | None = None) -> RiskReport:
    """The report before any audit: the curve, and a safe set per target unless the labelling is unreliable."""
    config = config or RiskConfig()
    curve = coverage_curve(items)
    reasons = list(reasons or [])
    if not reliable and not reasons:
        reasons = ["the labelling was marked unreliable"]
    sets = [] if not reliable else [safe_set(items, t) for t in config.targets]
    return RiskReport(n=len(items), candidates=sum(1 for it in items if not it.flagged), reliable=reliable,
                      reasons=reasons, config=config, curve=curve, safe_sets=sets)


def plan_audit(report: RiskReport, seed: int = 0, size: int | None = None, items: list[Item] | None = None,
               pessimism: float = 1.5) -> AuditPlan | None:
    """A uniform sample of the audit's frame (module doc, point 3); None when there is no safe set.

    The frame is the largest safe set, or with `items` given, the prefix of it where the audit is expected
    to certify the most tasks for the primary target (`frame_size`): audits spent on the least confident
    end of a set that cannot pass are wasted."""
    if not report.safe_sets:
        return None
    largest = max(report.safe_sets, key=lambda s: s.size)
    if largest.size == 0:
        return None
    cfg = report.config
    m = size if size is not None else min(cfg.max_audit, audit_size(cfg.primary, cfg.level, cfg.tolerance))
    if m < 1:
        raise InputError(f"audit size: {m} must be at least 1")
    frame = largest.size
    if items is not None:
        frame = frame_size(ranked(items)[:largest.size], m, cfg.primary, cfg.level, pessimism)
    m = min(m, frame)
    keys = sorted(random.Random(seed).sample(sorted(largest.keys[:frame]), m))
    return AuditPlan(keys=keys, drawn_from=frame, level=cfg.level, seed=seed)


def frame_size(order: list[Item], m: int, target: float, level: float, pessimism: float = 1.5,
               grid: int = 60) -> int:
    """The prefix of `order` to draw an audit of m tasks from: the one maximising (|F| - m) x P[a test of F
    on min(m, |F|) audited tasks passes] (the tasks it lets through unread), that probability taken with the error F would have if its estimate
    were `pessimism` times too low. Uses the confidences only (fixed before any label is seen)."""
    ends = block_ends(order)
    if not ends:
        return 0
    cum, err = [0.0], 0.0
    for it in order:
        err += 1.0 - it.confidence
        cum.append(err)
    step = max(1, len(ends) // grid)
    best, best_value = ends[-1], 0.0  # no frame can pass: audit the whole set (it still measures the error)
    for f in ends[::step] + [ends[-1]]:
        n = min(m, f)
        # what the audit buys: tasks accepted unread (the audited ones are read anyway)
        value = (f - n) * pass_probability(n, min(1.0, pessimism * cum[f] / f), target, level)
        if value > best_value:
            best, best_value = f, value
    return best


def max_errors_passing(n: int, target: float, level: float) -> int:
    """The most errors among n audited tasks that still give U <= target; -1 if even none does not."""
    if n < 1 or clopper_pearson_upper(0, n, level) > target:
        return -1
    k = 0
    while k + 1 <= n and clopper_pearson_upper(k + 1, n, level) <= target:
        k += 1
    return k


def pass_probability(n: int, rate: float, target: float, level: float) -> float:
    """P[an audit of n tasks from a set with error `rate` gives U <= target]."""
    k = max_errors_passing(n, target, level)
    return 0.0 if k < 0 else _binom_cdf(k, n, min(max(rate, 0.0), 1.0))


def _binom_pmf(j: int, n: int, p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return float(j == (0 if p <= 0.0 else n))
    return math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
                    + j * math.log(p) + (n - j) * math.log1p(-p))


def candidate_sizes(order: list[Item], drawn_from: int, sampled: int, target: float, level: float,
                    steps: int, pessimism: float = 1.5, grid: int = 60) -> list[int]:
    """The prefixes tested after the audit, smallest first, fixed before any label is seen (module doc,
    point 5). The first is the prefix S' that maximises |S'| x P[its test passes], that probability taken
    over the audited count landing there (about Binomial(sampled, |S'| / drawn_from)) and with the error it
    would have if the estimate were `pessimism` times too low (it was measured optimistic); the others evenly
    spaced up to the whole sampled set. Each size is moved up to the end of its tie block."""
    confs = tuple(it.confidence for it in order[:drawn_from])
    return list(_candidate_sizes(confs, drawn_from, sampled, target, level, steps, pessimism, grid))


@functools.lru_cache(maxsize=64)  # the same sets for every audit of one labelling (benches draw hundreds)
def _candidate_sizes(confs: tuple[float, ...], drawn_from: int, sampled: int, target: float, level: float,
                     steps: int, pessimism: float, grid: int) -> tuple[int, ...]:
    if sampled < zero_error_audit_size(target, level) or drawn_from < 1:
        return ()
    ends = [i + 1 for i in range(len(confs)) if i + 1 == len(confs) or confs[i + 1] != confs[i]]
    cum, err = [0.0], 0.0
    for c in confs:
        err += 1.0 - c
        cum.append(err)
    step = max(1, len(ends) // grid)
    kmax = [max_errors_passing(n, target, level) for n in range(sampled + 1)]
    best, best_value = None, 0.0
    for e in ends[::step] + [ends[-1]]:
        # how many sampled tasks land in the prefix is itself random (about Binomial(sampled, e / drawn_from))
        share, rate, value = e / drawn_from, min(1.0, pessimism * cum[e] / e), 0.0
        for n in range(sampled + 1):
            if kmax[n] >= 0:
                w = _binom_pmf(n, sampled, share)
                if w > 1e-9:
                    value += w * _binom_cdf(kmax[n], n, rate)
        value *= e
        if value > best_value:
            best, best_value = e, value
    if best is None:
        return ()
    want = [best] if steps == 1 or best == drawn_from else [
        round(best + (drawn_from - best) * j / (steps - 1)) for j in range(steps)]
    out: list[int] = []
    for w in want:
        e = next((e for e in ends if e >= w), drawn_from)
        if not out or e > out[-1]:
            out.append(e)
    return tuple(out)


def apply_audit(items: list[Item], report: RiskReport, plan: AuditPlan, correct: dict[int, bool]) -> RiskReport:
    """`report` (from risk_report(items, ...)) with the audit's outcome. `correct` maps the sampled keys
    people labelled to whether the shipped label was right (other keys are ignored). Certifies per target
    only once every sampled task is labelled (module doc, point 5). Returns the same report, updated."""
    sample = set(plan.keys)
    labelled = {k: bool(v) for k, v in correct.items() if k in sample}
    report.audit = plan
    report.audit_labelled = len(labelled)
    report.certified = []
    if not report.safe_sets or not report.audit_complete:
        return report
    order = ranked(items)
    if len(order) < plan.drawn_from or any(k not in {it.key for it in order[:plan.drawn_from]} for k in sample):
        raise InputError("audit: the sampled tasks are not all in the largest safe set of these items "
                         "(were the items changed after the audit was drawn?)")
    total = max(report.n, 1)
    # running counts of audited tasks and errors, and the estimated error, at every prefix size
    aud, err, est = [0], [0], [0.0]
    for it in order[:plan.drawn_from]:
        aud.append(aud[-1] + (it.key in sample))
        err.append(err[-1] + (it.key in sample and not labelled[it.key]))
        est.append(est[-1] + 1.0 - it.confidence)
    for s in report.safe_sets:
        t, level = s.target, plan.level
        sizes = candidate_sizes(order, plan.drawn_from, len(plan.keys), t, level, report.config.audit_steps)
        chosen = None
        for size in sizes:  # fixed sequence: stop at the first set that fails
            if clopper_pearson_upper(err[size], aud[size], level) <= t:
                chosen = size
            else:
                break
        if chosen is not None:
            report.certified.append(Certified(
                t, True, chosen, chosen / total, order[chosen - 1].confidence, est[chosen] / chosen, aud[chosen],
                err[chosen], err[chosen] / aud[chosen], clopper_pearson_upper(err[chosen], aud[chosen], level),
                keys=[it.key for it in order[:chosen]]))
            continue
        # Not certified: the figures of the estimated safe set, and what more auditing would take.
        n_s = min(s.size, plan.drawn_from)  # the audit says nothing beyond its frame
        a, e = aud[n_s], err[n_s]
        more = more_audits_needed(e, a, t, level)
        room = n_s - a  # unaudited tasks left in that set
        where = (f"its estimated safe set ({n_s} tasks)" if n_s == s.size else
                 f"the audited part of its estimated safe set (the {n_s} most confident of {s.size} tasks)")
        bound = clopper_pearson_upper(e, a, level)
        if n_s == 0:
            note = f"cannot certify {t:.1%}: its estimated safe set is empty"
        elif more is None or more > room:
            note = (f"cannot certify {t:.1%} with this audit: {e} error(s) in {a} audited tasks of {where}, bound "
                    f"{bound:.1%}; no sample of that set can: only reading all {room} others (a census, the error "
                    "then counted, not bounded) would")
        elif more == 0:
            note = (f"cannot certify {t:.1%} with this audit: {where} alone would pass ({e} error(s) in {a} audited, "
                    f"bound {bound:.1%}), but the sets are tested in a fixed order and the first ({sizes[0]} tasks, "
                    f"{aud[sizes[0]]} audited, {err[sizes[0]]} wrong) failed; claiming it now would be choosing "
                    "after looking: a new audit is needed")
        else:
            first = sizes[0] if sizes else None
            why = (f"the first set tested ({first} tasks, {aud[first]} audited, {err[first]} wrong) failed" if first else
                   f"{len(plan.keys)} audited tasks are fewer than the {zero_error_audit_size(t, level)} a "
                   f"zero-error audit needs")
            note = (f"cannot certify {t:.1%} with this audit ({why}): {e} error(s) in {a} audited tasks of {where}, "
                    f"bound {bound:.1%}; {more} more audited tasks from that set, all correct, would certify it")
        report.certified.append(Certified(
            t, False, 0, 0.0, None, s.estimated_error, a, e, (e / a) if a else None,
            clopper_pearson_upper(e, a, level), more_audits_needed=more, note=note))
    return report
