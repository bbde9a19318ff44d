"""What the HTTP routes call: the backend's state and the /predict decision (store, in-request, or job).

/predict answers within ICM_PREDICT_BUDGET_S (8 s; LS allows 100) whatever the selection's size:
1. tasks already labelled under the served version come from the SQLite store (milliseconds);
2. a small remainder (<= ICM_SYNC_MAX_TASKS, no job running for the project) is labelled by ICM inside
   the request if that fits in the budget;
3. the rest is left to one background ICM job over the whole project, which writes its predictions into
   LS in bulk under the served version and points the project's score column at that version. Those tasks
   get no prediction from this reply (never a stand-in: one prediction per task and version).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from icm_backend.labelstudio import results as P
from icm_backend.server.config import ServerConfig
from icm_backend.server.model_host import ModelHost, ModelUnavailable
from icm_backend.server.events import EventRegistry
from icm_backend.server.icm_job import ICMJob, labelling_verdict
from icm_backend.jobs.db import Database
from icm_backend.jobs.predictions import PredictionStore
from icm_backend.jobs.projects import ProjectStore
from icm_backend.jobs.queue import JobRunner, JobStore, QueueFull
from icm_backend.labelstudio.config import ProjectSpec
from icm_backend.server.metrics import Metrics
from icm_backend.errors import InputError
from icm_backend.versions import BASE, base_version, list_versions, served_version_name, sweep_stale_tmp, \
    versions_payload

log = logging.getLogger(__name__)


class _OverBudget(Exception):
    pass


class Busy(Exception):
    """Too many /predict requests are running the model already (answered 429: retry later)."""


class PinError(InputError):
    """A version pin that names no version under MODEL_DIR/versions (answered 422, that request only)."""


@dataclass
class Backend:
    config: ServerConfig
    host: ModelHost
    jobs: JobStore
    predictions: PredictionStore
    projects: ProjectStore
    runner: JobRunner
    events: EventRegistry = field(default_factory=EventRegistry)
    metrics: Metrics = field(default_factory=Metrics)
    icm: ICMJob | None = None
    _model_slots: threading.BoundedSemaphore | None = None

    @classmethod
    def create(cls, config: ServerConfig, host: ModelHost | None = None,
               events: EventRegistry | None = None) -> "Backend":
        """The backend with its stores and the "icm" job kind; other job kinds are registered by the
        app factory (create_app), which is the one place that wires features into the server."""
        config.model_dir.mkdir(parents=True, exist_ok=True)
        db = Database(config.db_path)
        jobs = JobStore(db)
        runner = JobRunner(jobs, config.model_dir / "jobs")
        runner.max_active, runner.max_active_per_project = config.max_queued_jobs, config.max_queued_jobs_per_project
        backend = cls(config=config, host=host or ModelHost(config), jobs=jobs, predictions=PredictionStore(db),
                      projects=ProjectStore(db), runner=runner, events=events or EventRegistry(),
                      metrics=Metrics(config.max_metric_series))
        backend._model_slots = threading.BoundedSemaphore(config.max_concurrent_predicts)
        sweep_stale_tmp(config.model_dir)  # trainings killed mid-write leave .tmp-* dirs behind
        backend.icm = ICMJob(backend.host, backend.predictions, backend.projects)
        runner.register("icm", backend.icm)
        return backend

    # -- versions ---------------------------------------------------------------------------
    # LS sends the ML backend's extra params with /setup; a `model_version` there pins a rollback for that
    # project (stored per project); ICM_MODEL_VERSION is the default pin. A pin is a version *name*.
    def check_pin(self, pin, field: str = "model_version") -> str | None:
        """`pin` if it names a finished version under versions/ (or the base model), else PinError (no path)."""
        if pin is None or pin == "":
            return None
        names = [v.name for v in list_versions(self.config.model_dir)]
        base = base_version(self.config.base_model)
        if not isinstance(pin, str) or (pin not in names and pin not in (BASE, base)):
            shown = repr(pin)[:80] if isinstance(pin, str) else f"a {type(pin).__name__}"
            raise PinError(f"{field} {shown}: no such version (have: "
                           f"{', '.join([BASE, base] + names[-20:])})")
        return pin

    def pin(self, project: int | None = None) -> str | None:
        return self.projects.pin(project) or self.config.model_version_pin

    def model_version(self, project: int | None = None, pin: str | None = None) -> str:
        """The version that serves `project` (its pin, else the default pin, else CURRENT, else the base model)."""
        pin = self.check_pin(pin or self.pin(project))
        try:
            return served_version_name(self.config.model_dir, self.config.base_model, pin)
        except InputError:  # deleted under us; the engine's message names the directory: not for clients
            raise PinError(f"model_version {pin!r}: no such version") from None

    def default_version(self) -> tuple[str | None, str | None]:
        """(version, error) for /health: never raises, never shows a path."""
        try:
            return self.model_version(), None
        except PinError as exc:
            return None, str(exc)

    def versions_detail(self, project: int | None = None) -> dict:
        out = versions_payload(self.config.model_dir, self.config.base_model, None)
        if project is None:
            out["current"], error = self.default_version()
            if error:
                out["error"] = error
        else:
            out["current"] = self.model_version(project)
        out["pinned"] = self.pin(project)
        out["labelling"] = self.labelling_verdicts(project)
        from icm_backend.server.accept_job import latest_figures

        out["accept"] = latest_figures(self.jobs, project)  # per project: estimated, audited, bound per target
        return out

    def labelling_verdicts(self, project: int | None = None) -> dict[str, dict]:
        """{project: verdict} for the last finished ICM labelling of each project (or of `project`), so that
        "unsure" is visible next to the version that labelled it (icm_job.labelling_verdict)."""
        out: dict[str, dict] = {}
        for job in self.jobs.list_jobs(project=project, status="done", limit=200):
            key = str(job.project)
            v = labelling_verdict((job.state or {}).get("assessment")) if job.kind == "icm" else None
            if v and key not in out:  # newest first: the first one seen per project is the last run
                out[key] = {"job": job.id, "model_version": job.model_version, **v}
        return out

    # -- predict ----------------------------------------------------------------------------
    def predict(self, project: int, spec: ProjectSpec, label_config: str, tasks: list[dict]) -> list[dict]:
        """One item per task, within ICM_PREDICT_BUDGET_S whatever the selection's size. A task with no
        prediction yet gets an item without "result": LS stores nothing for it (no empty prediction that
        looks like an answer) and the job writes the real one; if the job fails, the task stays without one
        and the failure is in /jobs and the log."""
        t0 = time.monotonic()
        version = self.model_version(project)
        ids = [t["id"] for t in tasks]
        # Only what no bulk import is sending: LS stores what this reply carries (exactly once, see the store).
        items: dict[int, dict] = self.predictions.take_for_reply(project, version, ids)
        self.metrics.inc("icm_predict_tasks_total", len(items), source="store")
        missing = [t for t in tasks if t["id"] not in items]
        pending = "not labelled yet"
        job = self.jobs.active_job("icm", project, version) if missing else None
        if missing and job is None and len(missing) <= self.config.sync_max_tasks:
            if not self._model_slots.acquire(blocking=False):
                # never queue behind the model: a waiting request would hold a server thread /health and /setup need
                raise Busy(f"predict: {self.config.max_concurrent_predicts} requests are labelling already "
                           "(ICM_MAX_CONCURRENT_PREDICTS); retry later")
            try:
                items.update(self._label_now(project, spec, missing, version, t0 + self.config.predict_budget_s))
            finally:
                self._model_slots.release()
            missing = [t for t in missing if t["id"] not in items]
        if missing:  # whatever did not fit in the budget: the job labels the whole project and writes it back
            try:
                job = job or self.ensure_job(project, label_config, tasks, version)
                pending = f"not labelled yet: job {job.id} is labelling the project (GET /jobs/{job.id})"
                log.info("predict: %d of %d tasks not labelled yet; job %d (%s) runs ICM over project %s",
                         len(missing), len(tasks), job.id, job.status, project)
            except QueueFull as exc:
                pending = f"not labelled: {exc}"
                log.warning("predict: project %s: %s", project, exc)
        return [items.get(i) or P.empty(i, pending).to_ls(version) for i in ids]

    def ensure_job(self, project: int, label_config: str, tasks: list[dict], version: str):
        job = self.jobs.active_job("icm", project, version)
        if job is None:
            job = self.runner.submit("icm", project, version, {
                "label_config": label_config, "method": self.config.method,
                # fallback when LS is unreachable: label at least what this request sent
                "tasks": [{"id": t["id"], "data": t.get("data") or {}} for t in tasks],
            })
            self.metrics.inc("icm_jobs_submitted_total", kind="icm")
        return job

    def _label_now(self, project: int, spec: ProjectSpec, tasks: list[dict], version: str,
                   deadline: float) -> dict[int, dict]:
        """Label a small batch inside the request if it fits before `deadline`; {} if it does not (the job's)."""
        t0 = time.monotonic()

        def guard(done: int, total: int, msg: str = "") -> None:
            if time.monotonic() > deadline:
                raise _OverBudget()

        try:
            preds = self.host.label(spec, tasks, method=self.config.method, version=version, progress=guard)
        except _OverBudget:
            log.info("predict: %d tasks did not fit in ICM_PREDICT_BUDGET_S=%.0fs; leaving them to a job",
                     len(tasks), self.config.predict_budget_s)
            return {}
        except ModelUnavailable as exc:
            self.metrics.inc("icm_predict_errors_total", len(tasks))
            return {t["id"]: P.empty(t["id"], str(exc)).to_ls(version) for t in tasks}
        except Exception as exc:
            log.exception("predict: labelling %d tasks in the request failed; returning empty results", len(tasks))
            self.metrics.inc("icm_predict_errors_total", len(tasks))
            return {t["id"]: P.empty(t["id"], f"labelling failed: {type(exc).__name__}").to_ls(version) for t in tasks}
        items = {tid: p.to_ls(version) for tid, p in preds.items()}
        # LS saves what /predict returns, so these count as delivered (a later job must not add duplicates).
        labelled = {t: v for t, v in items.items() if v.get("result")}
        self.predictions.put_predictions(project, version, labelled, pushed=True)
        self.metrics.inc("icm_predict_tasks_total", len(items), source="request")
        log.info("predict: labelled %d tasks in the request in %.1fs", len(tasks), time.monotonic() - t0)
        if labelled and self.icm is not None:  # LS stores them after this reply: then point the score column at them
            self.icm.publish_version_later(project, version)
        return items
