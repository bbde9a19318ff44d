"""Which model version the backend serves. Contract shared with the fine-tune code (icm_backend/finetune):

- MODEL_DIR/versions/<version>/ holds a fine-tuned model (an HF dir or a LoRA adapter dir that load_lm
  can read). The fine-tune job writes it completely, then writes MODEL_DIR/versions/CURRENT (one line:
  <version>) with an atomic rename. That switch is what bumps the model_version LS sees, so LS predicts
  again after a fine-tune.
- Without CURRENT the base model is served, as version "icm-<model name>".
Reading these is a few stat calls: safe inside /setup (3 s limit) and /health.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CURRENT_FILE = "CURRENT"
_SAFE = re.compile(r"[^A-Za-z0-9._@+-]+")


def base_model_name() -> str:
    from icm_backend.engine.model import DEFAULT_MODEL

    return os.environ.get("ICM_MODEL") or DEFAULT_MODEL


def base_version(model_name: str | None = None) -> str:
    name = model_name or base_model_name()
    return "icm-" + _SAFE.sub("-", Path(name).name if os.sep in name else name)


def versions_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / "versions"


def list_versions(model_dir: str | Path, model_name: str | None = None) -> list[str]:
    """Base version first, then fine-tuned versions oldest to newest."""
    d = versions_dir(model_dir)
    found = []
    if d.is_dir():
        found = sorted((p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime)
    return [base_version(model_name)] + [p.name for p in found]


def current_model_version(model_dir: str | Path, model_name: str | None = None,
                          extra_params: dict | None = None) -> str:
    """The served version: a rollback pin (LS extra param `model_version`, else env ICM_MODEL_VERSION),
    else CURRENT, else the base model. A pin naming no version raises InputError: rolling back to
    something that does not exist must not silently serve something else."""
    from icm_backend.errors import InputError
    from icm_backend.finetune.versions import BASE, PIN_ENV, pinned_version

    base = base_version(model_name)
    pin = pinned_version(extra_params)
    if pin in (BASE, base):
        return base
    if pin:
        if (versions_dir(model_dir) / pin).is_dir():
            return pin
        raise InputError(f"{PIN_ENV} / extra param model_version {pin!r}: no such version under "
                         f"{versions_dir(model_dir)} (have: {', '.join(list_versions(model_dir, model_name))})")
    current = versions_dir(model_dir) / CURRENT_FILE
    try:
        name = current.read_text().strip()
    except OSError:
        name = ""
    if name and (versions_dir(model_dir) / name).is_dir():
        return name
    return base


def current_model_path(model_dir: str | Path, model_name: str | None = None,
                       extra_params: dict | None = None) -> str:
    """What to hand to load_lm: the served fine-tuned dir, else the base model name."""
    version = current_model_version(model_dir, model_name, extra_params)
    path = versions_dir(model_dir) / version
    return str(path) if path.is_dir() else (model_name or base_model_name())
