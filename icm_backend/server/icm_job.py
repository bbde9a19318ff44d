"""The "icm" job: label a whole Label Studio project with ICM and write the predictions back.

Resumable at two levels: the project is cut into shards (consistency groups kept whole); a finished
shard is recorded in the job state and its predictions are in the store, and inside a shard label_rows
resumes from its checkpoint file. Re-pushing after a crash skips tasks that already hold a prediction
with this model_version, so a restart neither loses nor duplicates predictions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from icm_backend.server.model_host import ModelHost
from icm_backend.jobs.predictions import PredictionStore
from icm_backend.jobs.projects import ProjectStore
from icm_backend.jobs.queue import JobContext
from icm_backend.labelstudio.config import FIELD_ALIASES, parse_label_config
from icm_backend.labelstudio.client import LabelStudioUnavailable, client_for

log = logging.getLogger(__name__)


def shard_tasks(tasks: list[dict], size: int) -> list[list[dict]]:
    """Cut into shards of ~size tasks without splitting a consistency group across shards."""
    groups: dict[str, list[dict]] = {}
    for t in tasks:
        data = t.get("data") or {}
        gid = next((str(data[k]) for k in FIELD_ALIASES["consistency_id"] if data.get(k) not in (None, "")),
                   f"task-{t['id']}")
        groups.setdefault(gid, []).append(t)
    shards, cur = [], []
    for members in groups.values():
        if cur and len(cur) + len(members) > size:
            shards.append(cur)
            cur = []
        cur.extend(members)
    if cur:
        shards.append(cur)
    return shards


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
        tasks_file = ctx.workdir / "tasks.json"
        if tasks_file.exists():  # resumed: label exactly the task set the job started with
            tasks = json.loads(tasks_file.read_text())
        else:
            tasks = self._fetch_tasks(project, params)
            tmp = tasks_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(tasks))
            tmp.replace(tasks_file)
        shards = shard_tasks(tasks, int(params.get("shard_size") or self.host.config.shard_size))
        state = dict(job.state)
        done_shards = set(state.get("done_shards", []))
        total = len(tasks)
        done_before = sum(len(s) for k, s in enumerate(shards) if k in done_shards)
        ctx.progress(done_before, total, f"{len(shards)} shard(s), {len(done_shards)} done")
        ls = self._ls_or_none(project)
        if ls is not None:
            try:  # populate the Data Manager score column for this version from the first shard on
                ls.set_project_model_version(project, version)
            except Exception as exc:
                log.warning("job %d: cannot set project %s model_version: %s", job.id, project, exc)
        if job.restarts and ls is not None:
            self._push(ctx, ls, resumed=True)  # a crash may have hit between labelling and pushing
        for k, shard in enumerate(shards):
            if k in done_shards:
                continue
            base = done_before

            def progress(d: int, t: int, msg: str = "", base=base, n=len(shard), k=k) -> None:
                frac = (d / t) if t else 0.0
                ctx.progress(base + int(frac * n), total, f"shard {k + 1}/{len(shards)}: {msg}")

            preds = self.host.label(spec, shard, method=params.get("method", "icm"),
                                      checkpoint=ctx.workdir / f"shard-{k}.ckpt", progress=progress, version=version)
            failed = {tid: p.reason for tid, p in preds.items() if not p.result}  # one bad task costs only itself
            for tid, reason in list(failed.items())[:20]:
                log.warning("job %d: task %s not labelled: %s", job.id, tid, reason)
            items = {tid: p.to_ls(version) for tid, p in preds.items()}
            self.predictions.put_predictions(project, version, items, job_id=job.id)
            if ls is not None:
                self._push(ctx, ls, resumed=False)
            done_shards.add(k)
            done_before += len(shard)
            state["done_shards"] = sorted(done_shards)
            state["flagged"] = state.get("flagged", 0) + sum(p.flagged for p in preds.values())
            state["not_labelled"] = state.get("not_labelled", 0) + len(failed)
            reasons = {**state.get("not_labelled_tasks", {}), **{str(t): r for t, r in failed.items()}}
            state["not_labelled_tasks"] = dict(list(reasons.items())[:50])  # the first 50 with their reasons
            ctx.save_state(state)
            ctx.progress(done_before, total, f"shard {k + 1}/{len(shards)} written")
        flagged = state.get("flagged", 0)
        where = "written to Label Studio" if ls is not None else "kept in the store (Label Studio unreachable)"
        failed = state.get("not_labelled", 0)
        failed_note = f", {failed} not labelled (reasons in the job's state)" if failed else ""
        return f"{total - failed} tasks labelled, {flagged} flagged for review{failed_note}, {where}"

    def _fetch_tasks(self, project: int, params: dict) -> list[dict]:
        try:
            tasks = self.ls_for(project).project_tasks(project)
            if tasks:
                return tasks
        except LabelStudioUnavailable as exc:
            log.warning("project %s: %s; labelling only the tasks sent in the request", project, exc)
        except Exception as exc:
            log.warning("project %s: fetching tasks from Label Studio failed (%s); using request tasks",
                        project, exc)
        return params.get("tasks", [])

    def _ls_or_none(self, project: int):
        try:
            return self.ls_for(project)
        except LabelStudioUnavailable as exc:
            log.warning("project %s: %s; predictions stay in the store and are served by /predict", project, exc)
            return None

    def _push(self, ctx: JobContext, ls, resumed: bool) -> None:
        project, version = ctx.job.project, ctx.job.model_version
        pending = self.predictions.unpushed(project, version)
        if not pending:
            return
        if resumed:
            already = ls.existing_prediction_tasks(project, version)
            self.predictions.mark_pushed(project, version, [t for t in pending if t in already])
            pending = {t: v for t, v in pending.items() if t not in already}
        for tid, item in pending.items():
            if not item.get("result"):
                continue  # nothing to show; LS would store an empty prediction and skip the task forever
            ctx.check()
            ls.create_prediction(tid, item)
            self.predictions.mark_pushed(project, version, [tid])
        self.predictions.mark_pushed(project, version, list(pending))

