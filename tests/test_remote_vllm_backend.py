"""The backend's whole-project ICM job on a REAL Label Studio, scored on a REAL vLLM (ICM_SERVER_URL),
with vLLM killed mid-job: the job waits and retries, carries on once vLLM is back, and ends with exactly
one prediction per task (nothing lost, nothing twice); /health answers while the model server is down.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from backend_process import BackendProcess, wait_for
from label_studio_harness import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
N_TASKS = 30
CORE, CHUNK = 10, 2  # ICM on 10 tasks, then the other 20 in chunks of 2


def sst2(data_dir: Path, n: int) -> list[dict]:
    return [{"text": line.split("\t")[0].strip()} for line in (data_dir / "sst2" / "dev.tsv").read_text().splitlines()[1:n + 1]]


def test_project_job_on_vllm_survives_a_vllm_crash(label_studio, vllm_server, data_dir, tmp_path):
    ls = label_studio.client
    backend = BackendProcess(port=free_port(), model_dir=tmp_path / "model", env={
        "ICM_SERVER_URL": vllm_server.base_url, "ICM_MODEL": "gemma3-270m", "ICM_SERVER_RETRY_S": "900",
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "ICM_METHOD": "icm", "ICM_MAX_ITERS": "60", "ICM_SYNC_MAX_TASKS": "4", "ICM_CORE_SIZE": str(CORE), "ICM_CHUNK_SIZE": str(CHUNK),
        "ICM_CHECKPOINT_EVERY_S": "1", "LOG_LEVEL": "INFO",
    })
    backend.start()
    try:
        _run(ls, backend, vllm_server, data_dir)
    except Exception:
        print("---- backend log ----\n" + backend.log_tail())
        print("---- vLLM log ----\n" + vllm_server.log_tail(3000))
        raise
    finally:
        backend.stop()
        if vllm_server.process is None or vllm_server.process.poll() is not None:
            vllm_server.start_again()  # the session fixture stays usable for later tests


def _job(backend, job_id) -> dict:
    return requests.get(f"{backend.url}/jobs/{job_id}", timeout=5).json()


def _run(ls, backend: BackendProcess, vllm, data_dir: Path) -> None:
    project = ls.projects.create(title="icm on vllm", label_config=(REPO / "label_config" / "classify.xml").read_text())
    ls.projects.import_tasks(id=project.id, request=sst2(data_dir, N_TASKS))
    task_ids = sorted(t.id for t in ls.tasks.list(project=project.id, page_size=100))
    ls.ml.create(url=backend.url, project=project.id, is_interactive=False, title="icm")
    version = requests.get(backend.url + "/health", timeout=2).json()["model_version"]
    assert version == "icm-gemma3-270m"

    ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                      selected_items={"all": True, "excluded": []})
    job_id = wait_for(lambda: requests.get(backend.url + "/jobs", timeout=2).json()["jobs"], 60, "the job")[0]["id"]

    def first_chunk_done():
        job = _job(backend, job_id)
        assert job["status"] != "failed", job
        return job["state"].get("written", 0) >= 1 and job
    job = wait_for(first_chunk_done, 600, "the first chunk", every=0.1)
    assert job["status"] == "running", f"job finished before the crash: {job}"

    vllm.kill()  # the model server crashes mid-job
    t0 = time.perf_counter()
    health = requests.get(backend.url + "/health", timeout=5).json()
    assert time.perf_counter() - t0 < 1.0 and health["status"] == "UP"  # /health never calls the model server
    wait_for(lambda: "retry" in backend.log_tail(20000) and "model server" in backend.log_tail(20000), 120,
             "the job retrying the model server")
    time.sleep(5)
    assert _job(backend, job_id)["status"] == "running"  # waiting, not failed

    vllm.start_again()  # same port; the job carries on by itself

    def finished():
        j = _job(backend, job_id)
        assert j["status"] not in ("failed", "cancelled"), j
        return j["status"] == "done" and j
    job = wait_for(finished, 900, "the job after vLLM came back")
    assert job["done"] == N_TASKS and job["restarts"] == 0

    preds = [p for p in ls.predictions.list(project=project.id) if p.model_version == version]
    by_task: dict[int, list] = {}
    for p in preds:
        by_task.setdefault(p.task, []).append(p)
    assert sorted(by_task) == task_ids and all(len(v) == 1 for v in by_task.values())
    for p in preds:
        names = {r["from_name"]: r for r in p.result}
        assert names["label"]["value"]["choices"][0] in ("Positive", "Negative")
