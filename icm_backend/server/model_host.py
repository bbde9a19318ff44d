"""The server's handle on the labelling engine: loads the served model once, labels LS tasks.

The model is loaded lazily (never by /health or /setup) and reloaded only when the served version
under MODEL_DIR changes. Request threads and the job thread share one loaded model: inference does not
mutate it, and each label_rows call builds its own scorer.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from icm_backend.labelstudio import results as P
from icm_backend.server.config import ServerConfig
from icm_backend.labelstudio.config import ProjectSpec
from icm_backend.labelstudio.rows import tasks_to_rows
from icm_backend.versions import pinned_version, served_model_path

log = logging.getLogger(__name__)

LabelFn = Callable[..., list]


def _default_labeler() -> LabelFn:
    from icm_backend.engine.labeler import label_rows

    return label_rows


def _default_loader(name: str):
    from icm_backend.engine.model import load_lm

    return load_lm(name)


class ModelHost:
    def __init__(self, config: ServerConfig, labeler: LabelFn | None = None,
                 loader: Callable[[str], object] | None = None):
        self.config = config
        self._labeler = labeler
        # A labeler given by the caller (a test fake) gets the model's name, not a loaded model.
        self._loader = loader or (_default_loader if labeler is None else (lambda name: name))
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
        pin = pinned_version(self.extra_params, self.config.model_version_pin)
        path = served_model_path(self.config.model_dir, self.config.base_model, pin)
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
            from icm_backend.engine.search import SearchConfig

            config = SearchConfig(max_iters=self.config.max_iters, checkpoint_every_s=self.config.checkpoint_every_s)
            preds = self.labeler(
                rowset.rows, task=spec.task, labels=spec.labels if spec.task == "classify" else None, method=method,
                model=self.model(), seed=self.config.seed, checkpoint=checkpoint, progress=progress, config=config,
                review_threshold=self.config.review_threshold)
        return P.build(spec, rowset, list(preds), self.config.review_threshold)
