"""`icm-backend jobs` and `icm-backend serve` argument handling (no server started)."""

from __future__ import annotations

from icm_backend.cli import main
from icm_backend.jobs.db import Database
from icm_backend.jobs.queue import JobStore


def test_jobs_lists_progress_and_cancels(tmp_path, capsys):
    store = JobStore(Database(tmp_path / "icm_backend.sqlite3"))
    job = store.create_job("icm", 3, "icm-smollm2-135m", {})
    store.update_job(job.id, status="running", done=64, total=256, message="shard 1/2 written")
    store.create_job("train", 3, "ft-1", {})
    assert main(["jobs", "--model-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "64/256  25%" in out and "train" in out and "shard 1/2 written" in out
    assert main(["jobs", "--model-dir", str(tmp_path), "--cancel", str(job.id)]) == 0
    assert store.get_job(job.id).cancel_requested
    assert main(["jobs", "--model-dir", str(tmp_path), "--json"]) == 0
    assert '"progress": 0.25' in capsys.readouterr().out


def test_jobs_bad_input_is_one_line(tmp_path, capsys):
    assert main(["jobs", "--model-dir", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("error: --model-dir")
    JobStore(Database(tmp_path / "icm_backend.sqlite3"))
    assert main(["jobs", "--model-dir", str(tmp_path), "--cancel", "99"]) == 2


def test_serve_refuses_several_workers(capsys):
    assert main(["serve", "--workers", "2"]) == 2
    assert "--workers 2" in capsys.readouterr().err


def test_restart_requeues_running_jobs(tmp_path):
    store = JobStore(Database(tmp_path / "db.sqlite3"))
    a = store.create_job("icm", 1, "v", {})
    store.update_job(a.id, status="running")
    b = store.create_job("icm", 1, "v", {})
    store.update_job(b.id, status="running", cancel_requested=1)
    store2 = JobStore(Database(tmp_path / "db.sqlite3"))  # a new process
    store2.requeue_interrupted()
    assert store2.get_job(a.id).status == "queued" and store2.get_job(a.id).restarts == 1
    assert store2.get_job(b.id).status == "cancelled"


def test_status_reads_leave_the_task_snapshot_alone(tmp_path):
    """An ICM job's params hold every task (megabytes on a big project): a status poll, a cancel check or a
    listing that parsed them took the running job's CPU. Only the handler, and whoever asks, gets them."""
    from icm_backend.jobs.queue import JobRunner

    store = JobStore(Database(tmp_path / "db.sqlite3"))
    params = {"label_config": "<View/>", "tasks": [{"id": i, "data": {"text": f"t{i}"}} for i in range(3)]}
    job = store.create_job("icm", 1, "v", params)
    assert job.params == params  # the creator keeps what it wrote
    assert store.get_job(job.id).params is None and store.list_jobs()[0].params is None
    assert store.active_job("icm", 1, "v").params is None
    assert store.get_job(job.id, with_params=True).params == params
    assert "params" not in store.get_job(job.id).to_json() and "params" not in job.to_json()
    seen = []
    runner = JobRunner(store, tmp_path / "jobs", {"icm": lambda ctx: seen.append(ctx.job.params) or "ok"})
    runner.ensure_started()
    assert runner.wait_idle(10)
    runner.stop()
    assert seen == [params] and store.get_job(job.id).status == "done"
    assert not store.cancel_requested(job.id)
    store.update_job(job.id, cancel_requested=1)
    assert store.cancel_requested(job.id)
