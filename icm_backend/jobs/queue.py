"""Persistent background jobs (SQLite under MODEL_DIR) and the single worker thread that runs them.

Generic on purpose: a job has a `kind` ("icm", "train", ...) and a handler registered for that kind;
the store, progress, cancel and restart handling are shared. A job that was running when the process
died is put back in the queue at start-up; its handler resumes from its own checkpoint files.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field, fields as dc_fields
from pathlib import Path
from typing import Callable

from icm_backend.jobs.db import Database

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    project INTEGER,
    model_version TEXT,
    status TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT '{}',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
"""

# Every column but params (Job.params says why)
_COLUMNS = ("id, kind, project, model_version, status, done, total, message, error, state, cancel_requested, "
            "restarts, created, updated")


class QueueFull(Exception):
    """submit() refused: too many jobs queued or running (all projects, or this project)."""


class JobCancelled(Exception):
    """Raised inside a handler (via JobContext.check) when someone cancelled the job."""


@dataclass
class Job:
    id: int
    kind: str
    project: int | None
    model_version: str | None
    status: str
    done: int = 0
    total: int = 0
    message: str = ""
    error: str = ""
    # The job's input (for an ICM job, every task's data: megabytes on a big project). Read only for the
    # handler that runs the job and where asked (JobStore.get_job(with_params=True)); None elsewhere: a
    # status poll parsing it costs the running job its CPU (a 10,000-task job polled 5 times a second
    # ran its chunks at half speed).
    params: dict | None = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    cancel_requested: bool = False
    restarts: int = 0
    created: float = 0.0
    updated: float = 0.0

    def to_json(self) -> dict:
        # not asdict: it deep-copies params (a task snapshot: big, and not progress) only to drop them
        d = {f.name: getattr(self, f.name) for f in dc_fields(self) if f.name != "params"}
        d["progress"] = round(self.done / self.total, 4) if self.total else 0.0
        return d


