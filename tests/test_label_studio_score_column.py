"""What a Label Studio user sees, on a REAL Label Studio 1.23.2, the backend as a real server with the
real LM (smollm2-135m, a capped ICM search), and a REAL browser (headless Chromium driven by Selenium).

One 40-task SST-2 project, labelled once for the module: "Retrieve predictions" answers within 10 s and
starts the whole-project job (ICM on a 20-task core, one pass over the other 20 in chunks of 10); after
the job:
- GET /api/projects/<id> names the served version (the Data Manager's score column follows it);
- every task holds exactly one prediction, of that version (no stand-ins, no duplicates);
- the Data Manager's task list (/api/tasks?fields=all) has predictions_score for every task, equal to the
  prediction's score, and ordering by it gives the lowest score first;
- a second Retrieve answers from the store and adds nothing;
- in Chromium: log in, open the Data Manager, and the "Prediction score" column shows a score for every
  task (a screenshot is kept under the test's tmp dir; ICM_KEEP_SCREENSHOT=<path> copies it).
And a backend whose model cannot load: Retrieve answers, LS stores no prediction, /jobs says why.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import requests

from backend_process import BackendProcess, wait_for
from label_studio_harness import chromium_driver, free_port, open_score_order_tab, sst2_rows, wait_for_column

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
N_TASKS = 40
CONFIG = (REPO / "label_config" / "classify.xml").read_text()


def retrieve(ls, project_id: int) -> float:
    t0 = time.monotonic()
    ls.actions.create(id="retrieve_tasks_predictions", project=project_id, selected_items={"all": True, "excluded": []})
    return time.monotonic() - t0


def dm_tasks(server, project_id: int, ordering: list[str] | None = None) -> list[dict]:
    """The Data Manager's task list, as its grid asks for it."""
    params = {"project": project_id, "fields": "all", "page_size": 1000}
    if ordering:
        params["query"] = json.dumps({"ordering": ordering})
    r = requests.get(server.url + "/api/tasks", params=params, headers=server.headers, timeout=30)
    r.raise_for_status()
    return r.json()["tasks"]


@pytest.fixture(scope="module")
def labelled(label_studio, data_dir, tmp_path_factory):
    """A 40-task project after Retrieve and the job's end: (project id, served version, backend, retrieve s)."""
    ls = label_studio.client
    work = tmp_path_factory.mktemp("score-column")
    backend = BackendProcess(port=free_port(), model_dir=work / "model", env={
        "ICM_MODEL": os.environ.get("ICM_MODEL", "smollm2-135m"),
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "ICM_METHOD": "icm", "ICM_MAX_ITERS": os.environ.get("ICM_E2E_MAX_ITERS", "40"),
        "ICM_SYNC_MAX_TASKS": "4", "ICM_CORE_SIZE": "20", "ICM_CHUNK_SIZE": "10", "LOG_LEVEL": "INFO",
    })
    backend.start()
    try:
        project = ls.projects.create(title="icm score column", label_config=CONFIG)
        ls.projects.import_tasks(id=project.id, request=[{"text": t} for t, _ in sst2_rows(data_dir, N_TASKS)])
        ls.ml.create(url=backend.url, project=project.id, is_interactive=False, title="icm")
        version = requests.get(backend.url + "/health", timeout=2).json()["model_version"]
        took = retrieve(ls, project.id)

        def finished():
            jobs = requests.get(backend.url + "/jobs", timeout=5).json()["jobs"]
            assert not jobs or jobs[0]["status"] not in ("failed", "cancelled"), jobs[0]
            return jobs and jobs[0]["status"] == "done" and jobs[0]
        job = wait_for(finished, 900, "the whole-project job")
        yield {"project": project.id, "version": version, "backend": backend, "retrieve_s": took, "job": job}
    except Exception:
        print("---- backend log ----\n" + backend.log_tail())
        print("---- label studio log ----\n" + label_studio.log_tail())
        raise
    finally:
        backend.stop()


