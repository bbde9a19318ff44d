"""The review loop end to end with a REAL Label Studio 1.23.2 and the backend as a real server (smollm2-135m).

ICM labels the project; a careless annotator labels the 16 tasks first in the review order with the wrong
label; "Start training" trains version 1 on them, and the promotion gate must promote it (the gate judges a
version by the accepted labels, right or wrong: version 1 fitted them, the base model did not), so the job
serves it and the project is re-labelled under it, the 16 annotations fixed in the search and not
relabelled — the promote-and-relabel branch, asserted on every run — and the Data Manager shows the serving
version's scores in review order (a real browser).

The gate runs at ICM_GATE_ALPHA=0.5: this test checks the branch (version 1 gets more of the 8 held-out
accepted labels right than the base, and the gate serves it by its rule), not the sign test's power on 8
rows. At the default 0.2 version 1 passed with 4 : 0 (p = 0.06) on 2026-12-06 and with 4 : 1 (p = 0.19) on
2026-12-07 on the same CPU: one row from failing. A second version gated against a serving fine-tuned one,
and a trial settled by review, are test_trial_e2e's (a zero-shot backend: seconds a training step, where
ICM's in-context training takes ~13 s a step here).

Why the careless annotator: with correct labels from the start smollm2's ICM already gets the least
confident tasks right (measured: 7 of 8 held-out rows, zero-shot 8 of 8), so no new version can pass the
sign test and the promote-and-rewrite branch would never run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from backend_process import BackendProcess, wait_for, stopped_after
from label_studio_harness import chromium_driver, free_port, open_score_order_tab, sst2_rows, wait_for_column

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
N_TASKS = 40
N_ANNOTATED = 16
N_HELD_OUT = 8  # ICM_TRAIN_HOLDOUT_FRACTION=0.5: at the default 0.2, 3 rows, and only 3 of 3 could pass the gate


def test_review_loop_e2e(label_studio, data_dir, tmp_path):
    backend = BackendProcess(port=free_port(), model_dir=tmp_path / "model", env={
        "ICM_MODEL": os.environ.get("ICM_MODEL", "smollm2-135m"), "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token, "ICM_METHOD": "icm", "ICM_MAX_ITERS": "64",
        "ICM_SYNC_MAX_TASKS": "4", "ICM_TRAIN_MAX_STEPS": "16", "ICM_GATE_ALPHA": "0.5",
        # both cores for training: nothing else runs while the worker trains (measured on the 2-core AMD EPYC:
        # the test's call 702 s with 2 threads vs 832 s with 1, the same verdicts)
        "ICM_TRAIN_THREADS": "2",
        "ICM_TRAIN_BATCH_SIZE": "4", "ICM_TRAIN_LR": "1e-3", "ICM_TRAIN_HOLDOUT_FRACTION": "0.5", "LOG_LEVEL": "INFO"})
    backend.start()
    with stopped_after(backend, label_studio, backend_log_chars=20000):
        _run(label_studio, backend, data_dir, tmp_path)


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


FLIP = {"Positive": "Negative", "Negative": "Positive"}


def _choice(word: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [word]}}]


def press_train(ls, backend, project: int, ml_id: int, n: int) -> tuple[dict, dict, str]:
    """Press "Start training"; wait for the n-th training job to succeed. (job, /versions, the new version)."""
    ls.ml.train(id=ml_id)
    job = wait_for(lambda: len(js := [j for j in _jobs(backend, project, "train") if j["status"] in ("done", "failed")])
                   >= n and max(js, key=lambda j: j["id"]), 900, f"training job {n}")
    assert job["status"] == "done", job
    versions = requests.get(backend.url + "/versions", timeout=5).json()
    new = versions["versions"][-1]
    assert new.startswith(f"ft{n:04d}-")
    return job, versions, new


def _train(ls, backend, project: int, ml_id: int, n: int) -> tuple[dict, dict, str, dict]:
    """press_train, and the gate's verdict on the new version checked against its rule. (..., its gate)."""
    job, versions, new = press_train(ls, backend, project, ml_id, n)
    gate = next(d for d in versions["details"] if d["version"] == new)["gate"]
    assert gate["n"] == N_HELD_OUT and gate["method"] == "icm"
    assert gate["reason"] in job["message"]
    t = gate["test"]  # the sign test on the held-out rows only one version gets right
    assert gate["promoted"] == (t["b"] > t["c"] and t["p"] <= t["alpha"])
    assert (versions["current"] == new) == gate["promoted"]
    assert ("now serving it" if gate["promoted"] else "NOT serving it") in job["message"]
    print(f"training {n}: {gate['reason']}")
    return job, versions, new, gate


