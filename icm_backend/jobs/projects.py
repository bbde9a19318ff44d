"""Per-project settings that /setup told us: the label config and where Label Studio is."""

from __future__ import annotations

import time

from icm_backend.jobs.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    project INTEGER PRIMARY KEY,
    label_config TEXT,
    hostname TEXT,
    access_token TEXT,
    updated REAL NOT NULL
);
"""


class ProjectStore:
    def __init__(self, db: Database):
        self.db = db
        db.script(SCHEMA)

    def put_project(self, project: int, label_config: str | None, hostname: str | None,
                    access_token: str | None) -> None:
        self.db.q("INSERT INTO projects(project, label_config, hostname, access_token, updated) VALUES (?,?,?,?,?) "
                "ON CONFLICT(project) DO UPDATE SET label_config=COALESCE(excluded.label_config, label_config), "
                "hostname=COALESCE(excluded.hostname, hostname), "
                "access_token=COALESCE(excluded.access_token, access_token), updated=excluded.updated",
                (project, label_config, hostname, access_token, time.time()))

    def get_project(self, project: int) -> dict | None:
        rows = self.db.q("SELECT * FROM projects WHERE project=?", (project,))
        return dict(rows[0]) if rows else None
