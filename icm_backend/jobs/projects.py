"""Per-project settings that /setup told us (the label config, where Label Studio is, a version pin) and the
core of the project's last ICM labelling, which its next labelling reuses.

Credentials are the sensitive part. /setup comes from whoever can reach the backend, so:
- the backend's own configuration (LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY) always wins; a /setup
  hostname is used only when no URL is configured;
- a token is stored *with the host it was given for* and only ever sent there: a /setup that names a
  new hostname without a token drops the old token instead of keeping it for the new host;
- the SQLite file holding tokens is 0600 (see jobs/db.py), and so is the webhook secret file.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from icm_backend.jobs.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    project INTEGER PRIMARY KEY,
    label_config TEXT,
    hostname TEXT,
    access_token TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cores (
    project INTEGER PRIMARY KEY,
    core TEXT NOT NULL,
    model_version TEXT,
    updated REAL NOT NULL
);
"""

_UNSET = object()


def origin(url: str | None) -> str | None:
    """scheme://host:port of an http(s) URL, lower-cased; None when it is not one."""
    if not isinstance(url, str) or not url:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname.lower()}:{port}"


@dataclass(frozen=True)
class Credentials:
    url: str
    api_key: str


class ProjectStore:
    def __init__(self, db: Database):
        self.db = db
        db.script(SCHEMA)
        cols = {r["name"] for r in db.q("PRAGMA table_info(projects)")}
        if "model_version_pin" not in cols:  # added by issue 12: per-project version pins
            db.q("ALTER TABLE projects ADD COLUMN model_version_pin TEXT")

    def put_project(self, project: int, label_config: str | None, hostname: str | None,
                    access_token: str | None, pin=_UNSET) -> None:
        """Record what /setup sent. The token is bound to the hostname it came with: a request naming another
        host (or none) never inherits a token given for a different host."""
        with self.db.lock:
            old = self.get_project(project) or {}
            host, token = old.get("hostname"), old.get("access_token")
            if hostname is not None and origin(hostname) != origin(host):
                host, token = hostname, access_token  # a new host: only the token sent with it (maybe none)
            elif access_token is not None:
                if hostname is None and host is None:
                    token = None  # a token for no known host is of no use and must not bind to a later one
                else:
                    host, token = hostname or host, access_token
            self.db.q(
                "INSERT INTO projects(project, label_config, hostname, access_token, model_version_pin, updated) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT(project) DO UPDATE SET "
                "label_config=COALESCE(excluded.label_config, label_config), hostname=excluded.hostname, "
                "access_token=excluded.access_token, model_version_pin=excluded.model_version_pin, "
                "updated=excluded.updated",
                (project, label_config, host, token,
                 old.get("model_version_pin") if pin is _UNSET else pin, time.time()))

    def get_project(self, project: int) -> dict | None:
        rows = self.db.q("SELECT * FROM projects WHERE project=?", (project,))
        return dict(rows[0]) if rows else None

    def pin(self, project: int | None) -> str | None:
        if project is None:
            return None
        known = self.get_project(project) or {}
        return known.get("model_version_pin") or None

    def put_core(self, project: int, core: list, model_version: str) -> None:
        """The core of the project's last ICM labelling ([task id, row of the task, label word] per row):
        the next labelling of the project reuses it, the human labels in place of its own (engine.core)."""
        self.db.q("INSERT INTO cores(project, core, model_version, updated) VALUES (?,?,?,?) ON CONFLICT(project) "
                  "DO UPDATE SET core=excluded.core, model_version=excluded.model_version, updated=excluded.updated",
                  (project, json.dumps(core), model_version, time.time()))

    def core(self, project: int) -> list | None:
        rows = self.db.q("SELECT core FROM cores WHERE project=?", (project,))
        return json.loads(rows[0]["core"]) if rows else None

    def credentials(self, project: int, url: str | None, api_key: str | None) -> Credentials | None:
        """Where a job talks to Label Studio for `project`, given the configured url/api_key, or None.

        Configured URL: always that URL; its token is the configured one, else a /setup token given for
        that same origin. No configured URL: the /setup hostname with the token that came with it (a
        configured API key is never sent to a host that a client named).
        """
        known = self.get_project(project) or {}
        host, token = known.get("hostname"), known.get("access_token")
        if url:
            if api_key:
                return Credentials(url, api_key)
            if token and origin(host) is not None and origin(host) == origin(url):
                return Credentials(url, token)
            return None
        if host and token and origin(host) is not None:
            return Credentials(host, token)
        return None


def webhook_secret_file(model_dir: str | Path) -> Path:
    return Path(model_dir) / "webhook_secret"


def load_or_create_webhook_secret(model_dir: str | Path) -> str:
    """A random secret (not derived from any password), made once and kept 0600 in MODEL_DIR/webhook_secret."""
    path = webhook_secret_file(model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        secret = path.read_text().strip()
        if secret:
            os.chmod(path, 0o600)
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(24)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return secret
