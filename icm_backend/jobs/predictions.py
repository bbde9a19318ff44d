"""The prediction cache: what a job computed per (project, task, model version), and whether it has
been delivered to Label Studio (`pushed`), so /predict answers from it and a crash re-sends only
what LS has not stored.

Exactly once: a prediction reaches LS by one of two roads, a /predict reply (LS stores what it gets) or
the job's bulk import. Each road first *claims* the row atomically: `pushed` goes 0 -> 2 (the job is
sending it; settled to 1 or back to 0 once LS answered, or after a crash by asking LS) or 0 -> 1 (a
/predict reply carries it). A row another road holds is never taken."""

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
    pushed INTEGER NOT NULL DEFAULT 0,  -- 0 not delivered, 1 delivered, 2 a bulk import is under way
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

    NOT_SENT, SENT, SENDING = 0, 1, 2

    def claim_for_import(self, project: int, model_version: str, limit: int) -> dict[int, dict]:
        """Up to `limit` undelivered predictions with a non-empty result, marked SENDING in one transaction."""
        with self.db.lock:
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                rows = self.db.conn.execute(
                    "SELECT task_id, item FROM predictions WHERE project=? AND model_version=? AND pushed=0 "
                    "ORDER BY task_id", (project, model_version)).fetchall()
                out = {}
                for r in rows:
                    item = json.loads(r["item"])
                    if item.get("result"):
                        out[r["task_id"]] = item
                        if len(out) >= limit:
                            break
                self.db.conn.executemany("UPDATE predictions SET pushed=2 WHERE project=? AND model_version=? "
                                         "AND task_id=?", [(project, model_version, t) for t in out])
                self.db.conn.execute("COMMIT")
            except Exception:
                self.db.conn.execute("ROLLBACK")
                raise
        return out

    def in_flight(self, project: int, model_version: str) -> list[int]:
        """Task ids a bulk import was sending when it was interrupted (their fate is LS's to tell)."""
        return [r["task_id"] for r in self.db.q(
            "SELECT task_id FROM predictions WHERE project=? AND model_version=? AND pushed=2",
            (project, model_version))]

    def settle(self, project: int, model_version: str, delivered: list[int], not_delivered: list[int]) -> None:
        with self.db.lock:
            self.db.conn.executemany("UPDATE predictions SET pushed=? WHERE project=? AND model_version=? "
                                     "AND task_id=?",
                                     [(1, project, model_version, t) for t in delivered]
                                     + [(0, project, model_version, t) for t in not_delivered])

    def take_for_reply(self, project: int, model_version: str, task_ids: list[int]) -> dict[int, dict]:
        """Stored predictions a /predict reply may carry (LS will store them): undelivered ones are marked
        delivered in the same transaction; ones a bulk import is sending are left out (LS gets them from it)."""
        out: dict[int, dict] = {}
        ids = list(task_ids)
        with self.db.lock:
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                for i in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
                    chunk = ids[i:i + 500]
                    marks = ",".join("?" * len(chunk))
                    rows = self.db.conn.execute(
                        f"SELECT task_id, item FROM predictions WHERE project=? AND model_version=? "
                        f"AND pushed IN (0, 1) AND task_id IN ({marks})", (project, model_version, *chunk)).fetchall()
                    for r in rows:
                        item = json.loads(r["item"])
                        if item.get("result"):
                            out[r["task_id"]] = item
                    self.db.conn.execute(
                        f"UPDATE predictions SET pushed=1 WHERE project=? AND model_version=? AND pushed=0 "
                        f"AND task_id IN ({marks})", (project, model_version, *chunk))
                self.db.conn.execute("COMMIT")
            except Exception:
                self.db.conn.execute("ROLLBACK")
                raise
        return out

    def delivery_counts(self, project: int, model_version: str) -> dict[int, int]:
        return {r["pushed"]: r["n"] for r in self.db.q(
            "SELECT pushed, COUNT(*) n FROM predictions WHERE project=? AND model_version=? GROUP BY pushed",
            (project, model_version))}

    def count_predictions(self) -> int:
        return self.db.q("SELECT COUNT(*) n FROM predictions")[0]["n"]
