"""The webhook side of training: which events train, and one training job per project.

Coalescing: a trigger while the project's training job is queued or running joins that job instead
of adding another one. A trigger that arrives while the job is *running* also marks the project
"dirty": when the running job finishes, exactly one follow-up job is queued, so labels made during a
training are picked up without stacking one job per annotation. (The dirty mark is in memory: a
restart forgets it, and the next trigger starts training again anyway.)
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from icm_backend.envvars import env_flag

log = logging.getLogger(__name__)

TRAIN_KIND = "train"
START_TRAINING = "START_TRAINING"
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
AUTO_TRAIN_ENV = "ICM_AUTO_TRAIN"  # 1/true: annotation events train too (not only START_TRAINING)


def auto_train_enabled(env: dict | None = None) -> bool:
    return env_flag(env if env is not None else os.environ, AUTO_TRAIN_ENV)


def should_train(action: str, env: dict | None = None) -> bool:
    """START_TRAINING always trains (the button, and LS's min_annotations_to_start_training);
    plain annotation events only when auto-training is on."""
    return action == START_TRAINING or (action in ANNOTATION_EVENTS and auto_train_enabled(env))


def project_of(payload: dict) -> tuple[int | None, str | None]:
    """(project id, label config) from a webhook payload (START_TRAINING carries the whole project)."""
    p = payload.get("project")
    if isinstance(p, dict):
        return (p.get("id") if isinstance(p.get("id"), int) else None), p.get("label_config")
    if isinstance(p, int):
        return p, None
    ann = payload.get("annotation") or {}
    return (ann.get("project") if isinstance(ann.get("project"), int) else None), None


@dataclass
class TriggerResult:
    job_id: int
    status: str  # "queued" (new job) | "coalesced"
    project: int


@dataclass
class TrainingTrigger:
    """Coalesces training triggers into one job per project on the server's job store/runner."""

    store: object  # icm_backend.jobs.queue.Store
    runner: object  # icm_backend.jobs.queue.JobRunner
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _dirty: set = field(default_factory=set)

    def trigger(self, project: int, params: dict) -> TriggerResult:
        with self._lock:  # two webhooks at once must not both see "no job" and both submit
            job = self.store.active_job(TRAIN_KIND, project, None)
            if job is not None:
                if job.status == "running":
                    self._dirty.add(project)
                log.info("training for project %s coalesced into job %d (%s)", project, job.id, job.status)
                return TriggerResult(job.id, "coalesced", project)
            job = self.runner.submit(TRAIN_KIND, project, None, params)
            return TriggerResult(job.id, "queued", project)

    def finished(self, project: int, params: dict) -> TriggerResult | None:
        """Called by the job at its end: queue one follow-up if triggers came in while it ran."""
        with self._lock:
            if project not in self._dirty:
                return None
            self._dirty.discard(project)
        log.info("project %s got training triggers during the run: queueing one follow-up", project)
        return self.trigger(project, params)


_TRIGGERS: dict[int, TrainingTrigger] = {}  # one per Backend (keyed by id(store)); tests build several apps


def trigger_for(backend) -> TrainingTrigger:
    key = id(backend.jobs)
    if key not in _TRIGGERS:
        _TRIGGERS[key] = TrainingTrigger(backend.jobs, backend.runner)
    return _TRIGGERS[key]


def on_training_event(payload: dict, backend) -> TriggerResult | None:
    """Webhook handler (runs off the request thread): queue or coalesce the project's training job."""
    action = payload.get("action") or ""
    if not should_train(action):
        return None
    project, label_config = project_of(payload)
    if project is None:
        log.warning("%s webhook without a project id: nothing to train", action)
        return None
    params = {"trigger": action}
    if label_config:
        params["label_config"] = label_config
    return trigger_for(backend).trigger(project, params)
