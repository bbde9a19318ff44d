"""Flask app: the Label Studio ML backend protocol (as LS 1.23.2 speaks it) over the Backend service.

Routes stay thin: validate the body (errors name the field), call Backend, shape JSON. Nothing here
loads the model except /predict; /health and /setup answer in milliseconds.

Hostile and careless clients (issue 12): bodies are capped (ICM_MAX_BODY_BYTES, 413) and their JSON
nesting checked before parsing (ICM_MAX_JSON_DEPTH, 400); ids must fit SQLite's 64-bit integers; task
counts are capped (ICM_MAX_TASKS_PER_REQUEST); a version pin is a version *name* checked per request
(422 for that request only); credentials compare as UTF-8 bytes in constant time; every error is a
one-line JSON 4xx naming the field, never a traceback or a MODEL_DIR path.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from icm_backend.errors import InputError
from icm_backend.server.config import ServerConfig
from icm_backend.server.model_host import ModelHost
from icm_backend.server.events import EventRegistry
from icm_backend.jobs.projects import load_or_create_webhook_secret, origin
from icm_backend.jobs.queue import FINAL
from icm_backend.labelstudio.config import LabelConfigError, ProjectSpec, parse_label_config
from icm_backend.server.logsafe import install_log_escaping
from icm_backend.server.service import Backend, Busy

log = logging.getLogger(__name__)

OPEN_ROUTES = {"/", "/health"}  # liveness probes (docker healthcheck) carry no credentials
MAX_ID = 2**63 - 1  # SQLite INTEGER; LS ids are far below
MAX_ACTION_CHARS = 100
MAX_TOKEN_CHARS = 4096


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _id_in_range(value: int, field: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise BadRequest(f"{field}: {value if abs(value) < 10**30 else 'a huge number'} is out of range "
                         f"(0 to 2^63-1)")
    return value


def parse_project(value) -> int:
    """LS sends "<project id>.<created timestamp>" in /setup and /predict; plain ints are fine too."""
    if isinstance(value, bool) or value is None:
        raise BadRequest("project: missing; expected '<id>.<timestamp>' or an integer")
    if isinstance(value, int):
        return _id_in_range(value, "project")
    if isinstance(value, dict) and isinstance(value.get("id"), int) and not isinstance(value.get("id"), bool):
        return _id_in_range(value["id"], "project")
    if isinstance(value, str):
        head = value.split(".", 1)[0]
        if head.isascii() and head.isdigit() and len(head) <= 19:
            return _id_in_range(int(head), "project")
    shown = repr(value)[:60] if isinstance(value, str) else f"a {type(value).__name__}"
    raise BadRequest(f"project: expected '<id>.<timestamp>' or an integer, got {shown}")


_JSON_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_depth(raw: bytes, limit: int) -> int:
    """Nesting depth of the JSON text `raw` (strings skipped), counted without parsing; stops past `limit`.
    C-speed passes only: deep nesting must be refused before json.loads recurses into it."""
    import numpy as np

    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")  # no \" left: a string is then simply "..."
    brackets = _JSON_STRING.sub(b'""', unescaped).translate(None, _NOT_BRACKETS).translate(_BRACKET_STEP)
    depth, deepest = 0, 0
    for i in range(0, len(brackets), 1 << 20):
        steps = np.frombuffer(brackets[i:i + (1 << 20)], dtype=np.int8).astype(np.int32)
        run = np.cumsum(steps) + depth
        deepest = max(deepest, int(run.max()))
        depth = int(run[-1])
        if deepest > limit:
            break
    return deepest


def _text(value, field: str, max_chars: int | None = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field}: expected a string, got a {type(value).__name__}")
    if max_chars is not None and len(value) > max_chars:
        raise BadRequest(f"{field}: {len(value)} characters; at most {max_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest(f"{field}: not valid Unicode (lone surrogate at character {exc.start})") from None
    return value


def _json_body(max_depth: int) -> dict:
    if not request.is_json:
        raise BadRequest("body: expected a JSON object (Content-Type: application/json)")
    raw = request.get_data(cache=True)  # bounded by MAX_CONTENT_LENGTH (413 past it)
    if json_depth(raw, max_depth) > max_depth:
        raise BadRequest(f"body: JSON nested deeper than {max_depth} levels (ICM_MAX_JSON_DEPTH)")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"body: JSON nested too deep (ICM_MAX_JSON_DEPTH={max_depth})") from None
    except ValueError as exc:
        raise BadRequest(f"body: not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(body, dict):
        raise BadRequest("body: expected a JSON object (Content-Type: application/json)")
    return body


def _validate_tasks(body: dict, max_tasks: int) -> list[dict]:
    if "tasks" not in body:
        raise BadRequest("tasks: missing; expected a list of task objects")
    tasks = body["tasks"]
    if not isinstance(tasks, list):
        raise BadRequest(f"tasks: expected a list, got {type(tasks).__name__}")
    if len(tasks) > max_tasks:
        raise BadRequest(f"tasks: {len(tasks)} tasks in one request; at most {max_tasks} (ICM_MAX_TASKS_PER_REQUEST)",
                         413)
    seen: dict[int, int] = {}
    for i, t in enumerate(tasks):
        if not isinstance(t, dict):
            raise BadRequest(f"tasks[{i}]: expected an object, got {type(t).__name__}")
        if not isinstance(t.get("id"), int) or isinstance(t.get("id"), bool):
            raise BadRequest(f"tasks[{i}].id: expected an integer task id")
        _id_in_range(t["id"], f"tasks[{i}].id")
        if t["id"] in seen:
            raise BadRequest(f"tasks[{i}].id: duplicate task id {t['id']} (also tasks[{seen[t['id']]}])")
        seen[t["id"]] = i
        if not isinstance(t.get("data", {}), dict):
            raise BadRequest(f"tasks[{i}].data: expected an object")
    return tasks


def _check_choices(spec: ProjectSpec, max_choices: int) -> None:
    if len(spec.labels) > max_choices:
        raise LabelConfigError(f"label_config: <Choices name={spec.from_name!r}> has {len(spec.labels)} choices; "
                               f"at most {max_choices} are supported (ICM_MAX_CHOICES)")


def _same_secret(given: str | None, expected: str | None) -> bool:
    """Constant-time, and any Unicode on either side (hmac.compare_digest refuses non-ASCII str)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def create_app(config: ServerConfig | None = None, *, host: ModelHost | None = None,
               events: EventRegistry | None = None, start_worker: bool = True) -> Flask:
    config = config or ServerConfig.from_env()
    install_log_escaping()
    if config.auth_enabled and not config.webhook_secret:
        config.webhook_secret = load_or_create_webhook_secret(config.model_dir)
    backend = Backend.create(config, host=host, events=events)
    _register_features(backend)
    app = Flask("icm_backend.server")
    app.extensions["icm_backend"] = backend
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes

    def authorized() -> bool:
        auth = request.authorization
        if not (auth and auth.type == "basic"):
            return False
        user_ok = _same_secret(auth.username, config.basic_auth_user)
        return _same_secret(auth.password, config.basic_auth_pass) and user_ok

    def secret_ok(secret: str | None) -> bool:
        return _same_secret(secret, config.webhook_secret)

    @app.before_request
    def _before():
        g.t0 = time.perf_counter()
        if start_worker:
            backend.runner.ensure_started()  # lazily: with --preload the worker thread must start post-fork
        if not config.auth_enabled or request.path in OPEN_ROUTES:
            return None
        if request.path.startswith("/webhook"):
            # LS sends event webhooks without credentials: the secret in the URL stands in for them.
            secret = request.view_args.get("secret") if request.view_args else None
            if authorized() or secret_ok(secret or request.args.get("secret")):
                return None
            return jsonify(error="webhook: missing or wrong secret; use /webhook/<WEBHOOK_SECRET>"), 401
        if not authorized():
            resp = jsonify(error="authorization: basic auth required (BASIC_AUTH_USER/BASIC_AUTH_PASS)")
            resp.headers["WWW-Authenticate"] = 'Basic realm="icm-backend"'
            return resp, 401
        return None

    @app.after_request
    def _after(resp: Response):
        if request.url_rule is not None:
            backend.metrics.inc("icm_http_requests_total", route=request.url_rule.rule, code=resp.status_code)
            backend.metrics.inc("icm_http_seconds_total", time.perf_counter() - g.get("t0", time.perf_counter()),
                                route=request.url_rule.rule)
        return resp

    @app.errorhandler(BadRequest)
    def _bad(exc: BadRequest):
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(InputError)
    def _bad_input(exc: InputError):
        return jsonify(error=str(exc)), 422

    @app.errorhandler(LabelConfigError)
    def _bad_config(exc: LabelConfigError):
        return jsonify(error=str(exc)), 422

    @app.errorhandler(Busy)
    def _busy(exc: Busy):
        resp = jsonify(error=str(exc))
        resp.headers["Retry-After"] = "5"
        return resp, 429

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        if exc.code == 413:
            return jsonify(error=f"body: larger than {config.max_body_bytes} bytes (ICM_MAX_BODY_BYTES)"), 413
        return jsonify(error=f"{exc.code} {exc.name}: {exc.description}"), exc.code

    @app.errorhandler(Exception)
    def _crash(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(error=f"internal error ({type(exc).__name__}); see the backend log"), 500

    # -- liveness ---------------------------------------------------------------------------
    @app.get("/")
    @app.get("/health")
    def health():
        # Liveness: never loads the model, never waits on a job, never fails on a pin, never shows a path.
        version, pin_error = backend.default_version()
        load_error = backend.host.load_error
        reply = {"status": "UP", "model_class": "ICM", "model_version": version,
                 "model_loaded": backend.host.loaded,
                 "model_status": "error" if load_error else ("loaded" if backend.host.loaded else "not loaded"),
                 "jobs": backend.jobs.counts()}
        if load_error or pin_error:
            reply["model_error"] = load_error or pin_error
        return jsonify(reply)

    # -- LS protocol ------------------------------------------------------------------------
    @app.post("/setup")
    def setup():
        body = _json_body(config.max_json_depth)
        extra = body.get("extra_params")
        if extra is not None and not isinstance(extra, dict):
            raise BadRequest("extra_params: expected a JSON object")
        # A pin is checked here, for this request only: a bad one is a 422 and changes nothing stored.
        pin = backend.check_pin((extra or {}).get("model_version"), "extra_params.model_version")
        schema = _text(body.get("schema"), "schema")
        hostname = _text(body.get("hostname"), "hostname", 2048) or None
        if hostname is not None and origin(hostname) is None:
            raise BadRequest(f"hostname: expected an http(s) URL, got {hostname[:80]!r}")
        token = _text(body.get("access_token"), "access_token", MAX_TOKEN_CHARS) or None
        reply = {"model_version": backend.model_version(None, pin)}
        if body.get("project") is not None:
            project = parse_project(body["project"])
            backend.projects.put_project(project, schema, hostname, token, pin=pin)
            reply["model_version"] = backend.model_version(project)
            if schema:
                try:
                    _check_choices(parse_label_config(schema), config.max_choices)
                except LabelConfigError as exc:
                    # Connecting must not fail on a config that is still being edited; /predict will.
                    reply["warning"] = str(exc)
        if backend.host.load_error:
            reply["warning"] = backend.host.load_error
        return jsonify(reply)

    @app.post("/predict")
    def predict():
        body = _json_body(config.max_json_depth)
        tasks = _validate_tasks(body, config.max_tasks_per_request)
        project = parse_project(body.get("project"))
        label_config = _text(body.get("label_config"), "label_config")
        if not label_config:
            known = backend.projects.get_project(project)
            label_config = known and known.get("label_config")
            if not label_config:
                raise BadRequest(f"project: unknown project {project} (no /setup seen) and no label_config in "
                                 "the request", 404)
        spec = parse_label_config(label_config)
        _check_choices(spec, config.max_choices)
        results = backend.predict(project, spec, label_config, tasks) if tasks else []
        reply = {"results": results, "model_version": backend.model_version(project)}
        load_error = backend.host.load_error
        if load_error and not any(r.get("result") for r in results) and any(
                r.get("error") == load_error for r in results):
            reply["error"] = load_error  # say so; LS stores nothing from items without a "result"
            return jsonify(reply), 503
        return jsonify(reply)

    @app.post("/webhook")
    @app.post("/webhook/<secret>")
    def webhook(secret: str | None = None):
        body = _json_body(config.max_json_depth)
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise BadRequest("action: missing; expected an event name such as ANNOTATION_CREATED")
        if len(action) > MAX_ACTION_CHARS:
            raise BadRequest(f"action: {len(action)} characters; event names are at most {MAX_ACTION_CHARS}")
        return jsonify(backend.events.dispatch(action, body, backend))

    @app.get("/versions")
    def versions():
        project = request.args.get("project")
        return jsonify(backend.versions_detail(parse_project(project) if project is not None else None))

    @app.get("/metrics")
    def metrics():
        gauges = {("icm_jobs", (("status", s),)): n for s, n in backend.jobs.counts().items()}
        gauges[("icm_stored_predictions", ())] = backend.predictions.count_predictions()
        gauges[("icm_model_loaded", ())] = float(backend.host.loaded)
        for action, n in backend.events.seen.items():
            gauges[("icm_webhook_events_total", (("action", action),))] = n
        return Response(backend.metrics.render(gauges), mimetype="text/plain; version=0.0.4")

    # -- jobs -------------------------------------------------------------------------------
    @app.get("/jobs")
    def list_jobs():
        project = request.args.get("project")
        if project is not None and not (project.isascii() and project.isdigit()):
            raise BadRequest(f"project: expected an integer, got {project[:60]!r}")
        jobs = backend.jobs.list_jobs(project=parse_project(project) if project else None,
                                       status=(request.args.get("status") or None))
        return jsonify(jobs=[j.to_json() for j in jobs])

    @app.get("/jobs/<int:job_id>")
    def get_job(job_id: int):
        job = backend.jobs.get_job(job_id) if job_id <= MAX_ID else None
        if job is None:
            raise BadRequest(f"job: no job with id {job_id}", 404)
        return jsonify(job.to_json())

    @app.post("/jobs/<int:job_id>/cancel")
    def cancel_job(job_id: int):
        job = backend.jobs.request_cancel(job_id) if job_id <= MAX_ID else None
        if job is None:
            raise BadRequest(f"job: no job with id {job_id}", 404)
        note = "already finished" if job.status in FINAL and job.status != "cancelled" else "cancel requested"
        return jsonify(job=job.to_json(), status=note)

    return app


def _register_features(backend: Backend) -> None:
    """The one place features plug into the server: their job kinds and webhook handlers."""
    from icm_backend.finetune import hooks as finetune
    from icm_backend.server import accept_job as accept

    for feature in (finetune, accept):
        for kind, factory in feature.JOB_KINDS.items():
            backend.runner.register(kind, factory(backend))
        backend.runner.unlimited_kinds.update(getattr(feature, "UNLIMITED_KINDS", ()))
        for action, handler in feature.EVENT_HANDLERS:
            backend.events.on_event(action, handler)


def get_backend(app: Flask) -> Backend:
    return app.extensions["icm_backend"]