def test_score_column_filled_one_prediction_per_task(labelled, label_studio):
    ls, pid, version = label_studio.client, labelled["project"], labelled["version"]
    assert labelled["retrieve_s"] < 10, f"Retrieve predictions took {labelled['retrieve_s']:.1f}s"
    job = labelled["job"]
    assert job["done"] == N_TASKS and job["state"]["model_version_set"] is True, job
    # through the one-pass phase: calibrated on the core and the first chunk, every task written
    assert "fitted on 30 of 40 rows" in job["state"]["assessment"]["calibrated_on"], job["state"]["assessment"]
    assert job["state"]["written"] == N_TASKS

    # the project's model_version is the served one (LS refuses it before predictions of it exist)
    r = requests.get(f"{label_studio.url}/api/projects/{pid}", headers=label_studio.headers, timeout=10)
    assert r.json()["model_version"] == version

    # exactly one prediction per task, all of the served version
    preds = ls.predictions.list(project=pid)
    by_task: dict[int, list] = {}
    for p in preds:
        by_task.setdefault(p.task, []).append(p)
    tasks = dm_tasks(label_studio, pid)
    assert len(tasks) == N_TASKS
    assert sorted(by_task) == sorted(t["id"] for t in tasks)
    assert all(len(v) == 1 and v[0].model_version == version for v in by_task.values())

    # the Data Manager's score column: filled for every task, the prediction's score (the label's probability)
    for t in tasks:
        (p,) = by_task[t["id"]]
        assert t["predictions_score"] is not None, t["id"]
        assert t["predictions_score"] == pytest.approx(p.score)
        label = next(x for x in p.result if x["from_name"] == "label")
        assert label["value"]["choices"][0] in ("Positive", "Negative")
        assert label["score"] == pytest.approx(p.score)  # nothing in the LS layer rescales it
    ordered = dm_tasks(label_studio, pid, ordering=["tasks:predictions_score"])
    scores = [t["predictions_score"] for t in ordered]
    assert scores == sorted(scores) and scores[0] == min(t["predictions_score"] for t in tasks)
    assert len(set(scores)) > 1, "every task got the same score"

    # a second Retrieve: LS asks only about tasks without a prediction of the version: none; nothing added
    assert retrieve(ls, pid) < 10
    assert len(ls.predictions.list(project=pid)) == N_TASKS


def test_browser_data_manager_shows_prediction_scores(labelled, label_studio, tmp_path):
    pid = labelled["project"]
    driver = chromium_driver()
    shot = tmp_path / "ls_score_column.png"
    try:
        wait = open_score_order_tab(driver, label_studio, pid, "by score")
        rows = wait_for_column(wait, "tasks:predictions_score", N_TASKS)
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    keep = os.environ.get("ICM_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    assert shot.exists() and shot.stat().st_size > 10_000
    # every task's row shows its score (as the API has it, to the 3 decimals shown), lowest score first
    api = {t["id"]: t["predictions_score"] for t in dm_tasks(label_studio, pid)}
    shown = {int(task_id): score for task_id, score in rows}
    assert sorted(shown) == sorted(api), rows
    for task_id, score in shown.items():
        assert score, f"task {task_id}: empty Prediction score cell"
        assert float(score) == pytest.approx(api[task_id], abs=6e-4), (task_id, score, api[task_id])
    shown_scores = [float(score) for _, score in rows]
    assert shown_scores == sorted(shown_scores), rows


def test_a_failed_job_leaves_no_predictions_and_says_why(label_studio, data_dir, tmp_path):
    """A model that cannot load: Retrieve still answers at once, LS stores nothing (no empty predictions that
    look like success), and the job's failure and its reason are in /jobs."""
    ls = label_studio.client
    backend = BackendProcess(port=free_port(), model_dir=tmp_path / "model", env={
        "ICM_MODEL": str(tmp_path / "no-such-model"), "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token, "ICM_SYNC_MAX_TASKS": "4", "LOG_LEVEL": "INFO"})
    backend.start()
    try:
        project = ls.projects.create(title="icm broken model", label_config=CONFIG)
        ls.projects.import_tasks(id=project.id, request=[{"text": t} for t, _ in sst2_rows(data_dir, 10)])
        ls.ml.create(url=backend.url, project=project.id, is_interactive=False, title="icm")
        assert retrieve(ls, project.id) < 10

        def failed():
            jobs = requests.get(backend.url + "/jobs", timeout=5).json()["jobs"]
            assert not jobs or jobs[0]["status"] != "done", jobs[0]
            return jobs and jobs[0]["status"] == "failed" and jobs[0]
        job = wait_for(failed, 120, "the job to fail")
        assert "cannot be loaded" in job["error"], job["error"]  # the reason, in /jobs
        assert ls.predictions.list(project=project.id) == []
        assert all(t["predictions_score"] is None for t in dm_tasks(label_studio, project.id))
    except Exception:
        print("---- backend log ----\n" + backend.log_tail())
        raise
    finally:
        backend.stop()
