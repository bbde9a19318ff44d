"""Flask app: the Label Studio ML backend protocol (as LS 1.23.2 speaks it) over the Backend service.

Routes stay thin: validate the body (errors name the field), call Backend, shape JSON. Nothing here
loads the model except /predict; /health and /setup answer in milliseconds.
"""

from __future__ import annotations

import hmac
import logging
import time

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from icm_backend.errors import InputError
from icm_backend.server.config import ServerConfig
from icm_backend.server.model_host import ModelHost
from icm_backend.server.events import EventRegistry
from icm_backend.jobs.queue import FINAL
from icm_backend.labelstudio.config import LabelConfigError, parse_label_config
from icm_backend.server.service import Backend

log = logging.getLogger(__name__)

OPEN_ROUTES = {"/", "/health"}  # liveness probes (docker healthcheck) carry no credentials


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_project(value) -> int:
    """LS sends "<project id>.<created timestamp>" in /setup and /predict; plain ints are fine too."""
    if isinstance(value, bool) or value is None:
        raise BadRequest("project: missing; expected '<id>.<timestamp>' or an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), int):
        return value["id"]
    head = str(value).split(".", 1)[0]
    if head.isdigit():
        return int(head)
    raise BadRequest(f"project: expected '<id>.<timestamp>' or an integer, got {value!r}")


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("body: expected a JSON object (Content-Type: application/json)")
    return body


def _validate_tasks(body: dict) -> list[dict]:
    if "tasks" not in body:
        raise BadRequest("tasks: missing; expected a list of task objects")
    tasks = body["tasks"]
    if not isinstance(tasks, list):
        raise BadRequest(f"tasks: expected a list, got {type(tasks).__name__}")
    for i, t in enumerate(tasks):
        if not isinstance(t, dict):
            raise BadRequest(f"tasks[{i}]: expected an object, got {type(t).__name__}")
        if not isinstance(t.get("id"), int) or isinstance(t.get("id"), bool):
            raise BadRequest(f"tasks[{i}].id: expected an integer task id")
        if not isinstance(t.get("data", {}), dict):
            raise BadRequest(f"tasks[{i}].data: expected an object")
    return tasks


def create_app(config: ServerConfig | None = None, *, host: ModelHost | None = None,
               events: EventRegistry | None = None, start_worker: bool = True) -> Flask:
    config = config or ServerConfig.from_env()
    backend = Backend.create(config, host=host, events=events)
    _register_features(backend)
    app = Flask("icm_backend.server")
    app.extensions["icm_backend"] = backend
    app.json.sort_keys = False

    def authorized() -> bool:
        auth = request.authorization
        return bool(auth and auth.type == "basic"
                    and hmac.compare_digest(auth.username or "", config.basic_auth_user or "")
                    and hmac.compare_digest(auth.password or "", config.basic_auth_pass or ""))

    def secret_ok(secret: str | None) -> bool:
        return bool(secret and config.webhook_secret and hmac.compare_digest(secret, config.webhook_secret))

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

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return jsonify(error=f"{exc.code} {exc.name}: {exc.description}"), exc.code

    @app.errorhandler(Exception)
    def _crash(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(error=f"internal error ({type(exc).__name__}); see the backend log"), 500

    # -- liveness ---------------------------------------------------------------------------
    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify(status="UP", model_class="ICM", model_version=backend.model_version(),
                       model_loaded=backend.host.loaded, jobs=backend.jobs.counts())

    # -- LS protocol ------------------------------------------------------------------------
    @app.post("/setup")
    def setup():
        body = _json_body()
        extra = body.get("extra_params")
        if extra is not None and not isinstance(extra, dict):
            raise BadRequest("extra_params: expected a JSON object")
        if extra is not None:
            backend.extra_params = backend.host.extra_params = extra
        version = backend.model_version()
        reply = {"model_version": version}
        if body.get("project") is not None:
            project = parse_project(body["project"])
            schema = body.get("schema")
            if schema is not None and not isinstance(schema, str):
                raise BadRequest("schema: expected the label config XML as a string")
            backend.projects.put_project(project, schema, body.get("hostname") or None, body.get("access_token") or None)
            if schema:
                try:
                    parse_label_config(schema)
                except LabelConfigError as exc:
                    # Connecting must not fail on a config that is still being edited; /predict will.
                    reply["warning"] = str(exc)
        return jsonify(reply)

    @app.post("/predict")
    def predict():
        body = _json_body()
        tasks = _validate_tasks(body)
        project = parse_project(body.get("project"))
        label_config = body.get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise BadRequest("label_config: expected the label config XML as a string")
        if not label_config:
            known = backend.projects.get_project(project)
            label_config = known and known.get("label_config")
            if not label_config:
                raise BadRequest(f"project: unknown project {project} (no /setup seen) and no label_config in "
                                 "the request", 404)
        spec = parse_label_config(label_config)
        results = backend.predict(project, spec, label_config, tasks) if tasks else []
        return jsonify(results=results, model_version=backend.model_version())

    @app.post("/webhook")
    @app.post("/webhook/<secret>")
    def webhook(secret: str | None = None):
        body = _json_body()
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise BadRequest("action: missing; expected an event name such as ANNOTATION_CREATED")
        return jsonify(backend.events.dispatch(action, body, backend))

    @app.get("/versions")
    def versions():
        return jsonify(backend.versions_detail())

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
        if project is not None and not project.isdigit():
            raise BadRequest(f"project: expected an integer, got {project!r}")
        jobs = backend.jobs.list_jobs(project=int(project) if project else None,
                                       status=request.args.get("status") or None)
        return jsonify(jobs=[j.to_json() for j in jobs])

    @app.get("/jobs/<int:job_id>")
    def get_job(job_id: int):
        job = backend.jobs.get_job(job_id)
        if job is None:
            raise BadRequest(f"job: no job with id {job_id}", 404)
        return jsonify(job.to_json())

    @app.post("/jobs/<int:job_id>/cancel")
    def cancel_job(job_id: int):
        job = backend.jobs.request_cancel(job_id)
        if job is None:
            raise BadRequest(f"job: no job with id {job_id}", 404)
        note = "already finished" if job.status in FINAL and job.status != "cancelled" else "cancel requested"
        return jsonify(job=job.to_json(), status=note)

    return app


def _register_features(backend: Backend) -> None:
    """The one place features plug into the server: their job kinds and webhook handlers."""
    from icm_backend.finetune import hooks as finetune

    for kind, factory in finetune.JOB_KINDS.items():
        backend.runner.register(kind, factory(backend))
    for action, handler in finetune.EVENT_HANDLERS:
        backend.events.on_event(action, handler)


def get_backend(app: Flask) -> Backend:
    return app.extensions["icm_backend"]
