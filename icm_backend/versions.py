"""The one MODEL_DIR/versions contract: which model versions exist, which one serves, pins, rollback.

The base model serves as version "icm-<model name>" until a fine-tuned version is promoted.

Layout of one version (a directory `load_lm` accepts as --model):
    adapter_config.json, adapter_model.safetensors   the LoRA adapter (peft)
    icm_base_model.txt                               base model name, e.g. gemma3-270m
    metrics.json                                     training metrics + held-out scores + labels
    training_set.json                                which tasks/annotations (or file rows) trained it
    icm_version.txt                                  the version id (also keys load_lm's weights hash)

Atomicity: a training writes into versions/.tmp-<version>-<pid>/ and renames it into place only
when everything is written, so a crash or kill mid-training leaves the serving version untouched and
never exposes a half-written version. Leftover .tmp-* directories are ignored and swept later.

Which version serves: MODEL_DIR/versions/CURRENT names it; a finished training switches CURRENT to its
version with an atomic rename (`promote`), which is what bumps the model_version LS sees. Rollback =
point CURRENT back (`icm-backend versions --pin V`), or pin without touching disk: the caller passes a
pin (the server reads it from the ML backend's `model_version` extra param in LS, else env
ICM_MODEL_VERSION). Reading these is a few stat calls: safe inside /setup (3 s limit) and /health.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from icm_backend.errors import InputError

PIN_ENV = "ICM_MODEL_VERSION"  # read by the server's config, named here for error messages
BASE = "base"  # pin value meaning: serve the base model, ignore fine-tuned versions
_NAME = re.compile(r"^ft(\d{4,})-[0-9A-Za-z]+$")


@dataclass
class VersionInfo:
    name: str
    path: Path
    created_at: str
    base_model: str
    metrics: dict

    def to_json(self) -> dict:
        return {"version": self.name, "path": str(self.path), "created_at": self.created_at,
                "base_model": self.base_model, "metrics": self.metrics}


def versions_root(model_dir: str | Path) -> Path:
    return Path(model_dir) / "versions"


def version_number(name: str) -> int:
    """NNNN of a version ft<NNNN>-<time>; -1 for anything else (the base model): what "newer" compares."""
    m = _NAME.match(name)
    return int(m.group(1)) if m else -1


def list_versions(model_dir: str | Path) -> list[VersionInfo]:
    """Finished versions, oldest first (a version exists once its directory has been renamed in)."""
    root = versions_root(model_dir)
    out = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith(".") or version_number(d.name) < 0:
            continue
        if not (d / "adapter_config.json").exists():
            continue
        metrics = {}
        try:
            metrics = json.loads((d / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError):
            pass
        try:  # the promotion gate's verdict, written after the version (see record_gate)
            metrics["gate"] = json.loads((d / GATE_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            pass
        trials = {}
        for f in d.glob("trial-*.json"):  # a version on trial (finetune.trial): where it disagrees, per project
            try:
                t = json.loads(f.read_text())
                trials[str(t["project"])] = {"against": t.get("against"), "compared": t.get("compared"),
                                             "disagreements": len(t.get("disagreements") or {}),
                                             "job": t.get("job"), "updated_at": t.get("updated_at")}
            except (OSError, ValueError, KeyError, TypeError):
                continue
        if trials:
            metrics["trials"] = trials
        base = (d / "icm_base_model.txt").read_text().strip() if (d / "icm_base_model.txt").exists() else ""
        out.append(VersionInfo(d.name, d, metrics.get("created_at", ""), base, metrics))
    return sorted(out, key=lambda v: version_number(v.name))


def new_version_name(model_dir: str | Path) -> str:
    """ft<NNNN>-<time>: sortable, unique per MODEL_DIR (counts the .tmp dirs too, so two concurrent
    trainings never pick the same name)."""
    root = versions_root(model_dir)
    highest = 0
    if root.is_dir():
        for d in root.iterdir():
            name = d.name[len(".tmp-"):].rsplit("-", 1)[0] if d.name.startswith(".tmp-") else d.name
            highest = max(highest, version_number(name))
    return f"ft{highest + 1:04d}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"


def pinned_version(extra_params: dict | None = None, default_pin: str | None = None) -> str | None:
    """The rollback pin: LS extra param `model_version` wins over the configured default (ICM_MODEL_VERSION)."""
    pin = (extra_params or {}).get("model_version") or default_pin or None
    return str(pin).strip() or None if pin else None


CURRENT_FILE = "CURRENT"
GATE_FILE = "gate.json"  # the promotion gate's verdict on a version: {"promoted": bool, "reason": str, ...}


def record_gate(model_dir: str | Path, name: str, verdict: dict) -> None:
    """Store the promotion gate's verdict next to the version (atomic replace), for /versions and job status."""
    d = versions_root(model_dir) / name
    if not d.is_dir():
        raise InputError(f"version {name!r}: not found in {versions_root(model_dir)}")
    tmp = d / f".{GATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(verdict, indent=1, default=str))
    os.replace(tmp, d / GATE_FILE)
_SAFE = re.compile(r"[^A-Za-z0-9._@+-]+")


def base_version(model_name: str) -> str:
    """The version name LS sees while the base model serves: "icm-<model name>"."""
    return "icm-" + _SAFE.sub("-", Path(model_name).name if os.sep in model_name else model_name)


