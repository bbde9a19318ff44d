"""Benchmark the Label Studio backend: /predict served from the store, and a whole-project job.

    ICM_MODEL=smollm2-135m python bench/bench_predict.py                 # real model, store-only job
    python bench/bench_predict.py --method icm --max-iters 40 --job-tasks 64
    python bench/bench_predict.py --fake                                  # plumbing only, no model

1. a job labels --tasks tasks (default 100); then POST /predict for those 100 tasks over real HTTP
   (werkzeug server thread), --repeats times: latency per task (target < 50 ms) — the LS
   "Retrieve predictions" path once a job has finished.
2. a whole-project job over --job-tasks tasks (default 256) of SST-2: wall time and tasks/s.
Prints one table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from icm_backend.server.app import create_app, get_backend  # noqa: E402
from icm_backend.server.config import ServerConfig  # noqa: E402
from icm_backend.server.model_host import ModelHost  # noqa: E402

CONFIG_XML = (REPO / "label_config" / "classify.xml").read_text()


def sst2_tasks(n: int, start_id: int = 1) -> list[dict]:
    path = REPO / "data" / "sst2" / "dev.tsv"
    lines = path.read_text().splitlines()[1:]
    return [{"id": start_id + i, "data": {"text": lines[i % len(lines)].split("\t")[0].strip()}} for i in range(n)]


def serve(app):
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_port}"


def run_job(app, project: int, tasks: list[dict]) -> tuple[float, dict]:
    backend = get_backend(app)
    t0 = time.perf_counter()
    job = backend.ensure_job(project, CONFIG_XML, tasks, backend.model_version())
    if not backend.runner.wait_idle(timeout=24 * 3600):
        raise RuntimeError("job did not finish")
    elapsed = time.perf_counter() - t0
    done = backend.jobs.get_job(job.id)
    if done.status != "done":
        raise RuntimeError(f"job {done.id} {done.status}: {done.error}")
    return elapsed, done.state


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--job-tasks", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--method", default="bootstrap", help="job method: icm, bootstrap, zero-shot, random-fewshot")
    ap.add_argument("--max-iters", type=int, default=0, help="ICM search iterations per shard (0 = engine default)")
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--fake", action="store_true", help="fake engine (tests/fake_labeler.py): plumbing only")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ICM_MODEL", "smollm2-135m")
    tmp = Path(tempfile.mkdtemp(prefix="icm-bench-"))
    cfg = ServerConfig(model_dir=tmp, model_name=os.environ["ICM_MODEL"], method=args.method,
                       max_iters=args.max_iters or None, chunk_size=args.shard_size)
    host = None
    if args.fake:
        sys.path.insert(0, str(REPO / "tests"))
        from fake_labeler import fake_label_rows

        host = ModelHost(cfg, labeler=fake_label_rows, loader=lambda name: name)
    app = create_app(cfg, host=host)
    backend = get_backend(app)
    srv, url = serve(app)
    rows = []
    try:
        t0 = time.perf_counter()
        if not args.fake:
            backend.host.model()
        rows.append(("model load", f"{time.perf_counter() - t0:.1f} s", cfg.model_name if not args.fake else "fake"))

        # 1. /predict for tasks a job already labelled
        tasks = sst2_tasks(args.tasks)
        job_s, _ = run_job(app, 1, tasks)
        body = {"tasks": tasks, "project": "1.0", "label_config": CONFIG_XML}
        session = requests.Session()
        lat = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            r = session.post(url + "/predict", json=body, timeout=60)
            lat.append(time.perf_counter() - t0)
            assert r.ok and len(r.json()["results"]) == len(tasks)
            assert all(x["model_version"] == backend.model_version() for x in r.json()["results"])
        per_task_ms = [1000 * x / len(tasks) for x in lat]
        rows.append((f"job ({args.method}) to fill the store", f"{job_s:.1f} s", f"{len(tasks)} tasks"))
        rows.append((f"/predict {len(tasks)} stored tasks, median", f"{1000 * statistics.median(lat):.1f} ms",
                     f"{statistics.median(per_task_ms):.3f} ms/task (target < 50)"))
        rows.append((f"/predict {len(tasks)} stored tasks, max of {args.repeats}", f"{1000 * max(lat):.1f} ms",
                     f"{max(per_task_ms):.3f} ms/task"))

        # 2. whole-project job
        big = sst2_tasks(args.job_tasks, start_id=10_000)
        big_s, state = run_job(app, 2, big)
        rows.append((f"whole-project job ({args.method}), {len(big)} tasks", f"{big_s:.1f} s",
                     f"{len(big) / big_s:.2f} tasks/s, {state.get('written', 0)} written, "
                     f"{state.get('flagged', 0)} flagged"))
    finally:
        srv.shutdown()
        backend.runner.stop()

    w = [max(len(r[i]) for r in rows + [("what", "time", "notes")]) for i in range(3)]
    print(f"\nbench_predict  model={cfg.model_name if not args.fake else 'fake'}  method={args.method}  "
          f"cpus={os.cpu_count()}")
    print(f"{'what':<{w[0]}}  {'time':>{w[1]}}  notes")
    print("-" * (sum(w) + 4))
    for a, b, c in rows:
        print(f"{a:<{w[0]}}  {b:>{w[1]}}  {c}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
