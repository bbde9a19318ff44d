"""`icm-backend serve`: the Label Studio ML backend, one process, behind a buffering HTTP front (waitress).

    icm-backend serve --port 9090                      # listens on 127.0.0.1 only
    icm-backend serve --host 0.0.0.0 --port 9090       # reachable from other machines: set BASIC_AUTH_* too
    MODEL_DIR=./data/server LABEL_STUDIO_URL=http://localhost:8080 LABEL_STUDIO_API_KEY=... icm-backend serve

One process on purpose: the model and the job worker live in it; THREADS threads serve LS's concurrent
calls. The front reads each request whole (headers and body, up to ICM_MAX_BODY_BYTES) on its own event
loop before a thread sees it, so clients that send half a request and wait hold a socket, never a thread:
/health and /setup stay answerable. Complete requests wait for a thread in three lanes, served in order:
/health and / first, then everything but /predict (LS gives /setup 3 s and events 1 s), then /predict
(100 s). Idle connections close after ICM_CHANNEL_TIMEOUT_S.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys

from icm_backend.errors import InputError

log = logging.getLogger(__name__)

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the Label Studio ML backend",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=os.environ.get("HOST_BIND", "127.0.0.1"),
                   help="bind address (default 127.0.0.1; 0.0.0.0 = every interface: set BASIC_AUTH_USER/PASS)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 9090))
    p.add_argument("--threads", type=int, default=int(os.environ.get("THREADS") or 8))
    p.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS") or 1),
                   help="keep 1: jobs and the model live in the one process")
    p.add_argument("--model-dir", default=None, help="overrides MODEL_DIR (jobs DB, checkpoints, versions)")
    p.add_argument("--dev", action="store_true", help="werkzeug dev server instead of waitress (debugging)")
    p.add_argument("--preload", action="store_true",
                   help="load the model at start, in the background (/health: model_loaded); default: on first use")
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:  # a name: loopback only if every address it resolves to is
            addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None)}
        except OSError:
            return False
        return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def exposure_warning(host: str, auth_enabled: bool) -> str | None:
    if is_loopback(host) or auth_enabled:
        return None
    return (f"WARNING: listening on {host} (beyond this machine) WITHOUT authentication: anyone who can reach "
            "this port can read jobs, queue work and point the backend at their own server. Set "
            "BASIC_AUTH_USER and BASIC_AUTH_PASS (and the same pair in Label Studio's model settings), or "
            "bind to 127.0.0.1.")


def run(args) -> int:
    if args.model_dir:
        os.environ["MODEL_DIR"] = args.model_dir
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port}: expected 1-65535")
    if args.workers != 1:
        # Each worker would run its own job thread over the same SQLite queue and load its own model.
        raise InputError(f"--workers {args.workers}: the backend runs exactly 1 worker (use --threads)")
    if not 1 <= args.threads <= 256:
        raise InputError(f"--threads {args.threads}: expected 1-256")
    from icm_backend.server.app import create_app, get_backend
    from icm_backend.server.config import ServerConfig

    _limit_malloc_arenas()  # before any thread starts
    config = ServerConfig.from_env()
    app = create_app(config)
    warning = exposure_warning(args.host, config.auth_enabled)
    if warning:
        log.warning("%s", warning)
        print("\n" + "!" * 100 + "\n" + warning + "\n" + "!" * 100 + "\n", file=sys.stderr, flush=True)
    if config.auth_enabled:
        # the secret itself is never logged: it sits 0600 in MODEL_DIR (or came from WEBHOOK_SECRET)
        log.info("basic auth on; LS event webhooks go to /webhook/<secret> (the secret is in %s/webhook_secret "
                 "unless WEBHOOK_SECRET is set)", "MODEL_DIR")
    get_backend(app).runner.ensure_started()  # resume interrupted jobs at once, not on the first request
    if args.preload:
        _preload(get_backend(app))
    if args.dev:
        app.run(host=args.host, port=args.port, threaded=True)
        return 0
    server = make_server(app, config, args.host, args.port, args.threads)
    log.info("serving on http://%s:%d (%d threads, waitress)", args.host, args.port, args.threads)
    server.run()
    return 0


def _preload(backend) -> None:
    """Load the served model in a background thread while requests are already answered: a container's
    health check can wait for /health's model_loaded, so LS's first /predict does not spend its 100 s on
    the load (or on the first start's GGUF conversion). A failure stays in /health's model_error."""
    import threading

    def load() -> None:
        try:
            backend.host.model()
        except Exception:  # logged by the host, kept for /health; a later request retries the load
            pass

    threading.Thread(target=load, name="preload", daemon=True).start()


class Lanes:
    """waitress's task queue, in three lanes: liveness, the rest of LS's short calls, then /predict.
    Drop-in for the deque ThreadedTaskDispatcher uses (append, popleft, len, truth)."""

    FIRST = ("/health", "/")

    def __init__(self):
        from collections import deque

        self.lanes = (deque(), deque(), deque())

    @classmethod
    def lane(cls, task) -> int:
        requests = getattr(task, "requests", None) or [None]
        path = getattr(requests[0], "path", "") or ""
        if path in cls.FIRST:
            return 0
        return 2 if path.startswith("/predict") else 1

    def append(self, task) -> None:
        self.lanes[self.lane(task)].append(task)

    def popleft(self):
        for lane in self.lanes:
            if lane:
                return lane.popleft()
        raise IndexError("pop from an empty queue")

    def __len__(self) -> int:
        return sum(len(lane) for lane in self.lanes)

    def __bool__(self) -> bool:
        return any(self.lanes)


def _limit_malloc_arenas() -> None:
    """glibc gives each thread its own malloc arena and seldom hands them back: RSS grows with the number of
    request threads. Two arenas (as MALLOC_ARENA_MAX=2 would) unless the environment says otherwise."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def make_server(app, config, host: str, port: int, threads: int):
    """The waitress front `serve` runs (port 0 = any free port; `.effective_port`, `.run()`, `.close()`)."""
    from waitress.server import create_server
    from waitress.task import ThreadedTaskDispatcher

    dispatcher = ThreadedTaskDispatcher()
    dispatcher.queue = Lanes()
    dispatcher.set_thread_count(threads)  # waitress does this only for a dispatcher of its own
    channel_timeout = int(os.environ.get("ICM_CHANNEL_TIMEOUT_S") or 30)
    return create_server(
        app, _dispatcher=dispatcher, host=host, port=port, threads=threads, ident="icm-backend",
        max_request_body_size=config.max_body_bytes, max_request_header_size=64 * 1024,
        channel_timeout=channel_timeout, cleanup_interval=min(10, channel_timeout),
        connection_limit=int(os.environ.get("ICM_CONNECTION_LIMIT") or 1000), asyncore_use_poll=True,
        clear_untrusted_proxy_headers=True)
