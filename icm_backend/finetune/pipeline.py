"""Training set -> new model version. Shared by the CLI (`icm-backend finetune`) and the LS job."""

from __future__ import annotations

import logging
from pathlib import Path

from icm_backend.errors import InputError
from icm_backend.finetune.data import TrainingSet
from icm_backend.finetune.lora import Example, TrainConfig, choose_plan, in_context, split_indices, train_lora
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
    cfg = cfg or TrainConfig()
    examples = examples_from(ts, task, labels)
    train_idx, hold_idx = split_indices([e.label for e in examples], cfg)
    train_ex, hold_ex = [examples[i] for i in train_idx], [examples[i] for i in hold_idx]
    if cfg.context == "in-context":
        # Train (and early-stop) on what the served method scores: targets after other labelled examples.
        count = lambda text: len(lm.tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
        train_ex = in_context(train_ex, train_ex, count, cfg.context_tokens, cfg.contexts_per_row, cfg.seed)
        hold_ex = in_context(hold_ex, [examples[i] for i in train_idx], count, cfg.context_tokens, 1,
                             cfg.seed + 1, alone=False)
    elif cfg.context != "none":
        raise InputError(f"training context {cfg.context!r}: choose in-context or none")
    result = train_lora(lm, train_ex, labels, cfg, plan, progress, holdout=hold_ex)
    metrics = {**result.metrics, "task": task, "labels": labels, "data": ts.summary(),
               "heldout_index": hold_idx, **(extra_metrics or {})}
    version = save_version(model_dir, result.model, base, metrics, ts.ids())
    log.info("wrote version %s to %s", version.name, version.path)
    return version


def gate_request(model_dir: str | Path, base_model: str, method: str, pin: str | None = None,
                 max_iters: int | None = None, alpha: float | None = None) -> dict:
    """What the promotion gate compares a new version against: the version serving now (or `pin`), with
    the method that serves, at the sign test's level `alpha` (None: finetune.gate's default). The server's
    training job and `icm-backend finetune` both ask this."""
    from icm_backend.finetune.gate import DEFAULT_ALPHA
    from icm_backend.versions import served_model_path, served_version_name

    return {"method": method, "serving_model": served_model_path(model_dir, base_model, pin),
            "serving_name": served_version_name(model_dir, base_model, pin), "max_iters": max_iters,
            "alpha": DEFAULT_ALPHA if alpha is None else alpha}


def train_gate_promote(ts: TrainingSet, task: str, labels: list[str], model_dir: str | Path,
                       base_model: str | None, cfg: TrainConfig | None, gate_req: dict | None, progress=None,
                       extra_metrics: dict | None = None, may_promote=None):
    """The one train -> gate -> promote path (the server's worker, `icm-backend finetune`, bench_loop).

    Train a version; with `gate_req` (see gate_request) run the promotion gate (finetune.gate) on the
    held-out slice of the accepted labels, record its verdict with the version, and promote only if it
    passed; without one (the CLI's --no-gate) promote unconditionally. `may_promote()`, if given, is asked
    last (the worker: is the server that started me still there?). Returns (VersionInfo, verdict or None,
    promoted)."""
    from icm_backend.finetune.gate import DEFAULT_ALPHA, gate
    from icm_backend.versions import promote, record_gate

    cfg = cfg or TrainConfig()
    version = train_version(ts, task, labels, model_dir, base_model, cfg, progress, extra_metrics)
    verdict = None
    if gate_req:
        hold = set(version.metrics.get("heldout_index") or [])
        pairs = [(r.row, r.label) for r in ts.rows]
        verdict = gate([p for i, p in enumerate(pairs) if i not in hold], [p for i, p in enumerate(pairs) if i in hold],
                       task, labels if task == "classify" else None, gate_req["method"], gate_req["serving_model"],
                       gate_req["serving_name"], str(version.path), seed=cfg.seed, max_iters=gate_req.get("max_iters"),
                       alpha=gate_req.get("alpha", DEFAULT_ALPHA))  # a request from before ICM_GATE_ALPHA
        record_gate(model_dir, version.name, verdict.to_json())
        version.metrics["gate"] = verdict.to_json()
    promoted = verdict is None or verdict.promoted
    if promoted and may_promote is not None and not may_promote():
        return version, verdict, False
    if promoted:
        promote(model_dir, version.name)
    return version, verdict, promoted
