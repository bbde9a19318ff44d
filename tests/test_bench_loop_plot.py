"""bench_loop's --replot: the table and the plot of an existing results file, and a clear error for a bad one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "issue11-cpu"


def _replot(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "bench_loop.py"), "--json",
                           str(path), "--replot"], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_replot_draws_both_arms(tmp_path):
    res = json.loads((RESULTS / "queue-s0.json").read_text())
    res["random"] = json.loads((RESULTS / "random-s0.json").read_text())["random"]
    path = tmp_path / "loop.json"
    path.write_text(json.dumps(res))
    done = _replot(path)
    assert done.returncode == 0, done.stderr
    assert "| 4 | 128 | 0.966 |" in done.stdout  # the queue's last round, from the file
    png = path.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_replot_names_a_file_without_loop_results(tmp_path):
    path = tmp_path / "headline.json"
    path.write_text(json.dumps({"headline": {}}))
    done = _replot(path)
    assert done.returncode == 2 and "no review-loop results" in done.stderr and str(path) in done.stderr
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    done = _replot(bad)
    assert done.returncode == 2 and str(bad) in done.stderr and "Traceback" not in done.stderr