class JobStore:
    """The jobs table: create, read, update, cancel, requeue after a restart."""

    def __init__(self, db: Database):
        self.db = db
        db.script(SCHEMA)

    def create_job(self, kind: str, project: int | None, model_version: str | None, params: dict) -> Job:
        now = time.time()
        with self.db.lock:
            cur = self.db.conn.execute(
                "INSERT INTO jobs(kind, project, model_version, status, params, created, updated) "
                "VALUES (?,?,?,?,?,?,?)", (kind, project, model_version, "queued", json.dumps(params), now, now))
            return self.get_job(cur.lastrowid, with_params=True)

    def get_job(self, job_id: int, with_params: bool = False) -> Job | None:
        rows = self.db.q(f"SELECT {'*' if with_params else _COLUMNS} FROM jobs WHERE id=?", (job_id,))
        return _job(rows[0]) if rows else None

    def list_jobs(self, project: int | None = None, status: str | None = None, limit: int = 100) -> list[Job]:
        sql, args = f"SELECT {_COLUMNS} FROM jobs WHERE 1=1", []
        if project is not None:
            sql += " AND project=?"
            args.append(project)
        if status:
            sql += " AND status=?"
            args.append(status)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [_job(r) for r in self.db.q(sql, tuple(args))]

    def active_job(self, kind: str, project: int | None, model_version: str | None) -> Job | None:
        rows = self.db.q(f"SELECT {_COLUMNS} FROM jobs WHERE kind=? AND project IS ? AND model_version IS ? AND status IN "
                       "('queued','running') ORDER BY id LIMIT 1", (kind, project, model_version))
        return _job(rows[0]) if rows else None

    def next_queued(self) -> Job | None:
        rows = self.db.q("SELECT * FROM jobs WHERE status='queued' ORDER BY id LIMIT 1")
        return _job(rows[0]) if rows else None

    def cancel_requested(self, job_id: int) -> bool:
        rows = self.db.q("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,))
        return bool(rows and rows[0]["cancel_requested"])

    def update_job(self, job_id: int, **fields) -> None:
        if "state" in fields:
            fields["state"] = json.dumps(fields["state"])
        fields["updated"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.q(f"UPDATE jobs SET {cols} WHERE id=?", (*fields.values(), job_id))

    def request_cancel(self, job_id: int) -> Job | None:
        job = self.get_job(job_id)
        if job is None:
            return None
        if job.status == "queued":
            self.update_job(job_id, status="cancelled", cancel_requested=1, message="cancelled before start")
        elif job.status == "running":
            self.update_job(job_id, cancel_requested=1)
        return self.get_job(job_id)

    def requeue_interrupted(self) -> list[Job]:
        """At start-up: jobs left 'running' by a dead process go back to the queue (or to cancelled)."""
        rows = self.db.q(f"SELECT {_COLUMNS} FROM jobs WHERE status='running'")
        for r in rows:
            if r["cancel_requested"]:
                self.update_job(r["id"], status="cancelled", message="cancelled (process restarted)")
            else:
                self.update_job(r["id"], status="queued", restarts=r["restarts"] + 1,
                                message="resuming after a restart")
        return [_job(r) for r in rows]

    def active_counts(self, project: int | None, exclude: tuple[str, ...] = ()) -> tuple[int, int]:
        """(active jobs in all, active jobs of `project`), jobs of the `exclude` kinds not counted."""
        marks = ",".join("?" * len(exclude)) or "''"
        rows = self.db.q("SELECT COUNT(*) n, COALESCE(SUM(project IS ?), 0) p FROM jobs WHERE status IN "
                         f"('queued','running') AND kind NOT IN ({marks})", (project, *exclude))
        return rows[0]["n"], rows[0]["p"]

    def counts(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in self.db.q("SELECT status, COUNT(*) n FROM jobs GROUP BY status")}

def _job(r: sqlite3.Row) -> Job:
    return Job(id=r["id"], kind=r["kind"], project=r["project"], model_version=r["model_version"],
               status=r["status"], done=r["done"], total=r["total"], message=r["message"], error=r["error"],
               params=json.loads(r["params"]) if "params" in r.keys() else None, state=json.loads(r["state"]),
               cancel_requested=bool(r["cancel_requested"]), restarts=r["restarts"],
               created=r["created"], updated=r["updated"])


@dataclass
class JobContext:
    """What a handler gets: its job, progress reporting, cancel checks, a place for checkpoint files."""

    job: Job
    store: JobStore
    workdir: Path

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.check()
        self.job.done, self.job.total = done, total
        self.store.update_job(self.job.id, done=done, total=total, message=message[:500])
        log.info("job %d (%s, project %s): %d/%d %s", self.job.id, self.job.kind, self.job.project,
                 done, total, message)

    def save_state(self, state: dict) -> None:
        self.job.state = state
        self.store.update_job(self.job.id, state=state)

    def check(self) -> None:
        if self.store.cancel_requested(self.job.id):
            raise JobCancelled()


Handler = Callable[[JobContext], str | None]  # returns a final message


class JobRunner:
    """One worker thread: jobs run one at a time (one model, two CPU cores: parallel jobs only thrash)."""

    def __init__(self, store: JobStore, workroot: Path, handlers: dict[str, Handler] | None = None,
                 poll_s: float = 0.5):
        self.store = store
        self.workroot = Path(workroot)
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.poll_s = poll_s
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self.max_active: int | None = None  # queued + running jobs, all projects (None = no limit)
        self.max_active_per_project: int | None = None
        # Kinds outside the limits: light bookkeeping that coalesces itself (at most one queued per project,
        # e.g. the accept report's refresh on annotation events); counted, they would refuse a user's training.
        self.unlimited_kinds: set[str] = set()

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    def submit(self, kind: str, project: int | None, model_version: str | None, params: dict) -> Job:
        if kind not in self.handlers:
            raise ValueError(f"kind: no job handler registered for {kind!r}")
        with self._submit_lock:
            total, mine = self.store.active_counts(project, tuple(sorted(self.unlimited_kinds)))
            if kind in self.unlimited_kinds:
                total = mine = -1  # never refused
            if self.max_active is not None and total >= self.max_active:
                raise QueueFull(f"job queue full: {total} jobs queued or running (ICM_MAX_QUEUED_JOBS="
                                f"{self.max_active}); retry when one finishes")
            if self.max_active_per_project is not None and mine >= self.max_active_per_project:
                raise QueueFull(f"project {project} has {mine} jobs queued or running "
                                f"(ICM_MAX_QUEUED_JOBS_PER_PROJECT={self.max_active_per_project})")
            job = self.store.create_job(kind, project, model_version, params)
        log.info("job %d queued: %s for project %s (%s)", job.id, kind, project, model_version)
        self.ensure_started()
        self._wake.set()
        return job

    def ensure_started(self) -> None:
        """Idempotent. Called lazily: the app may be built before a fork (a pre-forking front), and a
        thread started in the master would not exist in the worker."""
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            for job in self.store.requeue_interrupted():
                log.info("job %d (%s) was interrupted by a restart; resuming", job.id, job.kind)
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="icm-job-runner", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.store.next_queued()
            if job is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        handler = self.handlers.get(job.kind)
        if handler is None:
            self.store.update_job(job.id, status="failed", error=f"no handler for kind {job.kind!r}")
            return
        self.store.update_job(job.id, status="running")
        job.status = "running"
        ctx = JobContext(job=job, store=self.store, workdir=self.workroot / f"job-{job.id}")
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            message = handler(ctx) or "done"
            self.store.update_job(job.id, status="done", message=message)
            log.info("job %d done in %.1fs: %s", job.id, time.monotonic() - t0, message)
        except JobCancelled:
            self.store.update_job(job.id, status="cancelled", message="cancelled")
            log.info("job %d cancelled", job.id)
        except Exception as exc:  # a job failure must never kill the worker thread
            log.exception("job %d failed", job.id)
            self.store.update_job(job.id, status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """For tests and benches: block until no job is queued or running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.store.counts()
            if not any(counts.get(s) for s in ACTIVE):
                return True
            time.sleep(0.05)
        return False
