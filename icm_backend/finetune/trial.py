"""A kept version on trial: where it and the serving version disagree, the reviewers decide.

The promotion gate (finetune.gate) sees a held-out fifth of the accepted labels. A real 2-point gain
is about one discordant row in 25 there, and the sign test needs at least 3 : 0, so the gate keeps
versions that would have labelled the project better (measured: bench/RESULTS.md, "The versions the
gate kept"). A trial gives such a version the evidence the held-out slice lacks:

1. The ICM job also labels the project with the **challenger**: the newest version the gate kept that
   is newer than the serving one (`challenger`). Where the two labellings disagree one of them is
   wrong; those tasks are flagged for review, and the trial record (`versions/<challenger>/
   trial-<project>.json`) lists them with both labels.
2. At the next training, before anything is trained, the reviewers' labels on those tasks decide
   (`decide`): b tasks where the human gave the challenger's label, c where the serving version's.
   The challenger serves iff

       b > c  and  P(X >= b | X ~ Binomial(b + c, 1/2)) <= alpha        (the gate's test and level)

   Tasks where the two versions agree cannot tell them apart, so the disagreements carry all the
   evidence there is; and the challenger never trained on them (they had no label when it trained).
   A challenger the reviewers reject at the same level (c > b, P(X >= c) <= alpha) is retired: no
   later ICM job labels with it again.

Measured on the review-loop bench (`bench_loop.py --arms disagree`, SST-2, seeds 0 and 1): five verdicts
from 6-32 reviewed disagreements, each the same as the kept version's true record on every
never-reviewed task (bench/RESULTS.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from icm_backend.finetune.gate import DEFAULT_ALPHA, sign_test
from icm_backend.versions import VersionInfo, list_versions, promote, record_gate, version_number, versions_root

log = logging.getLogger(__name__)

TRIAL_FILE = "trial-{project}.json"


@dataclass
class TrialRecord:
    """Where the challenger and the serving version labelled one project differently."""

    challenger: str
    against: str  # the serving version it was compared with
    project: int
    disagreements: dict[int, tuple[str, str]] = field(default_factory=dict)  # task -> (challenger's, serving's) word
    compared: int = 0  # tasks both labelled
    job: int | None = None
    updated_at: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["disagreements"] = {str(t): list(v) for t, v in self.disagreements.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrialRecord":
        return cls(challenger=d["challenger"], against=d["against"], project=int(d["project"]),
                   disagreements={int(t): (v[0], v[1]) for t, v in (d.get("disagreements") or {}).items()},
                   compared=int(d.get("compared", 0)), job=d.get("job"), updated_at=d.get("updated_at", ""))


@dataclass
class TrialVerdict:
    challenger: str
    against: str
    disagreements: int  # tasks in the record
    reviewed: int  # of those, with a human label
    b: int  # the human gave the challenger's label
    c: int  # the human gave the serving version's label
    p: float  # one-sided sign test for the challenger
    promote: bool
    retire: bool
    reason: str
    alpha: float = DEFAULT_ALPHA

    def to_json(self) -> dict:
        return asdict(self)


def _gate_of(v: VersionInfo) -> dict:
    return v.metrics.get("gate") or {}


def challenger(model_dir: str | Path, serving: str) -> VersionInfo | None:
    """The newest version newer than `serving` (a version name, or anything else for the base model) that
    the gate kept and no trial has promoted or retired; None when there is none."""
    floor = version_number(serving)
    for v in reversed(list_versions(model_dir)):
        if version_number(v.name) <= floor:
            return None
        g = _gate_of(v)
        if g and g.get("promoted") is False and not (g.get("trial") or {}).get("retire"):
            return v
    return None


def trial_path(model_dir: str | Path, version: str, project: int) -> Path:
    return versions_root(model_dir) / version / TRIAL_FILE.format(project=int(project))


def read_trial(model_dir: str | Path, version: str, project: int) -> TrialRecord | None:
    try:
        return TrialRecord.from_json(json.loads(trial_path(model_dir, version, project).read_text()))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def write_trial(model_dir: str | Path, record: TrialRecord) -> None:
    """Store the record (atomic replace). An earlier record of the same challenger against the same serving
    version is merged, the new labels winning: tasks annotated since were not labelled again, and their
    entries are the evidence the next training reads."""
    old = read_trial(model_dir, record.challenger, record.project)
    if old is not None and old.against == record.against:
        record.disagreements = {**old.disagreements, **record.disagreements}
    record.updated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = trial_path(model_dir, record.challenger, record.project)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record.to_json()))
    os.replace(tmp, path)


def decide(record: TrialRecord, human: dict[int, str], alpha: float = DEFAULT_ALPHA) -> TrialVerdict:
    """The reviewers' verdict on the challenger from their labels {task id: label word} (module docstring)."""
    reviewed = [t for t in record.disagreements if t in human]
    ours = [human[t] == record.disagreements[t][0] for t in reviewed]
    theirs = [human[t] == record.disagreements[t][1] for t in reviewed]
    b, c, p = sign_test(ours, theirs)
    _, _, p_against = sign_test(theirs, ours)
    promote_it = b > c and p <= alpha
    retire = c > b and p_against <= alpha
    what = ("promoted" if promote_it else "retired (the reviewers side with the serving version)" if retire
            else "still on trial")
    reason = (f"{what}: on {len(reviewed)} reviewed of {len(record.disagreements)} tasks where {record.challenger} "
              f"and {record.against} disagree, the human label is {record.challenger}'s on {b}, {record.against}'s "
              f"on {c} (sign test p = {p:.2f}, {'<=' if p <= alpha else '>'} {alpha})")
    return TrialVerdict(record.challenger, record.against, len(record.disagreements), len(reviewed), b, c,
                        round(p, 4), promote_it, retire, reason, alpha)


def run_trial(model_dir: str | Path, project: int, serving: str, human: dict[int, str],
              alpha: float = DEFAULT_ALPHA) -> TrialVerdict | None:
    """Decide the current challenger's trial on `project` and act on it: promote (CURRENT switches to it),
    retire, or leave it on trial. The verdict is stored in the challenger's gate record (/versions shows
    it). None when there is no challenger, no record for this project, or the record was made against a
    version that no longer serves (its disagreements say nothing about the serving one)."""
    v = challenger(model_dir, serving)
    if v is None:
        return None
    record = read_trial(model_dir, v.name, project)
    if record is None or record.against != serving:
        return None
    verdict = decide(record, human, alpha)
    if verdict.reviewed == 0:
        return verdict
    gate = dict(_gate_of(v))
    gate["trial"] = {**verdict.to_json(), "project": project,
                     "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if verdict.promote:
        gate["promoted"] = True
        gate["reason"] = f"promoted by review after the gate kept it ({gate.get('reason', '')}); {verdict.reason}"
    record_gate(model_dir, v.name, gate)
    if verdict.promote:
        promote(model_dir, v.name)
        log.info("project %s: %s", project, verdict.reason)
    return verdict

