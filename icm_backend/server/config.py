"""Server settings from the environment, named as upstream Label Studio ML backends name them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from icm_backend.engine.labeler import CLI_METHODS
from icm_backend.engine.model import DTYPE_CHOICES
from icm_backend.envvars import env_float as _float
from icm_backend.envvars import env_int as _int
from icm_backend.envvars import env_switch
from icm_backend.errors import InputError


def _choice(env: dict, name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in choices:
        raise InputError(f"{name}={env.get(name)!r}: choose one of {', '.join(choices)}")
    return raw


def _positive(env: dict, name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 1:
        raise InputError(f"{name}={value}: expected a positive integer")
    return value


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
    # -- a model server instead of the in-process model (ICM_SERVER_URL; ICM_MODEL = the served name) ----
    server_url: str | None = None  # ICM_SERVER_URL: OpenAI-compatible base URL, e.g. http://vllm:8000/v1
    server_api_key: str | None = field(default=None, repr=False)  # ICM_SERVER_API_KEY, else OPENAI_API_KEY
    server_tokenizer: str | None = None  # ICM_TOKENIZER: local tokenizer of the served model (default ICM_MODEL)
    server_retry_s: float = 300.0  # ICM_SERVER_RETRY_S: how long a job waits for a model server that is down
    method: str = "icm"  # what jobs and small in-request batches run
    sync_max_tasks: int = 16  # batches up to this size are labelled by ICM inside the request (within the budget)
    predict_budget_s: float = 8.0  # ICM_PREDICT_BUDGET_S: /predict answers within this; the rest is the job's
    review_threshold: float = 0.6  # confidence under this -> flagged low_confidence (only if review_by_threshold)
    review_by_threshold: bool = False  # ICM_REVIEW_THRESHOLD set: flag by it; else by the review budget
    review_fraction: float = 0.2  # ICM_REVIEW_FRACTION: flag this share of each labelling, least confident first
    trial: bool = True  # ICM_TRIAL=0 turns off: jobs also label with a kept version on trial (finetune.trial)
    core_size: int = 256  # ICM_CORE_SIZE: a project with more tasks runs ICM on a core this big, one pass for the rest
    chunk_size: int = 512  # ICM_CHUNK_SIZE: the one-pass phase labels (and writes to LS) this many tasks at a time
    reuse_core: bool = True  # ICM_REUSE_CORE: a relabel reuses the project's last core, human labels in place
    dtype: str = "auto"  # ICM_DTYPE: auto (bf16 where the CPU computes it natively or on CUDA, else fp32), bf16, fp32
    seed: int = 0
    # ICM_MAX_ITERS: cap on the ICM search's iterations (engine default: 20*N; 12*N for a core's search)
    max_iters: int | None = None
    checkpoint_every_s: float = 20.0  # ICM_CHECKPOINT_EVERY_S: how often a job's search saves its state
    # -- limits against hostile or careless clients (each a clear 4xx, or a per-task reason) ---------
    max_body_bytes: int = 32 * 1024 * 1024  # ICM_MAX_BODY_BYTES: bigger requests get 413 before being read
    max_json_depth: int = 64  # ICM_MAX_JSON_DEPTH: deeper JSON nesting gets 400 (LS task JSON is ~6 deep)
    max_tasks_per_request: int = 20000  # ICM_MAX_TASKS_PER_REQUEST: LS sends a whole selection in one /predict
    max_text_chars: int = 10000  # ICM_MAX_TEXT_CHARS: a task whose text is longer gets an empty result + reason
    max_choices: int = 64  # ICM_MAX_CHOICES: a <Choices> with more values gets 422
    max_queued_jobs: int = 16  # ICM_MAX_QUEUED_JOBS: queued + running jobs, all projects together
    max_queued_jobs_per_project: int = 2  # ICM_MAX_QUEUED_JOBS_PER_PROJECT
    max_concurrent_predicts: int = 2  # ICM_MAX_CONCURRENT_PREDICTS: /predict requests running the model at once
    max_metric_series: int = 200  # ICM_MAX_METRIC_SERIES: distinct label sets per metric before "other"

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
        if method not in CLI_METHODS:
            raise InputError(f"ICM_METHOD={method!r}: choose one of {', '.join(CLI_METHODS)}")
        user, pw = env.get("BASIC_AUTH_USER") or None, env.get("BASIC_AUTH_PASS") or None
        # None -> a random secret kept in MODEL_DIR/webhook_secret (0600), made on first start with auth on
        secret = env.get("WEBHOOK_SECRET") or None
        server_url = env.get("ICM_SERVER_URL") or None
        if server_url and not server_url.startswith(("http://", "https://")):
            raise InputError(f"ICM_SERVER_URL={server_url!r}: expected a base URL like http://vllm:8000/v1")
        if server_url and not env.get("ICM_MODEL"):
            raise InputError("ICM_SERVER_URL is set: ICM_MODEL must name the model the server serves")
        threshold = _float(env, "ICM_REVIEW_THRESHOLD", 0.6)
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"ICM_REVIEW_THRESHOLD={threshold}: expected a number in [0, 1]")
        fraction = _float(env, "ICM_REVIEW_FRACTION", 0.2)
        if not 0.0 <= fraction <= 1.0:
            raise InputError(f"ICM_REVIEW_FRACTION={fraction}: expected a number in [0, 1]")
        return cls(
            model_dir=Path(env.get("MODEL_DIR") or "./data/server"),
            label_studio_url=env.get("LABEL_STUDIO_URL") or env.get("LABEL_STUDIO_HOST") or None,
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY") or None,
            basic_auth_user=user, basic_auth_pass=pw, webhook_secret=secret,
            model_name=env.get("ICM_MODEL") or None,
            model_version_pin=env.get("ICM_MODEL_VERSION") or None,
            server_url=server_url,
            server_api_key=env.get("ICM_SERVER_API_KEY") or env.get("OPENAI_API_KEY") or None,
            server_tokenizer=env.get("ICM_TOKENIZER") or None,
            server_retry_s=_float(env, "ICM_SERVER_RETRY_S", 300.0),
            method=method,
            sync_max_tasks=_int(env, "ICM_SYNC_MAX_TASKS", 16),
            predict_budget_s=_float(env, "ICM_PREDICT_BUDGET_S", 8.0),
            review_threshold=threshold,
            review_by_threshold=env.get("ICM_REVIEW_THRESHOLD") not in (None, ""),
            review_fraction=fraction,
            trial=env_switch(env, "ICM_TRIAL", True),
            core_size=max(0, _int(env, "ICM_CORE_SIZE", cls.core_size)),
            chunk_size=_positive(env, "ICM_CHUNK_SIZE", cls.chunk_size),
            reuse_core=env_switch(env, "ICM_REUSE_CORE", True),
            dtype=_choice(env, "ICM_DTYPE", "auto", DTYPE_CHOICES),
            seed=_int(env, "ICM_SEED", 0),
            max_iters=_int(env, "ICM_MAX_ITERS", 0) or None,
            checkpoint_every_s=_float(env, "ICM_CHECKPOINT_EVERY_S", 20.0),
            max_body_bytes=_positive(env, "ICM_MAX_BODY_BYTES", cls.max_body_bytes),
            max_json_depth=_positive(env, "ICM_MAX_JSON_DEPTH", cls.max_json_depth),
            max_tasks_per_request=_positive(env, "ICM_MAX_TASKS_PER_REQUEST", cls.max_tasks_per_request),
            max_text_chars=_positive(env, "ICM_MAX_TEXT_CHARS", cls.max_text_chars),
            max_choices=_positive(env, "ICM_MAX_CHOICES", cls.max_choices),
            max_queued_jobs=_positive(env, "ICM_MAX_QUEUED_JOBS", cls.max_queued_jobs),
            max_queued_jobs_per_project=_positive(env, "ICM_MAX_QUEUED_JOBS_PER_PROJECT",
                                                  cls.max_queued_jobs_per_project),
            max_concurrent_predicts=_positive(env, "ICM_MAX_CONCURRENT_PREDICTS", cls.max_concurrent_predicts),
            max_metric_series=_positive(env, "ICM_MAX_METRIC_SERIES", cls.max_metric_series),
        )
