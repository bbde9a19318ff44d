"""The three Data Manager tabs of a risk report (engine.risk): "review first", "audit" and "accept".

How a tab finds its tasks: a task in the audit or the accept set carries its mark in a task data field,
`icm_accept` = "audit" | "accept", and those tabs filter on it (`filter:tasks:data.icm_accept` equal <mark>);
the review tab holds the predicted tasks with no mark (`empty`). Why no "review" mark: the review set is
most of a project, and LS 1.23.2 takes one PATCH per task (~6 a second here: marking all 10,000 tasks of a
project took 28 minutes), so only the audit and the accept set are written, and only where a mark changes.
Why a data
field: LS 1.23.2's Data Manager filters match task columns and task data (a JSON lookup on any key) but
not task meta, and the other candidates do not name an arbitrary set: the score filter cannot exclude a
flagged task or split tied scores, and a marker inside the prediction's result would be copied into the
annotations "Create Annotations From Predictions" makes. The mark is visible as a column and in exports
(documented); the rows for the engine read only the fields the label config names, so it never reaches
a prompt. LS's PATCH replaces a task's whole `data`, so the mark is written with the task's data as read.

- review first: every task with a prediction of the version that is neither audited nor accepted and has no
  annotation yet, least confident first (ordering by the prediction score, ascending): flagged tasks and
  the confident-but-not-enough.
- audit: the audit sample; people label these blind (see docs/label_studio.md).
- accept: the set for the primary target: before the audit is complete, the estimated safe set (the title
  says "not audited"); after, the set the audit certified, or nothing. The audited tasks are not in it
  (people labelled them). Accepting = LS's "Create Annotations From Predictions" on this tab.

Each title carries its count and, for accept, the estimated error, the audited error and the bound side
by side. The backend finds its own tabs again by their title's first words (TITLES), so a renamed tab is
left alone and a new one made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from icm_backend.engine.risk import RiskReport

log = logging.getLogger(__name__)

MARK_FIELD = "icm_accept"
REVIEW, AUDIT, ACCEPT = "review", "audit", "accept"
# The count comes right after these words: LS cuts a tab's title to ~15 characters in the tab bar. The
# backend finds its tabs again by them (a tab named "ICM review first" by an older version still matches).
TITLES = {REVIEW: "ICM review", AUDIT: "ICM audit", ACCEPT: "ICM accept"}
SCORE = "tasks:predictions_score"


@dataclass
class Tab:
    mark: str
    title: str
    count: int

    def view_data(self) -> dict:
        """The `data` of a /api/dm/views request for this tab (LS 1.23.2's shapes)."""
        if self.mark == REVIEW:  # predicted, not marked; labelled tasks leave the queue
            items = [{"filter": f"filter:tasks:data.{MARK_FIELD}", "operator": "empty", "type": "String",
                      "value": True},
                     {"filter": "filter:tasks:total_predictions", "operator": "greater", "type": "Number", "value": 0},
                     {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]
        else:
            items = [{"filter": f"filter:tasks:data.{MARK_FIELD}", "operator": "equal", "type": "String",
                      "value": self.mark}]
        return {"title": self.title, "filters": {"conjunction": "and", "items": items},
                "ordering": [SCORE] if self.mark != ACCEPT else [f"-{SCORE}"]}


@dataclass
class TabPlan:
    marks: dict[int, str]  # task id -> mark (AUDIT or ACCEPT; a task of the report with none is in review)
    tabs: list[Tab]
    accept_keys: list[int]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _target(t: float) -> str:
    return f"{t * 100:.3g}%"  # 5% -> "5%", 2.5% -> "2.5%"


def plan_tabs(report: RiskReport, keys: list[int], flagged: set[int], unlabelled: set[int]) -> TabPlan:
    """Marks and titles from a report over task ids. `keys`: the report's tasks (every task with a
    prediction of the version); `flagged`: those the labelling flagged; `unlabelled`: those without any
    annotation (only they count in the review tab's title)."""
    target = report.config.primary
    audit = set(report.audit.keys) if report.audit else set()
    est = report.safe_set(target)
    cert = report.certified_for(target)
    if cert is not None:
        accept = [k for k in cert.keys if k not in audit]
    elif est is not None:
        accept = [k for k in est.keys if k not in audit]
    else:
        accept = []
    marks = {k: AUDIT for k in audit}
    marks.update({k: ACCEPT for k in accept})
    review = [k for k in keys if k not in marks and k in unlabelled]
    n_flag = sum(1 for k in review if k in flagged)
    tabs = [Tab(REVIEW, f"{TITLES[REVIEW]} {len(review)} ({n_flag} flagged), least confident first", len(review))]
    if report.audit is not None:
        done = report.audit_labelled
        wrong = ""
        if cert is not None:
            wrong = f", {cert.errors} wrong in the accepted set" if cert.certified else f", {cert.errors} wrong"
        tabs.append(Tab(AUDIT, f"{TITLES[AUDIT]} {done}/{len(audit)} labelled{wrong}", len(audit)))
    if not report.reliable:
        title = f"{TITLES[ACCEPT]} 0 ≤{_target(target)} (labelling unreliable)"
    elif cert is not None and cert.certified:
        title = (f"{TITLES[ACCEPT]} {len(accept)} ≤{_target(target)} · est {_pct(cert.estimated_error)} · audited "
                 f"{cert.errors}/{cert.audited} wrong · bound {_pct(cert.bound)}")
    elif cert is not None:
        title = (f"{TITLES[ACCEPT]} 0 ≤{_target(target)} · not certified (est {_pct(cert.estimated_error)}, audited "
                 f"{cert.errors}/{cert.audited} wrong, bound {_pct(cert.bound)})")
    elif est is not None and est.size:
        raw = " (uncalibrated)" if report.warnings else ""  # e.g. zero-shot: the model's raw probability
        title = (f"{TITLES[ACCEPT]} {len(accept)} ≤{_target(target)} · est {_pct(est.estimated_error)}{raw} · "
                 f"not audited yet ({report.audit_labelled}/{len(audit)})")
    else:
        title = f"{TITLES[ACCEPT]} 0 ≤{_target(target)} (no set is estimated within the target)"
    tabs.append(Tab(ACCEPT, title, len(accept)))
    return TabPlan(marks, tabs, accept)


def sync_tabs(client, project: int, plan: TabPlan, tasks: list[dict]) -> dict[str, int]:
    """Write the marks (only where they change: a task marked by an earlier report and in review now loses
    its mark) and create or update the three tabs; {mark: view id}. `tasks`: the project's tasks as read
    (id, data), so a PATCH keeps every other data field."""
    changes = []
    for task in tasks:
        tid, data = int(task["id"]), dict(task.get("data") or {})
        mark = plan.marks.get(tid)
        if data.get(MARK_FIELD) != mark:
            if mark is None:
                data.pop(MARK_FIELD)
            else:
                data[MARK_FIELD] = mark
            changes.append((tid, data))
    if changes:
        log.info("Data Manager tabs: writing %d task mark(s) (one PATCH each)", len(changes))
    for n, (tid, data) in enumerate(changes, start=1):
        client.update_task_data(tid, data)
        if n % 500 == 0:
            log.info("Data Manager tabs: %d/%d task marks written", n, len(changes))
    existing = {}
    for view in client.views(project):
        title = str((view.get("data") or {}).get("title") or "")
        for mark, prefix in TITLES.items():
            if title.startswith(prefix) and mark not in existing:
                existing[mark] = view
    out = {}
    for tab in plan.tabs:
        view = existing.get(tab.mark)
        if view is None:
            made = client.create_view(project, tab.view_data())
        else:
            data = {**(view.get("data") or {}), **tab.view_data()}  # keep the user's columns and widths
            made = client.update_view(int(view["id"]), project, data)
        out[tab.mark] = int(made["id"])
    return out
