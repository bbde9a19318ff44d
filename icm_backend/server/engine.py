"""The server's handle on the labelling engine: loads the served model once, labels LS tasks.

The model is loaded lazily (never by /health or /setup) and reloaded only when the served version
under MODEL_DIR changes. Request threads and the job thread share one loaded model: inference does not
mutate it, and each label_rows call builds its own scorer.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import threading
from typing import Callable

from icm_backend.server import predictions as P
from icm_backend.server.config import ServerConfig
from icm_backend.server.label_config import ProjectSpec
from icm_backend.server.rows import tasks_to_rows
from icm_backend.server.versions import current_model_path

log = logging.getLogger(__name__)

LabelFn = Callable[..., list]


def _default_labeler() -> LabelFn:
    # Test hook: ICM_LABELER=module:function swaps the engine for a fake with label_rows' signature.
    target = os.environ.get("ICM_LABELER")
    if target:
        mod, _, fn = target.partition(":")
        return getattr(importlib.import_module(mod), fn)
    from icm_backend.labeler import label_rows

    return label_rows


def _default_loader(name: str):
    from icm_backend.model import load_lm

    return load_lm(name)


class Engine:
    def __init__(self, config: ServerConfig, labeler: LabelFn | None = None,
                 loader: Callable[[str], object] | None = None):
        self.config = config
        self._labeler = labeler
        self._loader = loader or (_default_loader if labeler is None and not os.environ.get("ICM_LABELER")
                                  else (lambda name: name))
        self._lm = None
        self._lm_path: str | None = None
        self._lock = threading.Lock()

    @property
    def labeler(self) -> LabelFn:
        if self._labeler is None:
            self._labeler = _default_labeler()
        return self._labeler

    extra_params: dict | None = None  # set by the backend from /setup: may pin a version

    def model(self):
        path = current_model_path(self.config.model_dir, self.config.model_name, self.extra_params)
        with self._lock:  # one load at a time; concurrent callers wait for it instead of loading twice
            if self._lm is None or self._lm_path != path:
                log.info("loading model %s", path)
                self._lm = self._loader(path)
                self._lm_path = path
            return self._lm

    @property
    def loaded(self) -> bool:
        return self._lm is not None

    def label(self, spec: ProjectSpec, tasks: list[dict], method: str, checkpoint=None,
              progress: Callable[[int, int, str], None] | None = None) -> dict[int, P.TaskPrediction]:
        rowset = tasks_to_rows(spec, tasks)
        preds = []
        if rowset.rows:
            extra = {}
            if "review_threshold" in inspect.signature(self.labeler).parameters:
                extra["review_threshold"] = self.config.review_threshold
            if self.config.max_iters and "config" in inspect.signature(self.labeler).parameters:
                from icm_backend.search import SearchConfig

                extra["config"] = SearchConfig(max_iters=self.config.max_iters)
            preds = self.labeler(
                rowset.rows, spec.task, labels=spec.labels if spec.task == "classify" else None, method=method,
                model=self.model(), seed=self.config.seed, checkpoint=checkpoint, progress=progress, **extra)
        return P.build(spec, rowset, list(preds), self.config.review_threshold)
