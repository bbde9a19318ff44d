"""Benchmark whole Label Studio projects: what "Retrieve predictions" and the job behind it cost a user.

    # 1. scale, on a REAL Label Studio 1.23.2 (.venv-ls) with the backend as a real server:
    #    2,000 SST-2 texts (dev + test), ICM_METHOD=zero-shot, smollm2-135m
    flock /tmp/icm-cpu.lock python bench/bench_project.py scale
    #    (--method icm: the default job, ICM on a core and one pass for the rest, in chunks of --shard-size)
    #    the default ICM job on the default model, 10,000 tasks, the backend killed -9 after its first write:
    flock /tmp/icm-cpu.lock python bench/bench_project.py scale --tasks 10000 --model '' --method icm \
        --kill-after-tasks 1
    # 2. the table
    python bench/bench_project.py table

Results accumulate in --workdir (default /tmp/icm-bench-project/results.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench_scale import machine  # bench/ is on sys.path for a script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

CONFIG_XML = (REPO / "label_config" / "classify.xml").read_text()
DATA = REPO / "data"
LABELS = {"1": "Positive", "0": "Negative"}


def sst2(split: str) -> list[tuple[str, str | None]]:
    """(text, gold label or None). test.tsv has no gold labels (its label column is a row index)."""
    lines = (DATA / "sst2" / f"{split}.tsv").read_text().splitlines()[1:]
    out = []
    for line in lines:
        text, label = line.rsplit("\t", 1)
        out.append((text.strip(), LABELS.get(label.strip()) if split == "dev" else None))
    return out


def load_results(workdir: Path) -> dict:
    f = workdir / "results.json"
    return json.loads(f.read_text()) if f.exists() else {}


def save_results(workdir: Path, key: str, value) -> None:
    res = load_results(workdir)
    res[key] = value
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(res, indent=1))


def label_of(item: dict | None) -> str | None:
    for r in (item or {}).get("result") or []:
        if r.get("type") == "choices" and r.get("from_name") == "label":
            return r["value"]["choices"][0]
    return None


# -- 1. scale on a real Label Studio -----------------------------------------------------------------
def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in process group `pgid` (LS and its workers, the
    backend): who used the 2 cores while the job ran."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(f[2]) == pgid:  # fields after the name: state ppid pgrp ... utime(11) stime(12)
            total += (int(f[11]) + int(f[12])) / tick
    return total


class CpuMeter:
    """Samples the CPU time of Label Studio, the backend (each start its own group, added up) and this
    bench every `every` seconds; `mark(name)` records the totals at a point of the run."""

    def __init__(self, ls_pgid: int, every: float = 10.0):
        self.ls, self.backends, self.every = ls_pgid, {}, every
        self.backend_pgid: int | None = None
        self.t0 = time.monotonic()
        self.samples: list[dict] = []
        self.marks: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def now(self) -> dict:
        if self.backend_pgid:
            self.backends[self.backend_pgid] = group_cpu_s(self.backend_pgid) or self.backends.get(
                self.backend_pgid, 0.0)  # a killed backend keeps its last reading
        t = os.times()
        return {"t": round(time.monotonic() - self.t0, 1), "label_studio_cpu_s": round(group_cpu_s(self.ls), 1),
                "backend_cpu_s": round(sum(self.backends.values()), 1),
                "bench_cpu_s": round(t.user + t.system, 1), "load1": os.getloadavg()[0]}

    def mark(self, name: str) -> None:
        self.marks[name] = self.now()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(self.now())

    def stop(self) -> None:
        self._stop.set()


def scale(args) -> None:
    from backend_process import BackendProcess, wait_for
    from label_studio_harness import LabelStudioServer, free_port

    work = Path(tempfile.mkdtemp(prefix="bench-project-"))
    texts = sst2("dev") + sst2("test")
    data = [texts[i % len(texts)] if i < len(texts) else (f"{texts[i % len(texts)][0]} ({i})", None)
            for i in range(args.tasks)]  # past 2,693 texts: repeats, marked so each task is its own
    gold = [g for _, g in data]
    print(f"starting Label Studio and the backend in {work} ...", flush=True)
    ls_server = LabelStudioServer.start(work / "ls")
    env = {"ICM_METHOD": args.method, "LABEL_STUDIO_URL": ls_server.url, "LABEL_STUDIO_API_KEY": ls_server.token,
           "LOG_LEVEL": "INFO"}
    if args.model:  # else the backend's default model, as a user gets it
        env["ICM_MODEL"] = args.model
    if args.shard_size:  # else the job's default chunk size
        env["ICM_CHUNK_SIZE"] = str(args.shard_size)
    backend = BackendProcess(port=free_port(), model_dir=work / "model", env=env)
    backend.start(timeout=300)
    cpu = CpuMeter(os.getpgid(ls_server.process.pid))
    cpu.backend_pgid = os.getpgid(backend.process.pid)
    ls = ls_server.client
    H = ls_server.headers
    out: dict = {"tasks": len(data), "model": args.model or "default", "method": args.method,
                 "chunk_size": args.shard_size or "default", "cpus": os.cpu_count(), "cpu": machine(),
                 "load_before": os.getloadavg()[0]}
    try:
        project = ls.projects.create(title=f"bench {len(data)}", label_config=CONFIG_XML)
        t0 = time.monotonic()
        ls.projects.import_tasks(id=project.id, request=[{"text": t} for t, _ in data])
        out["import_s"] = time.monotonic() - t0
        task_ids = sorted(t["id"] for t in _dm_tasks(ls_server, project.id, fields="task_only"))
        assert len(task_ids) == len(data), len(task_ids)
        ls.ml.create(url=backend.url, project=project.id, is_interactive=False, title="icm")
        version = requests.get(backend.url + "/health", timeout=5).json()["model_version"]

        def retrieve() -> float:
            t = time.monotonic()
            ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                              selected_items={"all": True, "excluded": []})
            return time.monotonic() - t

        t_start = time.monotonic()
        cpu.mark("retrieve")
        out["retrieve_first_s"] = retrieve()
        out["predict_server_s"] = _predict_seconds(backend.url)  # of which the backend's /predict
        if args.retrieve_only:
            save_results(args.workdir, f"retrieve-{len(data)}", out)
            print(json.dumps(out, indent=1))
            return
        job = wait_for(lambda: (requests.get(backend.url + "/jobs", timeout=5).json()["jobs"] or [None])[0],
                       30, "the job")
        job_url = f"{backend.url}/jobs/{job['id']}"
        first = wait_for(lambda: (lambda j: (j["status"] in ("done", "failed") or j["state"].get("written"))
                                  and j)(requests.get(job_url, timeout=5).json()), 3600, "the first shard")
        out["first_shard_s"] = time.monotonic() - t_start
        cpu.mark("first_predictions")
        if first["status"] == "running":
            out["retrieve_during_job_s"] = retrieve()  # LS sends every task still without a prediction
        if args.kill_after_tasks:  # the backend killed (-9) in the one-pass phase, then started again
            def tasks_written():
                j = requests.get(job_url, timeout=5).json()
                if j["status"] in ("done", "failed"):
                    raise RuntimeError(f"the job ended before the kill: {j['status']} {j['message']}")
                return j["state"].get("written", 0) >= args.kill_after_tasks and j
            j = wait_for(tasks_written, 6 * 3600, f"{args.kill_after_tasks} tasks written", every=0.5)
            cpu.mark("kill")
            backend.kill()
            out["killed_at_s"] = time.monotonic() - t_start
            out["killed_after_tasks"] = j["state"]["written"]
            out["predictions_at_kill"] = len(ls.predictions.list(project=project.id))
            print(f"  killed -9 after {j['state']['written']} tasks written ({out['predictions_at_kill']} predictions "
                  "in LS)", flush=True)
            backend.start(timeout=300)
            cpu.backend_pgid = os.getpgid(backend.process.pid)
            out["restarted_at_s"] = time.monotonic() - t_start
        last_print = 0.0

        def finished():
            nonlocal last_print
            j = requests.get(job_url, timeout=5).json()
            if time.monotonic() - last_print > 30:
                print(f"  job {j['id']}: {j['status']} {j['done']}/{j['total']} {j['message'][:80]}", flush=True)
                last_print = time.monotonic()
            if j["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"job {j['status']}: {j['error']}")
            if "all_predictions_s" not in out and j["state"].get("written", 0) >= len(data):
                out["all_predictions_s"] = time.monotonic() - t_start  # then the accept report's marks
                cpu.mark("all_predictions")
                print(f"  all {len(data)} predictions written after {_dur(out['all_predictions_s'])}", flush=True)
            return j["status"] == "done" and j
        job = wait_for(finished, 6 * 3600, "the job", every=1.0)
        out["job_s"] = time.monotonic() - t_start
        cpu.mark("job_done")
        cpu.stop()
        out["cpu_marks"] = cpu.marks
        args.workdir.mkdir(parents=True, exist_ok=True)
        (args.workdir / f"cpu-samples-{len(data)}.jsonl").write_text(
            "".join(json.dumps(x) + "\n" for x in cpu.samples))
        out["job_message"] = job["message"]
        out["job_restarts"] = job.get("restarts")
        out["load_after"] = os.getloadavg()[0]

        # write-back: the job's own timings of each bulk import
        log_text = backend.log_path.read_text(errors="replace")
        writes = [(int(n), float(s)) for n, s in
                  re.findall(r"job \d+: (\d+) predictions written to Label Studio in ([\d.]+)s", log_text)]
        out["import_requests"] = len(writes)
        out["imported"] = sum(n for n, _ in writes)
        out["write_back_per_s"] = out["imported"] / max(1e-9, sum(s for _, s in writes))
        out["invalid_page_errors"] = ls_server.log_tail(10**9).count("Invalid page")

        # exactly once, the score column, accuracy on the dev part
        preds = ls.predictions.list(project=project.id)
        per_task: dict[int, int] = {}
        for p in preds:
            per_task[p.task] = per_task.get(p.task, 0) + 1
        out["predictions"] = len(preds)
        out["tasks_with_exactly_one"] = sum(1 for t in task_ids if per_task.get(t) == 1)
        out["versions"] = sorted({p.model_version for p in preds})
        proj = requests.get(f"{ls_server.url}/api/projects/{project.id}", headers=H, timeout=10).json()
        out["project_model_version_is_served"] = proj["model_version"] == version
        dm = _dm_tasks(ls_server, project.id, fields="all")
        out["score_column_filled"] = sum(1 for t in dm if t.get("predictions_score") is not None)
        by_task = {p.task: p for p in preds}
        right = [label_of({"result": by_task[tid].result}) == g for tid, g in zip(task_ids, gold)
                 if g is not None and tid in by_task]
        out["dev_accuracy"] = sum(right) / len(right) if right else None
        out["dev_tasks"] = len(right)
        out["retrieve_after_job_s"] = retrieve()
        out["predictions_after_second_retrieve"] = len(ls.predictions.list(project=project.id))
    finally:
        backend.stop()
        ls_server.stop()
    save_results(args.workdir, f"scale-{args.method}-{args.model or 'default'}-{len(data)}", out)
    print(json.dumps(out, indent=1))


def _predict_seconds(url: str) -> float | None:
    text = requests.get(url + "/metrics", timeout=10).text
    m = re.search(r'icm_http_seconds_total\{[^}]*route="/predict"[^}]*\} ([\d.e+-]+)', text)
    return float(m.group(1)) if m else None


def _dm_tasks(server, project: int, fields: str) -> list[dict]:
    out, page = [], 1
    while True:
        r = requests.get(server.url + "/api/tasks", headers=server.headers, timeout=120,
                         params={"project": project, "fields": fields, "page": page, "page_size": 1000})
        r.raise_for_status()
        body = r.json()
        out += body["tasks"]
        if len(out) >= body["total"] or not body["tasks"]:
            return out
        page += 1


# -- the table -------------------------------------------------------------------------------------
def table(args) -> None:
    res = load_results(args.workdir)
    rows = []
    for key, r in sorted(res.items()):
        if not key.startswith("scale-"):
            continue
        n = r["tasks"]
        chunk = r.get("chunk_size", r.get("shard_size"))
        rows += [(f"{n} tasks, {r['method']}, model {r['model']}", "", r.get("cpu", "CPU not recorded")),
                 ("  Retrieve predictions, first (job starts)", f"{r['retrieve_first_s']:.2f} s", "target < 10 s"),
                 ("  Retrieve while the job runs", f"{r.get('retrieve_during_job_s', float('nan')):.2f} s",
                  "LS sends every task still without a prediction"),
                 ("  Retrieve after the job", f"{r['retrieve_after_job_s']:.2f} s",
                  f"predictions after it: {r['predictions_after_second_retrieve']}"),
                 ("  first predictions visible in LS", _dur(r["first_shard_s"]), f"chunk = {chunk} tasks"),
                 ("  last prediction written (Retrieve -> all labelled)",
                  _dur(r["all_predictions_s"]) if "all_predictions_s" in r else "-",
                  f"{n / r['all_predictions_s']:.2f} tasks/s" if "all_predictions_s" in r else "not recorded"),
                 ("  job done (Retrieve -> done)", _dur(r["job_s"]),
                  "after the last prediction, the accept report's Data Manager marks")]
        # (the first 10,000-task run named the same count "killed_after_chunks": it was the tasks written)
        killed = r.get("killed_after_tasks", r.get("killed_after_chunks"))
        if killed:
            rows.append(("  backend killed -9 in the one-pass phase", _dur(r["killed_at_s"]),
                         f"after {killed} tasks written, {r['predictions_at_kill']} predictions in LS; "
                         f"job restarts {r.get('job_restarts')}"))
        rows += [("  write-back (bulk import)", f"{r['write_back_per_s']:.0f} pred/s",
                  f"{r['import_requests']} requests for {r['imported']} predictions"),
                 ("  tasks with exactly one prediction", f"{r['tasks_with_exactly_one']}/{n}",
                  f"{r['predictions']} predictions; versions {', '.join(r['versions'])}"),
                 ("  project model_version = served; score column filled",
                  f"{r['project_model_version_is_served']}", f"{r['score_column_filled']}/{n} tasks"),
                 ("  accuracy on the SST-2 dev part", f"{r['dev_accuracy']:.3f}", f"{r['dev_tasks']} tasks"),
                 ("  'Invalid page' errors in the LS log", f"{r['invalid_page_errors']}", "")]
    for key, r in sorted(res.items(), key=lambda kv: int(kv[0].split("-")[1]) if kv[0].startswith("retrieve-")
                         else 0):
        if key.startswith("retrieve-"):
            rows.append((f"{r['tasks']} tasks: Retrieve predictions (job starts)", f"{r['retrieve_first_s']:.2f} s",
                         f"of which the backend's /predict {r['predict_server_s']:.2f} s; the rest is LS"))
    w0 = max([len(a) for a, _, _ in rows] + [10])
    w1 = max([len(b) for _, b, _ in rows] + [5])
    print(f"\nbench_project  cpus={os.cpu_count()}")
    print(f"{'what':<{w0}}  {'value':>{w1}}  notes")
    print("-" * (w0 + w1 + 40))
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:>{w1}}  {c}")


def _dur(s: float) -> str:
    if s != s:
        return "n/a"
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s" if s < 120 else (f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "icm-bench-project")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("scale")
    a.add_argument("--tasks", type=int, default=2000)
    a.add_argument("--model", default="smollm2-135m", help="'' for the backend's default model")
    a.add_argument("--method", default="zero-shot")
    a.add_argument("--shard-size", type=int, default=None, help="ICM_CHUNK_SIZE (default: the job's own)")
    a.add_argument("--kill-after-tasks", type=int, default=0,
                   help="kill the backend (-9) once the job has written this many tasks (1: after its first write, "
                        "the core and the first chunk), start it again, check nothing is lost or written twice")
    a.add_argument("--retrieve-only", action="store_true", help="time the first Retrieve, then stop (no job wait)")
    sub.add_parser("table")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    {"scale": scale, "table": table}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
