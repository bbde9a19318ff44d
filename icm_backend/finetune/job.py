"""The "train" job: Label Studio annotations -> a new model version, run by the server's job runner.

The job fetches the project's tasks, builds the training set (bad input fails the job here with a
message that names the problem), then trains in a *child process* (icm_backend.finetune.worker):
training memory is returned to the OS when it ends, the served model is never touched, and a crash
or kill of the trainer fails this job with the reason instead of taking the server down. The child
writes the version atomically and switches MODEL_DIR/versions/CURRENT only at its very end.

A job found 'running' after a server restart (the runner requeues those) is failed, not rerun: a
half-done training is worthless and the serving version is still the previous one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass

from icm_backend.envvars import env_flag, env_float, env_int
from icm_backend.errors import InputError
from icm_backend.finetune.data import TrainingSet, training_set_from_ls_tasks
from icm_backend.finetune.gate import DEFAULT_ALPHA
from icm_backend.labelstudio.client import LabelStudioUnavailable, client_for
from icm_backend.finetune.lora import TrainConfig, context_for

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """From the environment (the server's process env), documented in docs/finetune.md."""

    include_icm: bool = False  # ICM_TRAIN_INCLUDE_ICM: also train on confident ICM labels of unreviewed tasks
    min_confidence: float = 0.9  # ICM_TRAIN_MIN_CONFIDENCE
    max_steps: int = 48  # ICM_TRAIN_MAX_STEPS
    batch_size: int = 8  # ICM_TRAIN_BATCH_SIZE
    learning_rate: float = 1e-4  # ICM_TRAIN_LR
    holdout_fraction: float = 0.2  # ICM_TRAIN_HOLDOUT_FRACTION: accepted labels kept out of training for the gate
    gate_alpha: float = DEFAULT_ALPHA  # ICM_GATE_ALPHA: the sign test's level, for the gate and a trial alike

    @classmethod
    def from_env(cls, env: dict | None = None) -> "TrainSettings":
        env = os.environ if env is None else env
        d = cls()
        return cls(
            include_icm=env_flag(env, "ICM_TRAIN_INCLUDE_ICM"),
            min_confidence=env_float(env, "ICM_TRAIN_MIN_CONFIDENCE", d.min_confidence),
            max_steps=env_int(env, "ICM_TRAIN_MAX_STEPS", d.max_steps),
            batch_size=env_int(env, "ICM_TRAIN_BATCH_SIZE", d.batch_size),
            learning_rate=env_float(env, "ICM_TRAIN_LR", d.learning_rate),
            holdout_fraction=env_float(env, "ICM_TRAIN_HOLDOUT_FRACTION", d.holdout_fraction),
            gate_alpha=env_float(env, "ICM_GATE_ALPHA", d.gate_alpha),
        )

    def __post_init__(self):
        for name, value in (("ICM_TRAIN_MAX_STEPS", self.max_steps), ("ICM_TRAIN_BATCH_SIZE", self.batch_size)):
            if value < 1:
                raise InputError(f"{name}={value}: expected a whole number >= 1")
        if not self.learning_rate > 0.0 or not math.isfinite(self.learning_rate):
            raise InputError(f"ICM_TRAIN_LR={self.learning_rate}: expected a positive number (e.g. 1e-4)")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise InputError(f"ICM_TRAIN_MIN_CONFIDENCE={self.min_confidence}: expected a probability in [0, 1]")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise InputError(f"ICM_TRAIN_HOLDOUT_FRACTION={self.holdout_fraction}: expected a number in [0, 1) "
                             "(the share of accepted labels held out for early stopping and the promotion gate)")
        if not 0.0 < self.gate_alpha < 1.0:
            raise InputError(f"ICM_GATE_ALPHA={self.gate_alpha}: expected a number in (0, 1) (the sign test's level "
                             f"a new version must reach to be served; default {DEFAULT_ALPHA})")


def explain_empty(project: int, tasks: list[dict], ts: TrainingSet) -> str:
    """The job's failure message when nothing is trainable: say what was found and why it was dropped."""
    n_ann = sum(len(t.get("annotations") or []) for t in tasks)
    if n_ann == 0:
        return (f"project {project} has no annotations to train on ({len(tasks)} tasks, 0 annotations); "
                "label some tasks in Label Studio first")
    reasons = "; ".join(f"task {s['task']} annotation {s['annotation']}: {s['reason']}" for s in ts.skipped[:10])
    more = f" (+{len(ts.skipped) - 10} more)" if len(ts.skipped) > 10 else ""
    return f"project {project}: none of {n_ann} annotations is usable for training: {reasons}{more}"


def fetch_tasks(url: str, key: str, project: int) -> list[dict]:
    """The project's tasks with annotations and predictions."""
    return client_for(url, key).tasks_with_labels(project)


def refuse_remote_training(config) -> None:
    """Scoring on a model server (ICM_SERVER_URL) leaves no local weights to train: say so, and how."""
    url = getattr(config, "server_url", None)
    if url:
        raise InputError(
            f"fine-tuning needs local weights, and this backend scores on the model server {url} "
            f"(model {config.model_name}). Train on a backend whose ICM_MODEL is a local copy of the same base "
            "weights (no ICM_SERVER_URL), then serve the new version's LoRA adapter (MODEL_DIR/versions/<version>) "
            "with vLLM (--enable-lora --lora-modules <version>=<dir>) and set ICM_MODEL=<version>, ICM_TOKENIZER=<base>")


class TrainJob:
    """handler(JobContext) -> final message. Registered as job kind "train"."""

    def __init__(self, backend):
        self.backend = backend

    def ls_credentials(self, project: int) -> tuple[str, str]:
        cfg = self.backend.config  # configured URL/key win; a /setup token only goes to the host it came for
        creds = self.backend.projects.credentials(project, cfg.label_studio_url, cfg.label_studio_api_key)
        url, key = (creds.url, creds.api_key) if creds else (None, None)
        if not url or not key:
            raise LabelStudioUnavailable("cannot read annotations: LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are "
                                         "not set and /setup gave no hostname/access_token")
        return url, key

    def __call__(self, ctx) -> str:
        from icm_backend.finetune.trigger import trigger_for
        from icm_backend.labelstudio.config import parse_label_config

        job, project = ctx.job, ctx.job.project
        try:
            if job.restarts:
                last = (job.state or {}).get("last_progress", "before the first step")
                raise RuntimeError(f"training was interrupted (the server or its worker stopped; last progress: "
                                   f"{last}); the serving version is unchanged. Start training again.")
            return self._train(ctx, parse_label_config)
        finally:
            trigger_for(self.backend).finished(project, {"trigger": "follow-up", **{
                k: v for k, v in job.params.items() if k == "label_config"}})

    def _train(self, ctx, parse_label_config) -> str:
        job, project = ctx.job, ctx.job.project
        refuse_remote_training(self.backend.config)
        settings = TrainSettings.from_env()
        url, key = self.ls_credentials(project)
        ctx.progress(0, settings.max_steps, "fetching annotations from Label Studio")
        label_config = job.params.get("label_config") or (self.backend.projects.get_project(project) or {}).get("label_config")
        if not label_config:
            label_config = client_for(url, key).project(project).get("label_config")
        spec = parse_label_config(label_config)
        tasks = fetch_tasks(url, key, project)
        ts = training_set_from_ls_tasks(tasks, spec, settings.include_icm, settings.min_confidence)
        if not ts.rows:
            raise InputError(explain_empty(project, tasks, ts))
        if len({r.label for r in ts.rows}) < 2:
            raise InputError(f"project {project}: all {len(ts.rows)} usable annotations say {ts.rows[0].label!r}; "
                             "fine-tuning needs examples of at least two labels")
        log.info("project %s: %s", project, ts.summary())
        # may switch the serving version: before the gate's request
        trial = self._trial(project, tasks, spec, settings.gate_alpha)
        spec_file = ctx.workdir / "train_request.json"
        spec_file.write_text(json.dumps({
            "model_dir": str(self.backend.config.model_dir),
            "base_model": self.backend.config.model_name,
            "task": spec.task, "labels": spec.labels,
            "rows": [asdict(r) for r in ts.rows], "skipped": ts.skipped, "conflicts": ts.conflicts,
            "config": asdict(TrainConfig(max_steps=settings.max_steps, batch_size=settings.batch_size,
                                         learning_rate=settings.learning_rate,
                                         holdout_fraction=settings.holdout_fraction,
                                         context=context_for(self.backend.config.method))),
            "extra_metrics": {"project": project, "job": job.id, "trigger": job.params.get("trigger"),
                              "include_icm": settings.include_icm, "min_confidence": settings.min_confidence},
            "gate": self._gate_request(settings.gate_alpha),
        }))
        result = self._run_worker(ctx, spec_file, settings.max_steps, ts.summary())
        head = (f"trained version {result['version']} on {ts.summary()}; {result['steps']} steps "
                f"({result['stopped']}), held-out accuracy {result.get('heldout_accuracy')}")
        if trial:
            head = f"{trial}; then {head}"
        if result.get("promoted", True):
            return head + (f"; gate: {result['gate']}" if result.get("gate") else "") + "; now serving it"
        return head + f"; NOT serving it: {result.get('gate')}"

    def _trial(self, project: int, tasks: list[dict], spec, alpha: float) -> str:
        """The reviewers' verdict on the version on trial (finetune.trial), acted on; "" when none is due."""
        from icm_backend.finetune.trial import run_trial
        from icm_backend.labelstudio.annotations import human_labels

        verdict = run_trial(self.backend.config.model_dir, project, self._gate_request(alpha)["serving_name"],
                            human_labels(tasks, spec), alpha)
        if verdict is None or not verdict.reviewed:
            return ""
        log.info("project %s: version on trial %s", project, verdict.reason)
        pin = getattr(self.backend.config, "model_version_pin", None)
        pinned = (f" (CURRENT switched; ICM_MODEL_VERSION={pin} still pins what serves)"
                  if verdict.promote and pin else "")
        return f"version on trial {verdict.challenger} {verdict.reason}{pinned}"

    def _gate_request(self, alpha: float) -> dict:
        """What the promotion gate compares against: the version serving now, with the served method."""
        from icm_backend.finetune.pipeline import gate_request

        cfg = self.backend.config
        return gate_request(cfg.model_dir, cfg.base_model, cfg.method, getattr(cfg, "model_version_pin", None),
                            getattr(cfg, "max_iters", None), alpha)

    def _run_worker(self, ctx, spec_file, max_steps: int, summary: str) -> dict:
        from icm_backend.jobs.queue import JobCancelled

        cmd = [sys.executable, "-m", "icm_backend.finetune.worker", str(spec_file)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # its own group: cancel kills it and its threads
        (ctx.workdir / "worker.pid").write_text(str(proc.pid))
        ctx.save_state({"pid": proc.pid, "last_progress": "starting the trainer"})
        final = None
        try:
            for line in proc.stdout:  # one JSON object per line: progress, then the final result
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if msg.get("event") == "progress":
                    text = f"step {msg['step']}/{msg['total']} " + " ".join(f"{k}={v}" for k, v in msg["info"].items())
                    ctx.save_state({"pid": proc.pid, "last_progress": text})
                    ctx.progress(msg["step"], msg["total"], text)  # raises JobCancelled when cancelled
                elif msg.get("event") == "done":
                    final = msg
        except JobCancelled:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        err = proc.stderr.read()
        rc = proc.wait()
        if rc != 0 or final is None:
            if rc < 0:
                why = f"the training process was killed by {signal.Signals(-rc).name}"
            else:
                tail = [l for l in err.strip().splitlines() if l.strip()]
                why = tail[-1] if tail else f"the training process exited with code {rc}"
            raise RuntimeError(f"training failed: {why}; the serving version is unchanged")
        return final
