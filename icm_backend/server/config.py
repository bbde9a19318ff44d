"""Server settings from the environment, named as upstream Label Studio ML backends name them."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from icm_backend.errors import InputError


def _int(env: dict, name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"{name}={raw!r}: expected an integer") from None


def _float(env: dict, name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"{name}={raw!r}: expected a number") from None


@dataclass
class ServerConfig:
    model_dir: Path = field(default_factory=lambda: Path("./data/server"))
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None  # legacy token or Personal Access Token
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    webhook_secret: str | None = None
    model_name: str | None = None  # ICM_MODEL; None -> the default model
    model_version_pin: str | None = None  # ICM_MODEL_VERSION: serve this version (or "base"); LS extra params win
    method: str = "icm"  # what jobs and small in-request batches run
    provisional_method: str = "zero-shot"  # fast answer for big batches while the ICM job runs; "none" = empty
    sync_max_tasks: int = 16  # batches up to this size are labelled by ICM inside the request
    provisional_max_tasks: int = 1000
    provisional_budget_s: float = 60.0  # LS gives /predict 100 s; leave room for the rest of the request
    review_threshold: float = 0.6  # confidence under this -> flagged low_confidence
    shard_size: int = 128  # a job labels (and pushes to LS) this many tasks at a time; groups stay together
    seed: int = 0
    max_iters: int | None = None  # ICM_MAX_ITERS: cap on ICM search iterations per shard (engine default 20*N)
    checkpoint_every_s: float = 20.0  # ICM_CHECKPOINT_EVERY_S: how often a job's search saves its state

    @property
    def base_model(self) -> str:
        from icm_backend.engine.model import DEFAULT_MODEL

        return self.model_name or DEFAULT_MODEL

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @property
    def db_path(self) -> Path:
        return self.model_dir / "icm_backend.sqlite3"

    @classmethod
    def from_env(cls, env: dict | None = None) -> "ServerConfig":
        env = dict(os.environ if env is None else env)
        method = env.get("ICM_METHOD", "icm")
        if method not in ("icm", "zero-shot", "random-fewshot", "bootstrap"):
            raise InputError(f"ICM_METHOD={method!r}: choose icm, zero-shot, random-fewshot or bootstrap")
        user, pw = env.get("BASIC_AUTH_USER") or None, env.get("BASIC_AUTH_PASS") or None
        secret = env.get("WEBHOOK_SECRET") or None
        if user and pw and not secret:
            # Stable across restarts without storing anything: LS keeps the webhook URL we print once.
            secret = hashlib.sha256(f"icm-webhook:{user}:{pw}".encode()).hexdigest()[:24]
        threshold = _float(env, "ICM_REVIEW_THRESHOLD", 0.6)
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"ICM_REVIEW_THRESHOLD={threshold}: expected a number in [0, 1]")
        return cls(
            model_dir=Path(env.get("MODEL_DIR") or "./data/server"),
            label_studio_url=env.get("LABEL_STUDIO_URL") or env.get("LABEL_STUDIO_HOST") or None,
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY") or None,
            basic_auth_user=user, basic_auth_pass=pw, webhook_secret=secret,
            model_name=env.get("ICM_MODEL") or None,
            model_version_pin=env.get("ICM_MODEL_VERSION") or None,
            method=method,
            provisional_method=env.get("ICM_PROVISIONAL_METHOD", "zero-shot"),
            sync_max_tasks=_int(env, "ICM_SYNC_MAX_TASKS", 16),
            provisional_max_tasks=_int(env, "ICM_PROVISIONAL_MAX_TASKS", 1000),
            provisional_budget_s=_float(env, "ICM_PROVISIONAL_BUDGET_S", 60.0),
            review_threshold=threshold,
            shard_size=max(1, _int(env, "ICM_JOB_SHARD_SIZE", 128)),
            seed=_int(env, "ICM_SEED", 0),
            max_iters=_int(env, "ICM_MAX_ITERS", 0) or None,
            checkpoint_every_s=_float(env, "ICM_CHECKPOINT_EVERY_S", 20.0),
        )
