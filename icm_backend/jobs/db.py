"""One SQLite file under MODEL_DIR, shared by the job queue, the prediction cache and the project
settings (each owns its table). WAL so readers never block; one short transaction per call."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path


class Database:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Holds LS tokens: owner-only. SQLite gives the -wal/-shm files the database file's mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for p in (self.path, self.path.with_name(self.path.name + "-wal"), self.path.with_name(self.path.name + "-shm")):
            if p.exists():
                os.chmod(p, 0o600)
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        with self.lock:
            self.conn.execute("PRAGMA journal_mode=WAL")

    def q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    def script(self, sql: str) -> None:
        with self.lock:
            self.conn.executescript(sql)
