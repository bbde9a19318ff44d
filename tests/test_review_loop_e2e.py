"""The review loop end to end with a REAL Label Studio 1.23.2 and the backend as a real server (smollm2-135m):
ICM labels the project -> 16 tasks annotated -> "Start training" -> the new version is promoted only if the
promotion gate says it is better (the job and /versions say why) -> if promoted, the project's predictions
are re-written under it, with the 16 annotations fixed in the search, and accuracy on the other tasks (gold
kept outside LS) is not lower; if not, the serving version and its predictions stay."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from backend_process import BackendProcess, wait_for, stopped_after
from label_studio_harness import free_port, sst2_rows

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
N_TASKS = 40
N_ANNOTATED = 16


def test_review_loop_e2e(label_studio, shared_dir, tmp_path):
    backend = BackendProcess(port=free_port(), model_dir=tmp_path / "model", env={
        "ICM_MODEL": os.environ.get("ICM_MODEL", "smollm2-135m"), "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token, "ICM_METHOD": "icm", "ICM_MAX_ITERS": "64",
        "ICM_SYNC_MAX_TASKS": "4", "ICM_JOB_SHARD_SIZE": str(N_TASKS), "ICM_TRAIN_MAX_STEPS": "6",
        "ICM_TRAIN_BATCH_SIZE": "4", "LOG_LEVEL": "INFO"})
    backend.start()
    with stopped_after(backend, label_studio, backend_log_chars=20000):
        _run(label_studio.client, backend, shared_dir)


def _jobs(backend, project: int, kind: str) -> list[dict]:
    jobs = requests.get(f"{backend.url}/jobs?project={project}", timeout=5).json()["jobs"]
    return [j for j in jobs if j["kind"] == kind]


def _label_all(ls, backend, project: int, version: str, n_jobs_before: int) -> dict:
    ls.actions.create(id="retrieve_tasks_predictions", project=project, selected_items={"all": True, "excluded": []})

    def done():
        js = _jobs(backend, project, "icm")
        if len(js) <= n_jobs_before:
            return None
        j = max(js, key=lambda j: j["id"])
        assert j["status"] not in ("failed", "cancelled"), j
        return j["status"] == "done" and j
    job = wait_for(done, 900, f"the ICM job of {version}")
    preds = {p.task: p for p in ls.predictions.list(project=project) if p.model_version == version}
    return {"job": job, "preds": preds}


def _accuracy(preds: dict, gold: dict, tasks: list[int]) -> float:
    return sum(preds[t].result[0]["value"]["choices"][0] == gold[t] for t in tasks) / len(tasks)


def _run(ls, backend: BackendProcess, shared_dir: Path) -> None:
    config = (REPO / "label_config" / "classify.xml").read_text()
    rows = sst2_rows(shared_dir, N_TASKS, start=200)
    project = ls.projects.create(title="icm review loop e2e", label_config=config).id
    ls.projects.import_tasks(id=project, request=[{"text": t} for t, _ in rows])
    tasks = sorted(ls.tasks.list(project=project, page_size=100), key=lambda t: t.id)
    gold = {t.id: g for t, (_, g) in zip(tasks, rows)}  # kept outside Label Studio
    ml = ls.ml.create(url=backend.url, project=project, is_interactive=False, title="icm")
    base = requests.get(backend.url + "/health", timeout=2).json()["model_version"]

    first = _label_all(ls, backend, project, base, 0)
    assert set(first["preds"]) == set(gold)
    # The human review: the 16 tasks first in the review order (score ascending = least confident first).
    order = sorted(first["preds"], key=lambda t: (first["preds"][t].score, t))
    annotated, others = order[:N_ANNOTATED], sorted(order[N_ANNOTATED:])
    for t in annotated:
        ls.annotations.create(id=t, result=[{"from_name": "label", "to_name": "text", "type": "choices",
                                             "value": {"choices": [gold[t]]}}])
    acc_before = _accuracy(first["preds"], gold, others)

    ls.ml.train(id=ml.id)  # "Start training"
    job = wait_for(lambda: [j for j in _jobs(backend, project, "train") if j["status"] in ("done", "failed")],
                   900, "the training job")[0]
    assert job["status"] == "done", job
    versions = requests.get(backend.url + "/versions", timeout=5).json()
    verdict = versions["labelling"][str(project)]  # the first labelling's verdict, over real HTTP
    assert verdict["job"] == first["job"]["id"] and verdict["model_version"] == base
    assert isinstance(verdict["reliable"], bool) and verdict["shards"] == 1
    new = versions["versions"][-1]
    assert new.startswith("ft0001-")
    gate = next(d for d in versions["details"] if d["version"] == new)["gate"]
    assert gate["n"] == 3 and gate["method"] == "icm" and gate["serving_version"] == base
    assert gate["reason"] in job["message"]
    t = gate["test"]  # the sign test on the held-out rows only one version gets right
    assert gate["promoted"] == (t["b"] > t["c"] and t["p"] <= t["alpha"])
    print(f"gate: {gate['reason']}; base accuracy on the {len(others)} other tasks {acc_before:.3f}")

    if not gate["promoted"]:  # kept, not served: nothing changes
        assert versions["current"] == base and "NOT serving it" in job["message"]
        assert requests.post(backend.url + "/setup", json={}, timeout=5).json()["model_version"] == base
        return
    assert versions["current"] == new and "now serving it" in job["message"]
    second = _label_all(ls, backend, project, new, 1)
    assert f"{N_ANNOTATED} human labels fixed in context" in second["job"]["message"]
    assert set(second["preds"]) == set(others)  # annotated tasks are not relabelled
    acc_after = _accuracy(second["preds"], gold, others)
    print(f"accuracy on the {len(others)} other tasks: {acc_before:.3f} -> {acc_after:.3f}")
    assert acc_after >= acc_before
