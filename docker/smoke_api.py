"""The Label Studio side of docker/smoke.sh, standard library only (runs on the host, not in a container).

    smoke_api.py label STATE     create a project, import N SST-2 sentences, connect the backend,
                                 "Retrieve predictions" as the Data Manager action does, wait for the
                                 backend's job, check one scored prediction per task; write STATE (JSON)
    smoke_api.py recheck STATE   after a restart of the backend: the same predictions, none lost or
                                 duplicated, the job still known, and a second Retrieve adds nothing

Settings from the environment (smoke.sh sets them): LS_URL, LS_TOKEN, BACKEND_URL (the backend as the
host reaches it), BACKEND_URL_FROM_LS (as Label Studio reaches it), BASIC_AUTH_USER, BASIC_AUTH_PASS,
N_TASKS (20), JOB_TIMEOUT_S (1800). Prints one `key: value` line per measurement; exits 1 on a failed check.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = os.environ


class SmokeFailure(Exception):
    pass


def _call(url: str, method: str = "GET", body=None, headers: dict | None = None, timeout: float = 120):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        raise SmokeFailure(f"{method} {url}: HTTP {e.code}: {e.read()[:300].decode(errors='replace')}") from e
    return json.loads(raw) if raw.strip() else None


def ls(path: str, method: str = "GET", body=None, timeout: float = 120):
    # the legacy token LS created on its first start from LABEL_STUDIO_USER_TOKEN: nobody copied it
    return _call(ENV["LS_URL"].rstrip("/") + path, method, body, {"Authorization": f"Token {ENV['LS_TOKEN']}"}, timeout)


def backend(path: str):
    cred = base64.b64encode(f"{ENV['BASIC_AUTH_USER']}:{ENV['BASIC_AUTH_PASS']}".encode()).decode()
    return _call(ENV["BACKEND_URL"].rstrip("/") + path, headers={"Authorization": f"Basic {cred}"}, timeout=10)


def sst2_rows(n: int) -> list[tuple[str, str]]:
    """(text, gold label word) of the first n sample rows; only the text goes to Label Studio."""
    lines = (REPO / "icm_backend" / "samples" / "sst2_sample.tsv").read_text().splitlines()[1:]
    rows = [(t.strip(), "Positive" if g.strip() == "1" else "Negative")
            for t, g in (line.split("\t")[:2] for line in lines if line.strip())]
    if len(rows) < n:
        raise SmokeFailure(f"N_TASKS={n}: the sample has only {len(rows)} rows")
    return rows[:n]


def sst2_texts(n: int) -> list[str]:
    return [t for t, _ in sst2_rows(n)]


def predictions(project: int) -> list[dict]:
    preds = ls(f"/api/predictions/?project={project}")
    return preds if isinstance(preds, list) else preds.get("results", [])


def _tasks(project: int) -> list[dict]:
    tasks = ls(f"/api/tasks/?project={project}&page_size=1000&fields=all")
    return tasks.get("tasks", tasks) if isinstance(tasks, dict) else tasks


def task_ids(project: int) -> list[int]:
    return sorted(t["id"] for t in _tasks(project))


def check_one_each(project: int, tasks: list[int], version: str) -> list[dict]:
    """Exactly one prediction of `version` per task, each with a score in [0, 1] and a label."""
    preds = [p for p in predictions(project) if p.get("model_version") == version]
    by_task: dict[int, list] = {}
    for p in preds:
        by_task.setdefault(p["task"], []).append(p)
    missing = [t for t in tasks if t not in by_task]
    doubled = {t: len(v) for t, v in by_task.items() if len(v) != 1}
    if missing or doubled:
        raise SmokeFailure(f"predictions of {version}: {len(missing)} tasks without one {missing[:5]}, "
                           f"tasks with several {dict(list(doubled.items())[:5])}")
    for p in preds:
        score = p.get("score")
        labels = [r["value"].get("choices", [None])[0] for r in p["result"] if r.get("from_name") == "label"]
        if score is None or not 0.0 <= score <= 1.0 or labels[:1] not in (["Positive"], ["Negative"]):
            raise SmokeFailure(f"prediction {p['id']} of task {p['task']}: score {score!r}, label {labels!r}")
    return preds


def retrieve(project: int) -> float:
    """The Data Manager's Actions -> Retrieve Predictions over all tasks; returns LS's wait in seconds."""
    t0 = time.monotonic()
    ls(f"/api/dm/actions/?id=retrieve_tasks_predictions&project={project}", "POST",
       {"selectedItems": {"all": True, "excluded": []}}, timeout=130)
    return time.monotonic() - t0


def wait_job(project: int, timeout_s: float) -> dict:
    t0, last = time.monotonic(), ""
    while time.monotonic() - t0 < timeout_s:
        jobs = backend(f"/jobs?project={project}")["jobs"]
        if jobs:
            job = max(jobs, key=lambda j: j["id"])
            if job["status"] in ("failed", "cancelled"):
                raise SmokeFailure(f"job {job['id']} {job['status']}: {job.get('error') or job.get('message')}")
            if job["status"] == "done":
                return job
            line = f"job {job['id']} {job['status']} {job['done']}/{job['total']} {job.get('message') or ''}"
            if line != last:
                print(f"  {time.monotonic() - t0:6.0f} s  {line}", flush=True)
                last = line
        time.sleep(5)
    raise SmokeFailure(f"no finished job for project {project} after {timeout_s:.0f} s")


def label(state_path: Path) -> None:
    n = int(ENV.get("N_TASKS", "20"))
    config = (REPO / "label_config" / "classify.xml").read_text()
    project = ls("/api/projects/", "POST", {"title": "icm docker smoke (SST-2)", "label_config": config})["id"]
    ls(f"/api/projects/{project}/import", "POST", [{"text": t} for t in sst2_texts(n)])
    tasks = task_ids(project)
    if len(tasks) != n:
        raise SmokeFailure(f"imported {n} tasks, LS lists {len(tasks)}")
    ml = ls("/api/ml/", "POST", {"url": ENV["BACKEND_URL_FROM_LS"], "project": project, "title": "icm",
                                 "is_interactive": False, "auth_method": "BASIC_AUTH",
                                 "basic_auth_user": ENV["BASIC_AUTH_USER"], "basic_auth_pass": ENV["BASIC_AUTH_PASS"]})
    if ml.get("state") not in ("CO", "CONNECTED", None):
        raise SmokeFailure(f"LS could not connect the backend: {ml}")
    version = backend("/health")["model_version"]
    print(f"project: {project}\ntasks: {len(tasks)}\nml_backend: {ml.get('id')} state {ml.get('state')}\n"
          f"model_version: {version}", flush=True)
    waited = retrieve(project)
    print(f"retrieve_answer_s: {waited:.1f}", flush=True)
    t0 = time.monotonic()
    job = wait_job(project, float(ENV.get("JOB_TIMEOUT_S", "1800")))
    job_s = time.monotonic() - t0 + waited
    preds = check_one_each(project, tasks, version)
    labels = [r["value"]["choices"][0] for p in preds for r in p["result"] if r.get("from_name") == "label"]
    flagged = sum(any(r.get("from_name") == "needs_review" for r in p["result"]) for p in preds)
    # informative only (the smoke checks the plumbing, not accuracy): the gold labels never reached LS
    gold = dict(sst2_rows(n))
    texts = {t["id"]: t["data"]["text"] for t in _tasks(project)}
    agree = sum(r["value"]["choices"][0] == gold.get(texts[p["task"]])
                for p in preds for r in p["result"] if r.get("from_name") == "label")
    project_version = ls(f"/api/projects/{project}")["model_version"]
    if project_version != version:
        raise SmokeFailure(f"project model_version {project_version!r}, expected {version!r} (score column)")
    print(f"job: {job['id']} done {job['done']}/{job['total']}\nretrieve_to_done_s: {job_s:.0f}\n"
          f"predictions: {len(preds)} (one per task, scores in [0, 1])\n"
          f"labels: Positive {labels.count('Positive')}, Negative {labels.count('Negative')}\n"
          f"flagged_for_review: {flagged}\ngold_agreement: {agree}/{n}", flush=True)
    state_path.write_text(json.dumps({"project": project, "tasks": tasks, "version": version, "job": job["id"],
                                      "predictions": sorted(p["id"] for p in preds)}))


def recheck(state_path: Path) -> None:
    state = json.loads(state_path.read_text())
    project, version = state["project"], state["version"]
    if backend("/health")["model_version"] != version:
        raise SmokeFailure("the backend serves another version after the restart")
    job = backend(f"/jobs/{state['job']}")
    if job["status"] != "done":
        raise SmokeFailure(f"job {state['job']} after the restart: {job['status']} (expected done, from the volume)")
    waited = retrieve(project)  # every task holds a prediction of the version: nothing new may appear
    time.sleep(5)
    preds = check_one_each(project, state["tasks"], version)
    ids = sorted(p["id"] for p in preds)
    if ids != state["predictions"]:
        raise SmokeFailure(f"predictions changed across the restart: {len(state['predictions'])} -> {len(ids)}")
    others = [p for p in predictions(project) if p.get("model_version") != version]
    if others:
        raise SmokeFailure(f"{len(others)} predictions of another version appeared")
    print(f"after_restart: job {job['id']} still done; {len(ids)} predictions, same ids; "
          f"second Retrieve ({waited:.1f} s) added none", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("label", "recheck"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        (label if argv[0] == "label" else recheck)(Path(argv[1]))
    except SmokeFailure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
