"""Accept with a stated error, in the server: the risk report (engine.risk) of a project's labelling, its
audit sample and the Data Manager tabs (labelstudio.tabs), kept up to date.

- At the end of every ICM job (`after_labelling`, one call from server.icm_job): read the project back from
  Label Studio, build the report from the predictions of the job's version (their scores and flags, as they
  ship) and the job's verdict (an unreliable labelling gets no safe set), draw the audit sample (seeded by
  the job id), mark the tasks and write the tabs. Kept in the job's state under "accept": /jobs shows it.
- When people label (annotation webhooks), an "accept" job re-reads the project, scores the audit (the
  humans' labels against the predictions', labelstudio.annotations rules: an annotation made from a
  prediction and left unchanged is not a human label), re-chooses the accepted set (engine.risk, point 5)
  and updates marks and tabs. The audit sample is the one the ICM job drew: re-drawing after seeing labels
  would void the bound.
- /versions shows each project's latest figures (`latest_figures`).

Nothing here fails a labelling: a Label Studio error is logged and noted in the job's state and message.

Settings (environment): ICM_ACCEPT=0 turns it off; ICM_ACCEPT_TARGETS (default 0.01,0.02,0.05);
ICM_ACCEPT_PRIMARY (the accept tab's target, default the largest); ICM_AUDIT_SIZE (default: from the
primary target and level, engine.risk.audit_size, at most ICM_AUDIT_MAX=200); ICM_AUDIT_LEVEL (0.95).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

from icm_backend.engine.risk import AuditPlan, RiskConfig, apply_audit, plan_audit, risk_report
from icm_backend.envvars import env_float, env_int, env_switch
from icm_backend.errors import InputError
from icm_backend.labelstudio.config import parse_label_config
from icm_backend.labelstudio.risk_items import audit_outcomes, risk_items
from icm_backend.labelstudio.tabs import plan_tabs, sync_tabs

log = logging.getLogger(__name__)

ACCEPT_KIND = "accept"
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")


@dataclass
class AcceptSettings:
    enabled: bool = True
    targets: tuple[float, ...] = (0.01, 0.02, 0.05)
    primary: float | None = None
    audit_size: int | None = None
    audit_max: int = 200
    level: float = 0.95

    @classmethod
    def from_env(cls, env: dict | None = None) -> "AcceptSettings":
        env = os.environ if env is None else env
        raw = env.get("ICM_ACCEPT_TARGETS", "")
        try:
            targets = tuple(float(x) for x in raw.split(",") if x.strip()) or cls.targets
        except ValueError:
            raise InputError(f"ICM_ACCEPT_TARGETS={raw!r}: expected error rates such as 0.01,0.02,0.05") from None
        primary = env.get("ICM_ACCEPT_PRIMARY")
        size = env.get("ICM_AUDIT_SIZE")
        return cls(enabled=env_switch(env, "ICM_ACCEPT", True), targets=targets,
                   primary=float(primary) if primary else None,
                   audit_size=env_int(env, "ICM_AUDIT_SIZE", 0) if size else None,
                   audit_max=env_int(env, "ICM_AUDIT_MAX", 200), level=env_float(env, "ICM_AUDIT_LEVEL", 0.95))

    def risk_config(self) -> RiskConfig:
        return RiskConfig(targets=self.targets, primary=self.primary, level=self.level, max_audit=self.audit_max)


def refresh(client, project: int, spec, version: str, verdict: dict | None, settings: AcceptSettings,
            plan: AuditPlan | None = None, seed: int = 0) -> dict:
    """Read the project, build the report (drawing the audit if `plan` is None), write marks and tabs.
    Returns what the job state keeps under "accept" (the plan's task ids included, for the next refresh)."""
    tasks = client.tasks_with_labels(project)
    items = risk_items(tasks, spec, version)
    reliable = verdict is None or bool(verdict.get("reliable", True))
    reasons = list((verdict or {}).get("reasons") or [])
    report = risk_report(items, reliable=reliable, reasons=reasons, config=settings.risk_config())
    if verdict and verdict.get("calibrated_on", "").startswith("none"):
        report.warnings.append(f"confidences not calibrated ({verdict['calibrated_on']}): the estimated error is "
                               "the model's raw probability; only the audit's bound means anything")
    if plan is None:
        plan = plan_audit(report, seed=seed, size=settings.audit_size, items=items)
    if plan is not None:
        apply_audit(items, report, plan, audit_outcomes(tasks, spec, version, plan.keys))
    annotated = {int(t["id"]) for t in tasks if t.get("annotations")}
    tabs = plan_tabs(report, [it.key for it in items], {it.key for it in items if it.flagged},
                     {it.key for it in items} - annotated)
    views = sync_tabs(client, project, tabs, tasks)
    return {"model_version": version, "report": report.to_json(), "table": report.rows(),
            "plan": None if plan is None else asdict(plan), "views": views,
            "tabs": [{"mark": t.mark, "title": t.title, "count": t.count} for t in tabs.tabs]}


def _note(accept: dict) -> str:
    tabs = accept.get("tabs") or []
    return "; Data Manager tabs: " + " | ".join(t["title"] for t in tabs) if tabs else ""


def after_labelling(icm_job, ctx, spec, state: dict) -> str:
    """The ICM job's last step (see the module doc): keeps state["accept"], returns a note for its message."""
    settings = AcceptSettings.from_env()
    job = ctx.job
    if not settings.enabled:
        return ""
    from icm_backend.server.icm_job import labelling_verdict

    verdict = labelling_verdict(state.get("assessment"))  # with what the calibration was fitted on
    try:
        accept = refresh(icm_job.ls_for(job.project), job.project, spec, job.model_version, verdict, settings,
                         seed=job.id)
    except Exception as exc:  # the labelling stands; the report waits for the next job or annotation
        log.warning("job %d: risk report / Data Manager tabs not written: %s", job.id, exc)
        accept = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    state["accept"] = {**accept, "verdict": verdict, "label_config_job": job.id}
    ctx.save_state(state)
    return _note(accept) if "error" not in accept else "; no risk report (see the job's state)"


def _source(store, project: int):
    """The newest finished job of the project holding an audit plan (an ICM job or an earlier refresh)."""
    for job in store.list_jobs(project=project, status="done", limit=200):
        acc = (job.state or {}).get("accept") or {}
        if job.kind in ("icm", ACCEPT_KIND) and acc.get("model_version"):
            return job, acc
    return None, None


class AcceptJob:
    """The "accept" job kind: re-score the audit and update the tabs after people labelled."""

    def __init__(self, backend):
        self.backend = backend

    def __call__(self, ctx) -> str:
        project = ctx.job.project
        src, acc = _source(self.backend.jobs, project)
        if src is None:
            return "nothing to do: no ICM labelling of this project holds a risk report"
        origin = self.backend.jobs.get_job(int(acc.get("label_config_job") or src.id), with_params=True)
        spec = parse_label_config(origin.params["label_config"])
        plan = AuditPlan(**acc["plan"]) if acc.get("plan") else None
        settings = AcceptSettings.from_env()
        icm = self.backend.icm
        accept = refresh(icm.ls_for(project), project, spec, acc["model_version"], acc.get("verdict"), settings,
                         plan=plan)
        ctx.save_state({"accept": {**accept, "verdict": acc.get("verdict"),
                                   "label_config_job": acc.get("label_config_job") or src.id}})
        return _note(accept).lstrip("; ")


def on_annotation_event(payload: dict, backend) -> None:
    """Queue one accept job for the project (a queued one already covers this event)."""
    from icm_backend.finetune.trigger import project_of

    project, _ = project_of(payload)
    if project is None:
        return
    src, _ = _source(backend.jobs, project)
    if src is None:
        return
    active = backend.jobs.active_job(ACCEPT_KIND, project, None)
    if active is not None and active.status == "queued":
        return
    backend.runner.submit(ACCEPT_KIND, project, None, {})


def latest_figures(store, project: int | None = None) -> dict[str, dict]:
    """{project: the latest report's rows and tabs} for /versions."""
    out: dict[str, dict] = {}
    for job in store.list_jobs(project=project, status="done", limit=200):
        acc = (job.state or {}).get("accept") or {}
        key = str(job.project)
        if key in out or not acc.get("model_version"):
            continue
        rep = acc.get("report") or {}
        out[key] = {"job": job.id, "model_version": acc["model_version"], "reliable": rep.get("reliable"),
                    "reasons": rep.get("reasons"), "warnings": rep.get("warnings"), "targets": acc.get("table"),
                    "audit": {"size": len((acc.get("plan") or {}).get("keys") or []),
                              "labelled": rep.get("audit_labelled", 0), "complete": rep.get("audit_complete")},
                    "tabs": acc.get("tabs")}
    return out


JOB_KINDS = {ACCEPT_KIND: AcceptJob}
UNLIMITED_KINDS = (ACCEPT_KIND,)  # coalesced in on_annotation_event: never the reason a training is refused
EVENT_HANDLERS = tuple((action, on_annotation_event) for action in ANNOTATION_EVENTS)
