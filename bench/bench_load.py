"""Load bench for issue 12: a real `icm-backend serve` under mixed load while an ICM job runs, with slow clients.

    flock /tmp/icm-cpu.lock python bench/bench_load.py                  # smollm2-135m, 60 s
    python bench/bench_load.py --seconds 20 --clients 8 --slow 4        # quicker look

1. starts `icm-backend serve` (real HTTP front, real model ICM_MODEL, default smollm2-135m) on a fresh MODEL_DIR
   whose store already holds predictions for project 1 (what a finished job leaves);
2. starts an ICM job: POST /predict of --job-tasks SST-2 tasks for project 2 (no Label Studio: the job labels
   the request's tasks, --shard at a time), waits until it runs with the model loaded, lets it warm up
   (--warmup s), then measures the job alone for --control s (its own memory growth, no clients);
   memory "before" = server RSS then;
3. for --seconds: --clients threads, each on its own keep-alive connection, mixing GET /health (40 %),
   POST /setup (30 %) and POST /predict of 20 stored tasks (30 %); plus --slow clients that open a socket,
   send half a request, and hold it (reopening when the server closes it);
4. memory "after" = server RSS 5 s after the load stops (job still running); then cancels the job and times it.
Prints one table: requests, non-2xx, 5xx, p50/p99/max latency per route, memory, and the targets
(/health p99 < 100 ms, /setup p99 < 1 s, zero 5xx, memory within 10 %).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from icm_backend.jobs.db import Database  # noqa: E402
from icm_backend.jobs.predictions import PredictionStore  # noqa: E402

XML = """<View><Text name="text" value="$text"/>
<Choices name="sentiment" toName="text"><Choice value="Positive"/><Choice value="Negative"/></Choices></View>"""


def sst2(n: int, start_id: int) -> list[dict]:
    path = REPO / "data" / "sst2" / "dev.tsv"
    lines = path.read_text().splitlines()[1:]
    return [{"id": start_id + i, "data": {"text": lines[i % len(lines)].split("\t")[0].strip()}} for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    r = conn.getresponse()
    raw = r.read()
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, {}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--slow", type=int, default=16)
    ap.add_argument("--threads", type=int, default=8, help="server threads (THREADS)")
    ap.add_argument("--job-tasks", type=int, default=400)
    ap.add_argument("--store-tasks", type=int, default=200)
    ap.add_argument("--model", default=os.environ.get("ICM_MODEL", "smollm2-135m"))
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds of job before anything is measured")
    ap.add_argument("--control", type=float, default=30.0,
                    help="then seconds of job alone (no clients): its own memory growth, to set the load's apart")
    ap.add_argument("--shard", type=int, default=32, help="ICM_CHUNK_SIZE of the running job")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="icm-bench-load-"))
    model_dir = work / "model"
    version = "icm-" + args.model
    store = PredictionStore(Database(model_dir / "icm_backend.sqlite3"))
    item = {"result": [{"from_name": "sentiment", "to_name": "text", "type": "choices",
                        "value": {"choices": ["Positive"]}, "score": 0.9}], "score": 0.9, "model_version": version}
    store.put_predictions(1, version, {i: item for i in range(1, args.store_tasks + 1)}, pushed=True)
    store.db.conn.close()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "BASIC_AUTH_"))}
    env.update({"MODEL_DIR": str(model_dir), "ICM_MODEL": args.model, "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": str(REPO), "LOG_LEVEL": "WARNING", "ICM_CHUNK_SIZE": str(args.shard)})
    log = open(work / "backend.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "icm_backend.cli", "serve", "--port", str(port),
                             "--threads", str(args.threads)], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=str(REPO), start_new_session=True)
    server = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if call(http.client.HTTPConnection("127.0.0.1", port, timeout=2), "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"backend did not start; see {work / 'backend.log'}")
            time.sleep(0.3)
        def ctl_call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
            # a fresh connection each time: an idle one is closed by the server after ICM_CHANNEL_TIMEOUT_S
            return call(http.client.HTTPConnection("127.0.0.1", port, timeout=120), method, path, body)

        ctl_call("POST", "/setup", {"project": "1.1", "schema": XML})
        ctl_call("POST", "/setup", {"project": "2.1", "schema": XML})
        t0 = time.monotonic()
        code, reply = ctl_call("POST", "/predict", {"tasks": sst2(args.job_tasks, 100_000), "project": 2})
        print(f"job-starting /predict of {args.job_tasks} tasks: HTTP {code} in {time.monotonic() - t0:.1f}s",
              flush=True)
        job_id = None
        while time.monotonic() - t0 < 300:
            jobs = ctl_call("GET", "/jobs")[1]["jobs"]
            health = ctl_call("GET", "/health")[1]
            if jobs and jobs[0]["status"] == "running" and health.get("model_loaded"):
                job_id = jobs[0]["id"]
                break
            time.sleep(1)
        if job_id is None:
            raise SystemExit("the ICM job never ran with the model loaded")
        time.sleep(args.warmup)  # the job's own working set grows at first: measure the load, not that
        rss_job_start = server.memory_info().rss
        time.sleep(args.control)
        rss_before = server.memory_info().rss
        load_before = os.getloadavg()[0]

        stop = threading.Event()
        lat: dict[str, list[float]] = {"/health": [], "/setup": [], "/predict": []}
        codes: dict[str, dict[int, int]] = {k: {} for k in lat}
        lock = threading.Lock()
        slow_opened = [0]

        def client(seed: int) -> None:
            rng = random.Random(seed)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while not stop.is_set():
                x = rng.random()
                if x < 0.4:
                    route, method, body = "/health", "GET", None
                elif x < 0.7:
                    route, method, body = "/setup", "POST", {"project": "1.1", "schema": XML,
                                                            "extra_params": None}
                else:
                    start = rng.randint(1, args.store_tasks - 20)
                    route, method, body = "/predict", "POST", {
                        "tasks": [{"id": i, "data": {"text": f"t{i}"}} for i in range(start, start + 20)],
                        "project": "1.1"}
                t = time.perf_counter()
                try:
                    code, _ = call(conn, method, route, body)
                except (OSError, http.client.HTTPException):
                    code = 0
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                dt = time.perf_counter() - t
                with lock:
                    lat[route].append(dt)
                    codes[route][code] = codes[route].get(code, 0) + 1

        def slow(seed: int) -> None:
            while not stop.is_set():
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    s.sendall(b"POST /setup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 100\r\n\r\n{\"proj" if seed % 2 else b"GET /health HTTP/1.1\r\nHost")
                    with lock:
                        slow_opened[0] += 1
                    s.settimeout(1.0)
                    while not stop.is_set():
                        try:
                            if s.recv(1) == b"":
                                break  # the server closed it (channel timeout): open another
                        except socket.timeout:
                            continue
                    s.close()
                except OSError:
                    time.sleep(0.5)

        threads = [threading.Thread(target=slow, args=(i,), daemon=True) for i in range(args.slow)]
        threads += [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join(35)
        load_after = os.getloadavg()[0]
        time.sleep(5)
        rss_after = server.memory_info().rss

        t = time.monotonic()
        ctl_call("POST", f"/jobs/{job_id}/cancel")
        while ctl_call("GET", f"/jobs/{job_id}")[1]["status"] not in ("cancelled", "done", "failed"):
            if time.monotonic() - t > 180:
                break
            time.sleep(0.2)
        cancel_s = time.monotonic() - t
        job = ctl_call("GET", f"/jobs/{job_id}")[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(20)

    print(f"\nbench_load: {args.clients} clients + {args.slow} slow clients for {args.seconds:.0f}s, server "
          f"{args.threads} threads, model {args.model}, ICM job over {args.job_tasks} tasks running throughout; "
          f"{os.cpu_count()} CPUs, load avg {load_before:.1f} before / {load_after:.1f} at the end")
    print(f"{'route':<10}{'requests':>9}{'non-2xx':>9}{'5xx':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  codes")
    total_5xx = 0
    for route, values in lat.items():
        ms = [v * 1000 for v in values]
        bad = sum(n for c, n in codes[route].items() if not 200 <= c < 300)
        n5 = sum(n for c, n in codes[route].items() if c >= 500 or c == 0)
        total_5xx += n5
        print(f"{route:<10}{len(values):>9}{bad:>9}{n5:>6}{pct(ms, .5):>9.1f}{pct(ms, .99):>9.1f}"
              f"{max(ms, default=float('nan')):>9.1f}  {dict(sorted(codes[route].items()))}")
    mb = 1024 * 1024
    growth = (rss_after - rss_before) / rss_before
    job_alone = (rss_before - rss_job_start) / rss_job_start
    print(f"server RSS: {rss_before / mb:.0f} MiB before, {rss_after / mb:.0f} MiB after the load ({growth:+.1%}); "
          f"the job alone, no clients, {args.control:.0f}s just before: {job_alone:+.1%}; "
          f"slow-client sockets opened: {slow_opened[0]}; job {job_id} {job['status']} "
          f"{cancel_s:.1f}s after cancel ({job['done']}/{job['total']} tasks done)")
    h99 = pct([v * 1000 for v in lat["/health"]], .99)
    s99 = pct([v * 1000 for v in lat["/setup"]], .99)
    checks = [("/health p99 < 100 ms", h99 < 100), ("/setup p99 < 1 s", s99 < 1000), ("zero 5xx", total_5xx == 0),
              ("memory within 10 %", abs(growth) <= 0.10)]
    print("targets: " + "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks))
    print(f"(server log: {work / 'backend.log'})")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