def _look_in_the_browser(label_studio, project: int, serving: str, scores: dict[int, float], others: list[int],
                         annotated: list[int], shot: Path) -> None:
    """What a reviewer sees after the loop: the Data Manager, least confident first, with the predictions'
    model versions: every task not annotated has a prediction of the serving version, the annotated ones
    (not relabelled) do not. The tasks still hold the earlier versions' predictions too; the "Prediction
    score" column must show the serving version's score alone (`scores`, task -> score), so that sorting by
    it is the serving version's review order. The screenshot stays at `shot` (ICM_KEEP_LOOP_SCREENSHOT=<path>
    copies it)."""
    driver = chromium_driver()
    try:
        wait = open_score_order_tab(driver, label_studio, project, "review order")
        rows = wait_for_column(wait, "tasks:predictions_model_versions", N_TASKS)
        shown_scores = wait_for_column(wait, "tasks:predictions_score", N_TASKS)
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    if os.environ.get("ICM_KEEP_LOOP_SCREENSHOT"):
        shutil.copy(shot, os.environ["ICM_KEEP_LOOP_SCREENSHOT"])
    shown = {int(t): versions for t, versions in rows}
    assert all(serving in shown[t] for t in others), rows
    assert not any(serving in shown[t] for t in annotated), rows
    # LS averages the score over predictions of the project's model_version only: the serving one.
    project_version = requests.get(f"{label_studio.url}/api/projects/{project}", headers=label_studio.headers,
                                   timeout=10).json()["model_version"]
    assert project_version == serving
    score_cell = {int(t): cell for t, cell in shown_scores}
    assert any(len(shown[t].split(",")) > 1 for t in others), "no task holds an earlier version's prediction"
    for t in others:
        assert float(score_cell[t]) == pytest.approx(scores[t], abs=6e-4), (t, score_cell[t], scores[t], shown[t])
    assert not any(score_cell[t].strip() for t in annotated), shown_scores  # no prediction of the serving version
    not_annotated = set(others)
    in_order = [float(cell) for t, cell in shown_scores if int(t) in not_annotated]
    assert in_order == sorted(in_order), shown_scores  # the review order: least confident first


def sst2_project(ls, backend, data_dir: Path, title: str, n: int) -> tuple[int, dict[int, str], object, str]:
    """An LS project of n SST-2 dev rows (classify.xml) connected to the backend: (project id, gold labels by task
    id, kept outside Label Studio; the ML backend; the version serving now)."""
    config = (REPO / "label_config" / "classify.xml").read_text()
    rows = sst2_rows(data_dir, n, start=200)
    project = ls.projects.create(title=title, label_config=config).id
    ls.projects.import_tasks(id=project, request=[{"text": t} for t, _ in rows])
    tasks = sorted(ls.tasks.list(project=project, page_size=100), key=lambda t: t.id)
    gold = {t.id: g for t, (_, g) in zip(tasks, rows)}
    ml = ls.ml.create(url=backend.url, project=project, is_interactive=False, title="icm")
    return project, gold, ml, requests.get(backend.url + "/health", timeout=2).json()["model_version"]


def _run(label_studio, backend: BackendProcess, data_dir: Path, tmp_path: Path) -> None:
    ls = label_studio.client
    project, gold, ml, base = sst2_project(ls, backend, data_dir, "icm review loop e2e", N_TASKS)

    first = _label_all(ls, backend, project, base, 0)
    assert set(first["preds"]) == set(gold)
    # The 16 tasks first in the review order (score ascending = least confident first), labelled wrongly.
    order = sorted(first["preds"], key=lambda t: (first["preds"][t].score, t))
    annotated, others = order[:N_ANNOTATED], sorted(order[N_ANNOTATED:])
    for t in annotated:
        ls.annotations.create(id=t, result=_choice(FLIP[gold[t]]))

    job1, versions, v1, gate1 = _train(ls, backend, project, ml.id, 1)
    verdict = versions["labelling"][str(project)]  # the first labelling's verdict, over real HTTP
    assert verdict["job"] == first["job"]["id"] and verdict["model_version"] == base
    assert isinstance(verdict["reliable"], bool)
    assert gate1["serving_version"] == base
    # The promote branch, asserted: the gate judges by the accepted labels, and version 1 fitted them (the
    # careless ones) where the base model did not (measured: 4 : 0 and 4 : 1 on the 8 held-out rows; the level
    # is 0.5 here, module docstring). The job serves it and the project is re-written under it below.
    assert gate1["promoted"], gate1["reason"]
    assert "now serving it" in job1["message"]
    assert requests.post(backend.url + "/setup", json={}, timeout=5).json()["model_version"] == v1
    second = _label_all(ls, backend, project, v1, 1)  # re-labelled under version 1, the wrong labels fixed
    assert set(second["preds"]) == set(others)  # annotated tasks are not relabelled
    assert f"{N_ANNOTATED} human labels fixed in context" in second["job"]["message"]
    acc_v1 = _accuracy(second["preds"], gold, others)

    print(f"accuracy on the {len(others)} other tasks: base {_accuracy(first['preds'], gold, others):.3f}, "
          f"version 1 (wrong labels) {acc_v1:.3f}")
    _look_in_the_browser(label_studio, project, v1, {t: p.score for t, p in second["preds"].items()}, others,
                         annotated, tmp_path / "loop_promoted.png")
