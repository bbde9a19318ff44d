"""`icm-backend jobs`: list the backend's jobs and their progress, or cancel one.

    icm-backend jobs                      # jobs in MODEL_DIR's store (works while the server runs)
    icm-backend jobs --project 3 --json
    icm-backend jobs --cancel 7
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from icm_backend.errors import InputError


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("jobs", help="list background jobs (ICM, training) and their progress",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=os.environ.get("MODEL_DIR") or "./data/server")
    p.add_argument("--project", type=int)
    p.add_argument("--status", choices=["queued", "running", "done", "failed", "cancelled"])
    p.add_argument("--cancel", type=int, metavar="JOB_ID", help="ask a job to stop (it stops at its next step)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def run(args) -> int:
    from icm_backend.server.config import ServerConfig
    from icm_backend.jobs.db import Database
    from icm_backend.jobs.queue import JobStore

    db = ServerConfig(model_dir=Path(args.model_dir)).db_path
    if not db.exists():
        raise InputError(f"--model-dir {args.model_dir}: no job store there ({db.name} missing)")
    store = JobStore(Database(db))
    if args.cancel is not None:
        job = store.request_cancel(args.cancel)
        if job is None:
            raise InputError(f"--cancel {args.cancel}: no such job")
        print(f"job {job.id}: {job.status}{' (cancel requested)' if job.status == 'running' else ''}")
        return 0
    jobs = store.list_jobs(project=args.project, status=args.status)
    if args.json:
        for j in jobs:
            print(json.dumps(j.to_json()))
        return 0
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'id':>4}  {'kind':<6} {'project':>7}  {'status':<9} {'progress':>13}  {'updated':<19}  message")
    for j in jobs:
        prog = f"{j.done}/{j.total} {100 * j.done / j.total:3.0f}%" if j.total else "-"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.updated))
        msg = j.error or j.message
        print(f"{j.id:>4}  {j.kind:<6} {str(j.project):>7}  {j.status:<9} {prog:>13}  {when}  {msg[:80]}")
    return 0
