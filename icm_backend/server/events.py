"""Webhook event dispatch: a registry so other features hook in with one line.

    backend.events.on_event("START_TRAINING", lambda payload, backend: backend.runner.submit("train", ...))

create_app registers the features' handlers (icm_backend.finetune.hooks) on the backend's registry.

Handlers run in a small thread pool: LS gives event webhooks 1 s and blocks the "Start training"
button until the reply, so the HTTP answer never waits for a handler.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

# Events LS 1.23.2 sends to an ML backend's webhook; anything else gets {"status": "Unknown event"}.
KNOWN_EVENTS = frozenset({
    "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
    "TASKS_CREATED", "TASKS_DELETED", "PROJECT_UPDATED", "START_TRAINING",
})

EventHandler = Callable[[dict, object], object]  # (payload, backend) -> ignored


@dataclass
class EventRegistry:
    handlers: dict[str, list[EventHandler]] = field(default_factory=dict)
    # action -> count handled (for /metrics and tests); actions LS never sends and nothing handles count
    # as "other", so made-up names cannot grow this (or /metrics) without bound
    seen: dict[str, int] = field(default_factory=dict)
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(2, "icm-webhook"))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, action: str, fn: EventHandler) -> EventHandler:
        self.handlers.setdefault(action, []).append(fn)
        return fn

    def dispatch(self, action: str, payload: dict, backend: object) -> dict:
        fns = self.handlers.get(action, [])
        key = action if fns or action in KNOWN_EVENTS else "other"
        with self._lock:
            self.seen[key] = self.seen.get(key, 0) + 1
        if not fns and action not in KNOWN_EVENTS:
            return {"status": "Unknown event"}
        for fn in fns:
            self._pool.submit(self._run, fn, action, payload, backend)
        log.info("webhook %s for project %s: %d handler(s)", action, _project_id(payload), len(fns))
        return {"status": "ok", "action": action, "handlers": len(fns)}

    @staticmethod
    def _run(fn: EventHandler, action: str, payload: dict, backend: object) -> None:
        try:
            fn(payload, backend)
        except Exception:  # a broken handler must not take the webhook route down
            log.exception("webhook handler %r for %s failed", getattr(fn, "__name__", fn), action)


def _project_id(payload: dict):
    p = payload.get("project")
    return p.get("id") if isinstance(p, dict) else p
