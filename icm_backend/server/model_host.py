"""The server's handle on the labelling engine: loads the served model once, labels LS tasks.

The model is loaded lazily (never by /health or /setup) and reloaded only when the served version
under MODEL_DIR changes. Request threads and the job thread share one loaded model: inference does not
mutate it, and each label_rows call builds its own scorer.

One bad task spoils nothing: texts too long or not valid Unicode never reach the engine (their task
gets an empty result with the reason), and when the engine fails on a batch anyway, the batch is split
in halves until the failing task is alone; it gets an empty result naming the error, the rest are labelled.
A model that cannot load raises ModelUnavailable (its message names the version, never a path) and
`load_error` keeps it for /health.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from icm_backend.labelstudio import results as P
from icm_backend.server.config import ServerConfig
from icm_backend.labelstudio.config import ProjectSpec
from icm_backend.labelstudio.rows import tasks_to_rows
from icm_backend.versions import base_version, served_model_path

log = logging.getLogger(__name__)

MODELS_KEPT = 2
LOAD_RETRY_S = 30.0  # after a failed load, requests fail at once for this long instead of retrying the load


class ModelUnavailable(Exception):
    """The served model cannot be loaded."""

LabelFn = Callable[..., list]


def _default_labeler() -> LabelFn:
    from icm_backend.engine.labeler import label_rows

    return label_rows


def local_loader(config: ServerConfig) -> Callable[[str], object]:
    """The in-process model, in the number format ICM_DTYPE asks for (auto: by the hardware)."""
    def load(name: str):
        from icm_backend.engine.model import load_lm

        return load_lm(name, dtype=config.dtype)
    return load


def remote_loader(config: ServerConfig) -> Callable[[str], object]:
    """ICM_SERVER_URL set: the "model" is a RemoteScorer on that server (ICM_MODEL = the served name).
    Scoring waits up to ICM_SERVER_RETRY_S for a server that is down, reporting each retry as progress."""

    def load(path: str):
        from icm_backend.engine.remote import RemoteScorer

        if path != config.base_model:
            log.warning("fine-tuned version %s is not served by the model server; scoring on %s at %s",
                        path, config.base_model, config.server_url)
        # check=False: loading never waits on the server; the first score checks it (model, tokenizer)
        return RemoteScorer(config.server_url, config.base_model, tokenizer=config.server_tokenizer or config.base_model,
                            api_key=config.server_api_key, retry_s=config.server_retry_s, check=False)

    return load


class LabelledTasks(dict):
    """ModelHost.label's result: {task id: TaskPrediction}, plus the engine's project-level `assessment`
    (engine.calibration.Assessment, or None from a labeler that gives none), and for a project labelled on a
    core its `core` ([task id, row of the task, label word] per core row: what a relabel may reuse) and
    `core_origin` (engine.types.CoreOrigin: the core reused, or searched and why)."""

    assessment = None
    core: list | None = None
    core_origin = None


def row_keys(rowset) -> list[tuple[int, int]]:
    """(task id, k) of each row: the k-th row of its task. Rows are rebuilt from tasks on every call, so a
    core kept between labellings is named by task, not by row index."""
    seen: dict[int, int] = {}
    out = []
    for tid in rowset.task_ids:
        out.append((tid, seen.get(tid, 0)))
        seen[tid] = seen.get(tid, 0) + 1
    return out


class ModelHost:
    def __init__(self, config: ServerConfig, labeler: LabelFn | None = None,
                 loader: Callable[[str], object] | None = None):
        self.config = config
        self._labeler = labeler
        # A labeler given by the caller (a test fake) gets the model's name, not a loaded model.
        default = remote_loader(config) if config.server_url else local_loader(config)
        self._loader = loader or (default if labeler is None else (lambda name: name))
        # path -> loaded model, most recently used last; at most MODELS_KEPT (the serving version, and a
        # version on trial while a job labels with it, without reloading either per shard or per request)
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()
        self.load_error: str | None = None  # why the last load failed (no paths); None once a load succeeds
        self._failed: tuple[str, float] | None = None  # (path, when) of the last failed load

    @property
    def labeler(self) -> LabelFn:
        if self._labeler is None:
            self._labeler = _default_labeler()
        return self._labeler

    def model(self, version: str | None = None):
        """The loaded model serving `version` (a name from versions/ or the base version; None = the default)."""
        pin = version if version is not None else self.config.model_version_pin
        path = served_model_path(self.config.model_dir, self.config.base_model, pin)
        with self._lock:  # one load at a time; concurrent callers wait for it instead of loading twice
            if path in self._models:
                self._models[path] = self._models.pop(path)
                return self._models[path]
            if self._failed and self._failed[0] == path and time.monotonic() - self._failed[1] < LOAD_RETRY_S:
                raise ModelUnavailable(self.load_error)
            log.info("loading model %s", path)
            try:
                lm = self._loader(path)
            except Exception as exc:
                name = version or base_version(self.config.base_model)
                self.load_error = _redact(f"model {name} cannot be loaded: {type(exc).__name__}: {exc}",
                                          self.config.model_dir)[:500]
                self._failed = (path, time.monotonic())
                log.error("%s", self.load_error)
                raise ModelUnavailable(self.load_error) from exc
            while len(self._models) >= MODELS_KEPT:
                self._models.pop(next(iter(self._models)))  # callers still holding it keep it alive until done
            self._models[path] = lm
            self.load_error, self._failed = None, None
            return lm

    @property
    def loaded(self) -> bool:
        return bool(self._models)

    def label(self, spec: ProjectSpec, tasks: list[dict], method: str, checkpoint=None,
              progress: Callable[[int, int, str], None] | None = None,
              version: str | None = None, context: list[dict] | None = None,
              fixed: dict[int, str] | None = None,
              on_chunk: Callable[[dict[int, P.TaskPrediction]], None] | None = None,
              core: list | None = None) -> dict[int, P.TaskPrediction]:
        """One TaskPrediction per task. Exceptions raised by `progress` (cancel, a time budget) and
        ModelUnavailable propagate; any other engine failure costs only the task(s) that caused it.

        context, fixed: tasks labelled by people and their engine label words {task id: word}: fixed
        members of D, used as in-context examples, never relabelled, not returned.
        on_chunk: receives the TaskPredictions of each chunk as the engine finishes it (a big project's
        core and first chunk, then each later chunk; a small one's all at once), and at the end whatever it
        was not handed yet. With a checkpoint, a resumed call skips the chunks handed over before.
        core: a previous result's `.core`: the engine reuses it where it can (engine.core.reuse_core)."""
        mine = {t["id"] for t in tasks}
        context = [t for t in (context or []) if t["id"] in (fixed or {}) and t["id"] not in mine]
        rowset = tasks_to_rows(spec, tasks + context, max_chars=self.config.max_text_chars)
        fixed_rows = _fixed_rows(spec, rowset, {t["id"]: fixed[t["id"]] for t in context}) if context else {}
        handed: set[int] = set()

        def hand(tps: dict[int, P.TaskPrediction]) -> None:
            tps = {t: p for t, p in tps.items() if t in mine and t not in handed}
            if on_chunk is not None and tps:
                on_chunk(tps)
            handed.update(tps)

        if not any(tid in mine for tid in rowset.primary):
            out = {t: p for t, p in P.build(spec, rowset, [], self.config.review_threshold).items() if t in mine}
            hand(out)
            return out
        model = self.model(version)
        raised: list[BaseException] = []

        def relay(*args) -> None:
            try:
                progress(*args)
            except BaseException as exc:
                raised.append(exc)
                raise

        if hasattr(model, "fork"):  # a remote scorer: this call's own label set and stats
            model = model.fork()
            # while it waits for a model server that is down: progress shows it, and may stop it (cancel, budget)
            model.on_wait = (lambda msg: relay(0, 0, msg)) if progress else None

        from icm_backend.engine.search import SearchConfig

        config = SearchConfig(max_iters=self.config.max_iters, checkpoint_every_s=self.config.checkpoint_every_s,
                              core_size=self.config.core_size, chunk_size=self.config.chunk_size)
        extra = {"fixed": fixed_rows} if fixed_rows else {}
        keys = row_keys(rowset)
        if core:
            by_key = {(int(t), int(k)): w for t, k, w in core}
            prior = {j: by_key[key] for j, key in enumerate(keys) if key in by_key}
            if prior:
                extra["core"] = prior
        if on_chunk is not None:
            def chunk(preds: list) -> None:  # a task's prediction comes from its primary row
                rows = {p.index for p in preds}
                hand({tid: tp for tid, tp in P.build(spec, rowset, preds, self.config.review_threshold).items()
                      if rowset.primary.get(tid) in rows})

            extra["on_chunk"] = chunk
        try:
            raw = (self.labeler(
                rowset.rows, task=spec.task, labels=spec.labels if spec.task == "classify" else None, method=method,
                model=model, seed=self.config.seed, checkpoint=checkpoint, progress=relay if progress else None,
                config=config, **self._review_settings(), **extra))
            preds = list(raw)
        except Exception as exc:
            if raised and exc is raised[-1]:
                raise
            if _is_model_server_error(exc):  # no task is at fault: the job fails with the reason
                raise ModelUnavailable(str(exc)) from exc
            out = self._isolate(spec, tasks, rowset, method, progress, version, exc)
            hand(out)
            return out
        got = {p.index for p in preds}  # a resumed big project: chunks handed over before are not in `preds`
        out = P.build(spec, rowset, preds, self.config.review_threshold)
        labelled = LabelledTasks({tid: p for tid, p in out.items() if tid in mine
                                  and (tid not in rowset.primary or rowset.primary[tid] in got or not handed)})
        labelled.assessment = getattr(raw, "assessment", None)  # calibration / reliability of this labelling
        if getattr(raw, "core", None):
            labelled.core = [[*keys[j], w] for j, w in sorted(raw.core.items())]
            labelled.core_origin = getattr(raw, "core_origin", None)
        hand({t: p for t, p in labelled.items() if t not in handed})
        return labelled

    def _review_settings(self) -> dict:
        """Low-confidence flags by ICM_REVIEW_THRESHOLD when it is set, else by the ICM_REVIEW_FRACTION budget."""
        cfg = self.config
        if getattr(cfg, "review_by_threshold", False):
            return {"review_threshold": cfg.review_threshold}
        return {"review_threshold": None, "review_fraction": getattr(cfg, "review_fraction", 0.2)}

    def _isolate(self, spec, tasks, rowset, method, progress, version, exc) -> dict[int, P.TaskPrediction]:
        """The engine failed on this batch: label each half on its own until the failing task is alone."""
        out = {tid: P.empty(tid, reason) for tid, reason in rowset.skipped.items()}
        usable = [t for t in tasks if t["id"] in rowset.primary]
        if len(usable) == 1:
            tid = usable[0]["id"]
            out[tid] = P.empty(tid, _redact(f"labelling failed: {type(exc).__name__}: {exc}",
                                            self.config.model_dir)[:300])
            log.warning("task %s not labelled: %s", tid, out[tid].reason)
            return out
        log.warning("labelling %d tasks failed (%s: %s); splitting the batch to find the task at fault",
                    len(usable), type(exc).__name__, str(exc)[:200])
        half = len(usable) // 2
        for part in (usable[:half], usable[half:]):  # no checkpoint: the file belongs to the whole batch
            out.update(self.label(spec, part, method, progress=progress, version=version))
        return out


def _is_model_server_error(exc: BaseException) -> bool:
    from icm_backend.engine.remote import ModelServerError

    return isinstance(exc, ModelServerError)


def _fixed_rows(spec: ProjectSpec, rowset, fixed: dict[int, str]) -> dict[int, str]:
    """{task id: label word} -> {row index: label word}. A comparison task's second row (the pair swapped)
    takes the other word: exactly one order of a pair is the better one."""
    out: dict[int, str] = {}
    for j, tid in enumerate(rowset.task_ids):
        if tid not in fixed:
            continue
        word = fixed[tid]
        if rowset.primary.get(tid) != j:
            if spec.task != "comparison" or word not in ("True", "False"):
                continue
            word = "False" if word == "True" else "True"
        out[j] = word
    return out


def _redact(message: str, model_dir) -> str:
    """Error text for clients: MODEL_DIR's location replaced by the word MODEL_DIR."""
    from pathlib import Path

    for p in {str(Path(model_dir).resolve()), str(model_dir)}:
        if p and p != ".":
            message = message.replace(p, "MODEL_DIR")
    return message
