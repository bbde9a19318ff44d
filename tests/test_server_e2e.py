"""E2E against a REAL Label Studio 1.23.2 and the backend as a real `icm-backend serve` process with the real LM.

Flow: import ~30 SST-2 sentences with label_config/classify.xml, connect the backend, "Retrieve
predictions" (a large batch: provisional answer + whole-project job), crash the backend mid-job
(SIGKILL), restart it, the job resumes and finishes; read the predictions back through the API; then
annotate a task and see the webhook handled.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import requests

from backend_process import BackendProcess, wait_for, stopped_after
from label_studio_harness import free_port, sst2_rows

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
N_TASKS = 30
CORE, CHUNK = 10, 2  # ICM on 10 tasks, then the other 20 in chunks of 2: a long one-pass phase to crash in
# The real ICM search on the real tiny model; ICM_E2E_METHOD=bootstrap tests the plumbing faster.
METHOD = os.environ.get("ICM_E2E_METHOD", "icm")


def test_label_studio_e2e(label_studio, data_dir, tmp_path):
    ls = label_studio.client
    backend = BackendProcess(port=free_port(), model_dir=tmp_path / "model", env={
        "ICM_MODEL": os.environ.get("ICM_MODEL", "smollm2-135m"),
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "ICM_METHOD": METHOD, "ICM_MAX_ITERS": os.environ.get("ICM_E2E_MAX_ITERS", "120"),
        "ICM_SYNC_MAX_TASKS": "4", "ICM_CORE_SIZE": str(CORE), "ICM_CHUNK_SIZE": str(CHUNK), "LOG_LEVEL": "INFO",
    })
    backend.start()
    with stopped_after(backend, label_studio):
        _run(ls, label_studio, backend, data_dir)


def _run(ls, label_studio, backend: BackendProcess, data_dir: Path) -> None:
    project = ls.projects.create(title="icm e2e sst2", label_config=(REPO / "label_config" / "classify.xml").read_text())
    ls.projects.import_tasks(id=project.id, request=[{"text": t} for t, _ in sst2_rows(data_dir, N_TASKS)])
    task_ids = sorted(t.id for t in ls.tasks.list(project=project.id, page_size=100))
    assert len(task_ids) == N_TASKS
    ls.ml.create(url=backend.url, project=project.id, is_interactive=False, title="icm")
    version = requests.get(backend.url + "/health", timeout=2).json()["model_version"]

    # Retrieve predictions: 30 tasks > ICM_SYNC_MAX_TASKS -> no prediction in the answer, a background job
    t0 = time.monotonic()
    ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                      selected_items={"all": True, "excluded": []})
    assert time.monotonic() - t0 < 100, "LS gives /predict 100 s"
    jobs = wait_for(lambda: requests.get(backend.url + "/jobs", timeout=2).json()["jobs"], 30, "the job")
    job_id = jobs[0]["id"]

    # crash mid-job, in the one-pass phase: after the core and the first chunk were written, before the last
    def first_chunk_written():
        job = requests.get(f"{backend.url}/jobs/{job_id}", timeout=2).json()
        assert job["status"] != "failed", job
        return job["state"].get("written", 0) >= 1 and job
    job = wait_for(first_chunk_written, 600, "the first chunk", every=0.1)
    assert job["status"] == "running", f"job finished before the crash: {job}"
    backend.kill()
    written_before = [p for p in ls.predictions.list(project=project.id) if p.model_version == version]
    assert 0 < len(written_before) < N_TASKS

    backend.start()

    def finished():
        j = requests.get(f"{backend.url}/jobs/{job_id}", timeout=2).json()
        assert j["status"] not in ("failed", "cancelled"), j
        return j["status"] == "done" and j
    job = wait_for(finished, 900, "the resumed job")
    assert job["restarts"] >= 1 and job["done"] == N_TASKS

    # read back through the API: exactly one prediction per task under the job's version, none lost
    preds = [p for p in ls.predictions.list(project=project.id) if p.model_version == version]
    by_task = {}
    for p in preds:
        by_task.setdefault(p.task, []).append(p)
    assert sorted(by_task) == task_ids and all(len(v) == 1 for v in by_task.values())
    flagged = 0
    for p in preds:
        assert 0.0 <= p.score <= 1.0
        names = {r["from_name"]: r for r in p.result}
        assert names["label"]["value"]["choices"][0] in ("Positive", "Negative")
        if "needs_review" in names:
            flagged += 1
            reason = names["review_reason"]["value"]["text"][0]
            assert reason
            for ref in re.findall(r"#(\d+)", reason):  # conflicting tasks named by LS task id
                assert int(ref) in task_ids
    assert flagged >= 1, "expected some tasks flagged for review"
    assert ls.projects.get(id=project.id).model_version == version  # score column populated

    # tasks labelled by the finished job come from the store in milliseconds
    tasks = [{"id": t.id, "data": t.data} for t in ls.tasks.list(project=project.id, page_size=100)]
    t0 = time.perf_counter()
    r = requests.post(backend.url + "/predict", timeout=30, json={
        "tasks": tasks, "project": f"{project.id}.0",
        "label_config": (REPO / "label_config" / "classify.xml").read_text()})
    elapsed = time.perf_counter() - t0
    assert r.ok and len(r.json()["results"]) == N_TASKS
    assert all(x["model_version"] == version for x in r.json()["results"])
    assert elapsed / N_TASKS < 0.05

    # annotate a task: LS's webhook reaches the backend
    ls.annotations.create(id=task_ids[0], result=[{"from_name": "label", "to_name": "text", "type": "choices",
                                                     "value": {"choices": ["Positive"]}}])

    def webhook_seen():
        text = requests.get(backend.url + "/metrics", timeout=2).text
        return 'icm_webhook_events_total{action="ANNOTATION_CREATED"}' in text
    wait_for(webhook_seen, 30, "the ANNOTATION_CREATED webhook")