def current_name(model_dir: str | Path) -> str | None:
    try:
        name = (versions_root(model_dir) / CURRENT_FILE).read_text().strip()
    except OSError:
        return None
    return name if name and (versions_root(model_dir) / name).is_dir() else None


def promote(model_dir: str | Path, name: str) -> None:
    """Serve `name` from now on (or BASE). Atomic: write a temp file, rename over CURRENT."""
    root = versions_root(model_dir)
    if name != BASE and not (root / name / "adapter_config.json").exists():
        have = ", ".join(v.name for v in list_versions(model_dir)) or "none"
        raise InputError(f"version {name!r}: not found in {root} (have: {have}, or {BASE!r} for the base model)")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{CURRENT_FILE}.{os.getpid()}.tmp"
    if name == BASE:
        (root / CURRENT_FILE).unlink(missing_ok=True)
        return
    tmp.write_text(name + "\n")
    os.replace(tmp, root / CURRENT_FILE)


def serving_version(model_dir: str | Path, pin: str | None = None) -> VersionInfo | None:
    """The version to serve (pin, else CURRENT); None = the base model. A pin naming no finished version is an error
    (rolling back to something that does not exist must not silently serve something else)."""
    versions = list_versions(model_dir)
    if pin == BASE:
        return None
    if pin:
        for v in versions:
            if v.name == pin:
                return v
        raise InputError(f"{PIN_ENV}/model_version {pin!r}: no such version in {versions_root(model_dir)} "
                         f"(have: {', '.join(v.name for v in versions) or 'none'}, or {BASE!r})")
    current = current_name(model_dir)
    return next((v for v in versions if v.name == current), None)


def served_version_name(model_dir: str | Path, model_name: str, pin: str | None = None) -> str:
    """What LS sees as model_version: the serving fine-tuned version, else base_version(model_name)."""
    if pin == base_version(model_name):
        pin = BASE
    v = serving_version(model_dir, pin)
    return v.name if v else base_version(model_name)


def served_model_path(model_dir: str | Path, model_name: str, pin: str | None = None) -> str:
    """What to hand to load_lm: the serving fine-tuned version's dir, else the base model name."""
    if pin == base_version(model_name):
        pin = BASE
    v = serving_version(model_dir, pin)
    return str(v.path) if v else model_name


class VersionWriter:
    """Context manager: write into a temp dir, rename into versions/<name>/ on success only."""

    def __init__(self, model_dir: str | Path, name: str | None = None):
        self.model_dir = Path(model_dir)
        self.name = name or new_version_name(model_dir)
        self.final = versions_root(model_dir) / self.name
        self.tmp = versions_root(model_dir) / f".tmp-{self.name}-{os.getpid()}"

    def __enter__(self) -> "VersionWriter":
        self.tmp.mkdir(parents=True, exist_ok=False)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.final.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise RuntimeError(f"version {self.name} already exists; refusing to overwrite it")
        os.rename(self.tmp, self.final)  # atomic on one filesystem: the version appears whole
        return False

    def write_json(self, name: str, obj) -> None:
        (self.tmp / name).write_text(json.dumps(obj, indent=1, default=str))


def save_version(model_dir: str | Path, peft_model, base_model: str, metrics: dict, training_ids: dict,
                 name: str | None = None) -> VersionInfo:
    with VersionWriter(model_dir, name) as w:
        peft_model.save_pretrained(str(w.tmp))
        (w.tmp / "icm_base_model.txt").write_text(base_model + "\n")
        (w.tmp / "icm_version.txt").write_text(w.name + "\n")
        metrics = {**metrics, "version": w.name, "base_model": base_model,
                   "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        w.write_json("metrics.json", metrics)
        w.write_json("training_set.json", training_ids)
    return VersionInfo(w.name, w.final, metrics["created_at"], base_model, metrics)


def sweep_stale_tmp(model_dir: str | Path, older_than_s: float = 3600) -> int:
    """Remove .tmp-* dirs left by killed trainings (older than an hour: not a training in progress)."""
    root, n = versions_root(model_dir), 0
    if not root.is_dir():
        return 0
    for d in root.glob(".tmp-*"):
        if time.time() - d.stat().st_mtime > older_than_s:
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


def cli_model(name: str | None) -> str | None:
    """--model as the CLI takes it: a backend MODEL_DIR means the version it serves (CURRENT); env ICM_MODEL
    is the default; anything else goes to load_lm unchanged."""
    name = name or os.environ.get("ICM_MODEL") or None
    if name and (versions_root(name) / CURRENT_FILE).exists():
        current = current_name(name)
        if current:
            return str(versions_root(name) / current)
    return name


def versions_payload(model_dir: str | Path, model_name: str, pin: str | None = None) -> dict:
    """GET /versions: every version (base first, then fine-tuned oldest to newest) with its metrics,
    which one serves and the pin. Metrics are trimmed to what a UI shows (history stays in metrics.json)."""
    keep = ("created_at", "base_model", "task", "labels", "data", "train_rows", "heldout_rows", "steps",
            "stopped", "best_step", "heldout_before", "heldout_best", "seconds", "project", "trigger", "gate", "trials")
    try:
        current = served_version_name(model_dir, model_name, pin)
    except InputError as exc:
        current = f"error: {exc}"
    found = list_versions(model_dir)
    return {"versions": [base_version(model_name)] + [v.name for v in found], "current": current, "pinned": pin,
            "details": [{"version": v.name, **{k: v.metrics.get(k) for k in keep}} for v in found]}
