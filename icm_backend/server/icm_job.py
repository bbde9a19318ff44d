"""The "icm" job: label a whole Label Studio project with ICM and write the predictions back.

One labelling of the whole project (engine.core): ICM on a random core (ICM_CORE_SIZE tasks, 256 by
default; a smaller project is all core), then one pass over the rest in the core's context, in chunks of
ICM_CHUNK_SIZE tasks. The core and the first chunk come first; each chunk is written to Label Studio as soon
as it is labelled, so the first predictions show within minutes of "Retrieve predictions" whatever the
project's size. Resumable: the search checkpoints in the job's folder, and chunks handed over (in the
prediction store) before a crash are not labelled again.

Write-back is LS's bulk import (POST /api/projects/<id>/import/predictions, <= 500 per request, which LS
stores in one bulk_create: all or nothing). Exactly once across crashes: a batch is claimed in the store
(SENDING) before the request and settled (delivered) after it; a batch whose fate is unknown (crash,
timeout, refused) is settled by asking LS which tasks hold a prediction of this version. Tasks that
already hold one when the job starts are never sent again.

Once LS holds predictions of the version, the project's model_version is set to it (LS refuses a version
nothing carries yet): the Data Manager's "Prediction score" column averages the scores of that version.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from icm_backend.engine.labeler import reads_context
from icm_backend.engine.types import CoreOrigin
from icm_backend.server.model_host import ModelHost
from icm_backend.jobs.predictions import PredictionStore
from icm_backend.jobs.projects import ProjectStore
from icm_backend.jobs.queue import JobContext
from icm_backend.labelstudio.config import parse_label_config
from icm_backend.labelstudio.client import LabelStudioUnavailable, client_for

log = logging.getLogger(__name__)

HUMAN_MAX = 256  # human labels (annotations) fixed in the labelling's context, balanced over labels
IMPORT_TRIES = 3


def _backoff(attempt: int) -> None:
    time.sleep(2 ** attempt)


class WriteBackFailed(Exception):
    """Label Studio kept refusing the bulk import: the job fails with LS's reason."""


def labelling_verdict(assessment: dict | None) -> dict | None:
    """One ICM job's verdict from its labelling's assessment (engine.calibration.Assessment.to_json): reliable
    or not and why, the estimated accuracy, the mean confidence, and what the calibration was fitted on.
    None when the labelling was not assessed. The job's message and /versions both say this."""
    if not assessment:
        return None
    return {"reliable": bool(assessment.get("reliable", True)), "reasons": list(assessment.get("reasons") or []),
            "estimated_accuracy": assessment.get("estimated_accuracy"),
            "mean_confidence": assessment.get("mean_confidence", 0.0),
            "calibrated_on": assessment.get("calibrated_on")}


