"""The prediction cache: what a job computed per (project, task, model version), and whether it has
been written back to Label Studio (`pushed`), so /predict answers from it and a crash re-sends only
what LS has not stored."""

from __future__ import annotations

import json
import time

from icm_backend.jobs.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    project INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    item TEXT NOT NULL,
    pushed INTEGER NOT NULL DEFAULT 0,
    job_id INTEGER,
    created REAL NOT NULL,
    PRIMARY KEY (project, task_id, model_version)
);
"""


class PredictionStore:
    def __init__(self, db: Database):
        self.db = db
        db.script(SCHEMA)

    def put_predictions(self, project: int, model_version: str, items: dict[int, dict], job_id: int | None = None,
                        pushed: bool = False) -> None:
        now = time.time()
        with self.db.lock:
            self.db.conn.execute("BEGIN")
            try:
                self.db.conn.executemany(
                    "INSERT INTO predictions(project, task_id, model_version, item, pushed, job_id, created) "
                    "VALUES (?,?,?,?,?,?,?) ON CONFLICT(project, task_id, model_version) DO UPDATE SET "
                    "item=excluded.item, job_id=excluded.job_id",
                    [(project, tid, model_version, json.dumps(item), int(pushed), job_id, now)
                     for tid, item in items.items()])
                self.db.conn.execute("COMMIT")
            except Exception:
                self.db.conn.execute("ROLLBACK")
                raise

    def get_predictions(self, project: int, model_version: str, task_ids: list[int]) -> dict[int, dict]:
        out: dict[int, dict] = {}
        ids = list(task_ids)
        for i in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for r in self.db.q(f"SELECT task_id, item FROM predictions WHERE project=? AND model_version=? "
                             f"AND task_id IN ({marks})", (project, model_version, *chunk)):
                out[r["task_id"]] = json.loads(r["item"])
        return out

    def unpushed(self, project: int, model_version: str) -> dict[int, dict]:
        return {r["task_id"]: json.loads(r["item"]) for r in self.db.q(
            "SELECT task_id, item FROM predictions WHERE project=? AND model_version=? AND pushed=0",
            (project, model_version))}

    def mark_pushed(self, project: int, model_version: str, task_ids: list[int]) -> None:
        with self.db.lock:
            self.db.conn.executemany("UPDATE predictions SET pushed=1 WHERE project=? AND model_version=? AND task_id=?",
                                 [(project, model_version, t) for t in task_ids])

    def count_predictions(self) -> int:
        return self.db.q("SELECT COUNT(*) n FROM predictions")[0]["n"]
