"""`icm-backend serve`: the Label Studio ML backend under gunicorn (1 worker + threads).

    icm-backend serve --port 9090
    MODEL_DIR=./data/server LABEL_STUDIO_URL=http://localhost:8080 LABEL_STUDIO_API_KEY=... icm-backend serve

One worker on purpose: the model and the job worker live in that process; threads serve LS's
concurrent calls. --preload builds the app before the fork (config errors fail fast) and the job
worker thread starts in the worker after the fork. --timeout 0: ICM requests may take a while.
"""

from __future__ import annotations

import argparse
import logging
import os

from icm_backend.errors import InputError

log = logging.getLogger(__name__)


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the Label Studio ML backend (gunicorn)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=os.environ.get("HOST_BIND", "0.0.0.0"), help="bind address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 9090))
    p.add_argument("--threads", type=int, default=int(os.environ.get("THREADS") or 8))
    p.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS") or 1),
                   help="keep 1: jobs and the model live in the worker process")
    p.add_argument("--model-dir", default=None, help="overrides MODEL_DIR (jobs DB, checkpoints, versions)")
    p.add_argument("--dev", action="store_true", help="werkzeug dev server instead of gunicorn (debugging)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.model_dir:
        os.environ["MODEL_DIR"] = args.model_dir
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port}: expected 1-65535")
    if args.workers != 1:
        # Each worker would run its own job thread over the same SQLite queue and load its own model.
        raise InputError(f"--workers {args.workers}: the backend runs exactly 1 worker (use --threads)")
    from icm_backend.server.app import create_app, get_backend
    from icm_backend.server.config import ServerConfig

    config = ServerConfig.from_env()
    app = create_app(config)
    if config.auth_enabled:
        log.info("basic auth on; LS event webhooks go to /webhook/%s", config.webhook_secret)
    if args.dev:
        get_backend(app).runner.ensure_started()
        app.run(host=args.host, port=args.port, threaded=True)
        return 0
    from gunicorn.app.base import BaseApplication

    class _Gunicorn(BaseApplication):
        def load_config(self):
            for key, value in {
                "bind": f"{args.host}:{args.port}", "workers": 1, "threads": args.threads,
                "worker_class": "gthread", "timeout": 0, "preload_app": True,
                "loglevel": os.environ.get("LOG_LEVEL", "info").lower(),
                # resume interrupted jobs at once, not on the first request
                "post_fork": lambda server, worker: get_backend(app).runner.ensure_started(),
            }.items():
                self.cfg.set(key, value)

        def load(self):
            return app

    _Gunicorn().run()
    return 0