@dataclass
class ICMJob:
    host: ModelHost
    predictions: PredictionStore
    projects: ProjectStore

    def ls_for(self, project: int):
        cfg = self.host.config  # configured URL/key win; a /setup token only goes to the host it came for
        creds = self.projects.credentials(project, cfg.label_studio_url, cfg.label_studio_api_key)
        return client_for(creds.url if creds else None, creds.api_key if creds else None)

    def __call__(self, ctx: JobContext) -> str:
        job, params = ctx.job, ctx.job.params
        project, version = job.project, job.model_version
        spec = parse_label_config(params["label_config"])
        method = params.get("method", "icm")
        tasks_file = ctx.workdir / "tasks.json"
        listed = None  # LS's listing with the annotations, read once at a fresh start for the human labels too
        if tasks_file.exists():  # resumed: label exactly the task set the job started with
            tasks = json.loads(tasks_file.read_text())
        else:
            tasks, listed = self._fetch_tasks(project, params)
            tmp = tasks_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(tasks))
            tmp.replace(tasks_file)
        by_id = {t["id"]: t for t in tasks}
        state = dict(job.state)
        # Human labels (annotations, accepted predictions included) clamp the search: fixed members of D
        # (in the core), never relabelled; their tasks need no prediction, whatever the method (zero-shot
        # reads no context, but a version on trial must not be judged on the rows it was trained on).
        # Read once, kept for a resume.
        if "human" not in state:
            state["human"] = self._human_labels(project, spec, set(by_id), listed)
            ctx.save_state(state)
        del listed  # every task's annotations and predictions: not needed for the rest of a long job
        # The core of the project's last ICM labelling: reused (no search), the human labels in place of its
        # own (engine.core.reuse_core). Read once, kept for a resume; the trial pass gets the same one.
        if "prior_core" not in state:
            state["prior_core"] = self.projects.core(project) if method == "icm" and self.host.config.reuse_core \
                else None
            ctx.save_state(state)
        human = {int(t): lab for t, lab in state.get("human", [])}
        tasks = [t for t in tasks if t["id"] not in human]
        total = len(tasks)
        fixed = {t: lab for t, lab in human.items() if t in by_id}
        context = [by_id[t] for t in fixed]
        trial = self._trial_pass(ctx, spec, tasks, context, fixed, method, state)  # {task: (word, conf)} or None
        ls = self._ls_or_none(project)
        run = {"published": False, "known": set()}
        if ls is not None:
            self._settle_unknown(ls, project, version)  # a crash may have hit while a batch was on its way
            run["known"] = ls.existing_prediction_tasks(project, version)  # never sent again
            if run["known"]:
                run["published"] = self._publish(ls, project, version)
            self._push(ctx, ls, run)  # chunks finished before a crash whose predictions never left
        ctx.progress(state.get("written", 0), total, "labelling")

        def progress(d: int, t: int, msg: str = "") -> None:
            ctx.progress(int(d / t * total) if t else 0, total, msg)

        def write(preds: dict) -> None:
            """A finished chunk: into the store, then to Label Studio; counted in the job state (once: a chunk
            redone after a crash finds its tasks already counted, and the store keeps one row per task)."""
            seen = set(state.get("written_tasks", []))
            preds = {tid: p for tid, p in preds.items() if tid not in seen}
            failed = {tid: p.reason for tid, p in preds.items() if not p.result}  # one bad task costs only itself
            for tid, reason in list(failed.items())[:20]:
                log.warning("job %d: task %s not labelled: %s", job.id, tid, reason)
            if trial is not None:
                self._mark_trial(spec, preds, trial, state)
            self.predictions.put_predictions(project, version, {tid: p.to_ls(version) for tid, p in preds.items()},
                                             job_id=job.id)
            if ls is not None:
                self._push(ctx, ls, run)
            state["written_tasks"] = sorted(seen | set(preds))
            state["written"] = len(state["written_tasks"])
            state["flagged"] = state.get("flagged", 0) + sum(p.flagged for p in preds.values())
            state["not_labelled"] = state.get("not_labelled", 0) + len(failed)
            state["not_labelled_tasks"] = {**state.get("not_labelled_tasks", {}),
                                           **{str(t): r for t, r in list(failed.items())[:50]}}
            ctx.save_state(state)
            ctx.progress(state["written"], total, f"{state['written']}/{total} tasks written")

        preds = self.host.label(spec, tasks, method=method, checkpoint=ctx.workdir / "icm.ckpt", progress=progress,
                                version=version, context=context, fixed=fixed, on_chunk=write,
                                core=state.get("prior_core"))
        if getattr(preds, "core", None):  # what the project's next labelling reuses
            self.projects.put_core(project, preds.core, version)
            state["core_origin"] = preds.core_origin.to_json() if preds.core_origin else None
            ctx.save_state(state)
        assessment = getattr(preds, "assessment", None)
        if assessment is not None:  # calibration and the "does the model know" check
            state["assessment"] = assessment.to_json()
            ctx.save_state(state)
        flagged = state.get("flagged", 0)
        failed = state.get("not_labelled", 0)
        failed_note = f", {failed} not labelled (reasons in the job's state)" if failed else ""
        if ls is None:
            where = "kept in the store (Label Studio unreachable)"
        else:
            delivered = self.predictions.delivery_counts(project, version).get(PredictionStore.SENT, 0)
            if delivered and not run["published"]:
                run["published"] = self._publish(ls, project, version)  # e.g. all came through /predict replies
            where = "written to Label Studio" + ("" if run["published"] or not delivered else
                                                 f"; project model_version NOT set to {version} (see the log)")
            state["model_version_set"] = run["published"]
            ctx.save_state(state)
        human_note = "" if not human else f", {len(human)} human labels " + (
            "fixed in context" if reads_context(method) else "kept (their tasks not relabelled)")
        origin = CoreOrigin.from_json(state.get("core_origin"))
        if origin and origin.how == CoreOrigin.REUSED:
            human_note += ", the project's previous core reused (no search" + (f"; {origin.why}" if origin.why else "") + ")"
        elif origin and origin.how == CoreOrigin.SEARCHED_AGAIN:
            human_note += f", core searched again ({origin.why})"
        if trial is not None:
            human_note += self._record_trial(job, state)
        v, verdict = labelling_verdict(state.get("assessment", {})), ""
        if v and not v["reliable"]:
            verdict = "; UNRELIABLE labelling: " + "; ".join(v["reasons"])
        elif v and v["estimated_accuracy"] is not None:
            verdict = f"; estimated accuracy {v['estimated_accuracy']:.2f}"
        # -- issue 21, accept with a stated error: risk report, audit sample, Data Manager tabs (never fails the job)
        from icm_backend.server.accept_job import after_labelling
        verdict += after_labelling(self, ctx, spec, state)
        return (f"{total - failed} tasks labelled{human_note}, {flagged} flagged for review{failed_note}, "
                f"{where}{verdict}")

    # -- the version on trial (finetune.trial) ------------------------------------------------
    def _trial_pass(self, ctx: JobContext, spec, tasks, context, fixed, method, state) -> dict | None:
        """Label the project with the challenger too, with the same human labels fixed, before the serving
        version's pass (so each served chunk can be compared as it is written); {task id: (label word,
        confidence)}. None when there is no challenger, or it is off (ICM_TRIAL=0) or cannot run here (a
        model server serves no fine-tuned version). Resumable: finished chunks are kept in the job state."""
        cfg = self.host.config
        if not cfg.trial or cfg.server_url:
            return None
        if "trial" not in state:
            from icm_backend.finetune.trial import challenger

            v = challenger(cfg.model_dir, ctx.job.model_version)
            state["trial"] = {"challenger": v.name, "labels": {}, "done": False} if v else None
            ctx.save_state(state)
        t = state["trial"]
        if not t:
            return None
        name, total = t["challenger"], len(tasks)
        if not t.get("done"):
            def progress(d: int, n: int, msg: str = "") -> None:
                ctx.progress(int(d / n * total) if n else 0, total, f"version on trial {name}: {msg}")

            def keep(preds: dict) -> None:
                t["labels"].update({str(tid): [p.label, p.score] for tid, p in preds.items()
                                    if p.result and p.label is not None and p.score is not None})
                ctx.save_state(state)

            self.host.label(spec, tasks, method=method, checkpoint=ctx.workdir / "trial.ckpt", progress=progress,
                            version=name, context=context, fixed=fixed, on_chunk=keep, core=state.get("prior_core"))
            t["done"] = True
            ctx.save_state(state)
        log.info("job %d: version on trial %s labelled %d tasks", ctx.job.id, name, len(t["labels"]))
        return {int(tid): (lab, float(c)) for tid, (lab, c) in t["labels"].items()}

    def _mark_trial(self, spec, preds: dict, trial: dict, state: dict) -> None:
        """Flag (and re-score) in `preds` the tasks where the version on trial disagrees; note them in the job
        state (saved with the chunk: a chunk redone after a crash is counted once)."""
        from icm_backend.labelstudio.results import on_trial

        t = state["trial"]
        for tid, p in preds.items():
            if tid in trial and p.result and p.label is not None:
                word, conf = trial[tid]
                preds[tid] = on_trial(spec, p, t["challenger"], word, conf)
                t["compared"] = t.get("compared", 0) + 1
                if preds[tid] is not p:
                    t.setdefault("disagreements", {})[str(tid)] = [word, p.label]

    def _record_trial(self, job, state: dict) -> str:
        """Write the trial record (finetune.trial) for the next training to read; the job message's note."""
        from icm_backend.finetune.trial import TrialRecord, write_trial

        t = state.get("trial") or {}
        dis = {int(k): (v[0], v[1]) for k, v in (t.get("disagreements") or {}).items()}
        write_trial(self.host.config.model_dir, TrialRecord(t["challenger"], job.model_version, job.project, dis,
                                                            int(t.get("compared", 0)), job.id))
        return (f"; version on trial {t['challenger']} disagrees on {len(dis)} of {t.get('compared', 0)} tasks "
                "(flagged: reviewing them decides whether it serves)")

    # -- Label Studio ------------------------------------------------------------------------
    def _human_labels(self, project: int, spec, task_ids: set, listed: list[dict] | None) -> list[list]:
        """[[task id, label word], ...] from the project's annotations (labelstudio.annotations rules), at most
        HUMAN_MAX, taken in turn from each label; [] when LS cannot be read. `listed`: the tasks with their
        annotations as _fetch_tasks read them; None (a resume, or the request's tasks) reads them again."""
        from icm_backend.labelstudio.annotations import human_labels

        tasks = listed
        if tasks is None:
            try:
                tasks = self.ls_for(project).tasks_with_labels(project)
            except Exception as exc:
                log.warning("project %s: annotations not read (%s); labelling without human labels", project, exc)
                return []
        by_label: dict[str, list[int]] = {}
        for tid, label in human_labels([t for t in tasks if t.get("id") in task_ids], spec).items():
            by_label.setdefault(label, []).append(tid)
        out, k = [], 0
        while len(out) < HUMAN_MAX and any(k < len(v) for v in by_label.values()):
            for lab in sorted(by_label):
                if k < len(by_label[lab]) and len(out) < HUMAN_MAX:
                    out.append([by_label[lab][k], lab])
            k += 1
        return out

    def _fetch_tasks(self, project: int, params: dict) -> tuple[list[dict], list[dict] | None]:
        """(the tasks to label: id and data; LS's listing of them with their annotations, or None where the
        request's tasks stand in). One listing serves both: at 10,000 tasks each read of them takes ~25 s."""
        try:
            listed = self.ls_for(project).tasks_with_labels(project)
            if listed:
                return [{"id": t["id"], "data": t["data"]} for t in listed], listed
        except LabelStudioUnavailable as exc:
            log.warning("project %s: %s; labelling only the tasks sent in the request", project, exc)
        except Exception as exc:
            log.warning("project %s: fetching tasks from Label Studio failed (%s); using request tasks",
                        project, exc)
        return params.get("tasks", []), None

    def _ls_or_none(self, project: int):
        try:
            return self.ls_for(project)
        except LabelStudioUnavailable as exc:
            log.warning("project %s: %s; predictions stay in the store and are served by /predict", project, exc)
            return None

    def _settle_unknown(self, ls, project: int, version: str) -> None:
        """Batches claimed but never settled (a crash or an error mid-request): LS says which it stored."""
        sending = self.predictions.in_flight(project, version)
        if not sending:
            return
        present = ls.existing_prediction_tasks(project, version)
        got = [t for t in sending if t in present]
        self.predictions.settle(project, version, got, [t for t in sending if t not in present])
        log.info("project %s: %d of %d predictions in flight at the interruption had reached Label Studio",
                 project, len(got), len(sending))

    def _push(self, ctx: JobContext, ls, run: dict) -> int:
        """Bulk-import every undelivered prediction of this version; returns how many went."""
        project, version = ctx.job.project, ctx.job.model_version
        sent = 0
        while True:
            ctx.check()
            batch = self._claim(ls, project, version, run)
            if not batch:
                return sent
            t0 = time.monotonic()
            for attempt in range(1, IMPORT_TRIES + 1):
                try:
                    created = ls.import_predictions(project, batch)
                    break
                except Exception as exc:
                    log.warning("job %d: bulk import of %d predictions failed (try %d/%d): %s", ctx.job.id,
                                len(batch), attempt, IMPORT_TRIES, exc)
                    self._settle_unknown(ls, project, version)  # did LS store the batch before failing?
                    if attempt == IMPORT_TRIES:
                        raise WriteBackFailed(f"writing predictions to Label Studio failed: {exc}") from exc
                    _backoff(attempt)
                    batch = self._claim(ls, project, version, run)  # what LS did not store is NOT_SENT again
                    if not batch:
                        created = 0
                        break
            if not batch:
                continue
            if created == len(batch):
                self.predictions.settle(project, version, list(batch), [])
            else:  # LS skipped some (its log says why): ask which it stored
                log.warning("job %d: Label Studio created %d of %d predictions", ctx.job.id, created, len(batch))
                self._settle_unknown(ls, project, version)
            sent += created
            log.info("job %d: %d predictions written to Label Studio in %.2fs", ctx.job.id, created,
                     time.monotonic() - t0)
            if created and not run["published"]:
                run["published"] = self._publish(ls, project, version)

    def _claim(self, ls, project: int, version: str, run: dict) -> dict[int, dict]:
        """The next batch to import; tasks LS held a prediction of this version for at the start are settled
        as delivered instead (an earlier run or a /predict reply put it there): never sent twice."""
        while True:
            batch = self.predictions.claim_for_import(project, version, ls.IMPORT_BATCH)
            known = [t for t in batch if t in run["known"]]
            if not known:
                return batch
            self.predictions.settle(project, version, known, [])
            batch = {t: v for t, v in batch.items() if t not in run["known"]}
            if batch:
                return batch

    def _publish(self, ls, project: int, version: str) -> bool:
        """Point the project's model_version (the Data Manager's score column) at `version`; LS accepts it
        only once predictions of that version exist. Failures are retried after the next batch."""
        try:
            if ls.project(project).get("model_version") != version:
                ls.set_project_model_version(project, version)
                log.info("project %s: model_version set to %s (Prediction score column)", project, version)
            return True
        except Exception as exc:
            log.warning("project %s: cannot set model_version to %s yet: %s", project, version, exc)
            return False

    def publish_version_later(self, project: int, version: str, delays=(1, 2, 4, 8, 16)) -> None:
        """After a /predict reply LS stores its predictions; once it has, set the project's model_version.
        In the background, a few tries: the reply must leave before LS can store anything."""
        def run() -> None:
            try:
                ls = self.ls_for(project)
            except LabelStudioUnavailable:
                return
            for d in delays:
                time.sleep(d)
                try:
                    if ls.predictions_of(project, version) and self._publish(ls, project, version):
                        return
                except Exception as exc:
                    log.debug("project %s: publish %s: %s", project, version, exc)
            log.warning("project %s: model_version not set to %s: no prediction of it in Label Studio", project,
                        version)

        threading.Thread(target=run, name=f"publish-{project}", daemon=True).start()
