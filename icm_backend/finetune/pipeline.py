"""Training set -> new model version. Shared by the CLI (`icm-backend finetune`) and the LS job."""

from __future__ import annotations

import logging
from pathlib import Path

from icm_backend.errors import InputError
from icm_backend.finetune.data import TrainingSet
from icm_backend.finetune.lora import Example, TrainConfig, choose_plan, train_lora
from icm_backend.finetune.prompts import prompt_renderer
from icm_backend.versions import VersionInfo, save_version

log = logging.getLogger(__name__)


def base_model_of(name_or_path: str | None) -> str:
    """Fine-tunes always train a fresh adapter over the *base* model: if asked to start from a
    fine-tuned version directory, use the base model it names (adapters are not stacked)."""
    if name_or_path:
        p = Path(name_or_path)
        if (p / "icm_base_model.txt").exists():
            return (p / "icm_base_model.txt").read_text().strip()
    from icm_backend.engine.model import DEFAULT_MODEL
    import os

    return name_or_path or os.environ.get("ICM_MODEL") or DEFAULT_MODEL


def examples_from(ts: TrainingSet, task: str, labels: list[str]) -> list[Example]:
    render = prompt_renderer(task, labels)
    return [Example(render(r.row), r.label) for r in ts.rows]


def train_version(ts: TrainingSet, task: str, labels: list[str], model_dir: str | Path,
                  base_model: str | None = None, cfg: TrainConfig | None = None, progress=None,
                  extra_metrics: dict | None = None) -> VersionInfo:
    """Train on `ts` and write MODEL_DIR/versions/<new>/ atomically; returns the new version."""
    from icm_backend.engine.model import load_lm

    if not ts.rows:
        raise InputError("no training rows: " + (ts.summary() if ts.skipped else "nothing was labelled"))
    if len({r.label for r in ts.rows}) < 2:
        # One class only: the adapter would learn to always answer it. Refuse rather than degrade.
        raise InputError(f"all {len(ts.rows)} training rows have the label {ts.rows[0].label!r}; "
                         "fine-tuning needs at least two different labels")
    base = base_model_of(base_model)
    plan = choose_plan()
    log.info("fine-tuning %s (%s) on %s", base, plan.note, ts.summary())
    lm = load_lm(base, plan.quantize)  # a private copy: LoRA injection modifies the model in place
    result = train_lora(lm, examples_from(ts, task, labels), labels, cfg, plan, progress)
    metrics = {**result.metrics, "task": task, "labels": labels, "data": ts.summary(), **(extra_metrics or {})}
    version = save_version(model_dir, result.model, base, metrics, ts.ids())
    log.info("wrote version %s to %s", version.name, version.path)
    return version
