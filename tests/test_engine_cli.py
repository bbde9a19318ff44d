"""The `label` / `eval` CLI on the real tiny LM (smollm2-135m), bad input, and crash + resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MODEL = os.environ.get("ICM_TEST_MODEL", "smollm2-135m")
pytestmark = pytest.mark.slow


def cli(*args, timeout=600, **kw):
    return subprocess.run([sys.executable, "-m", "icm_backend.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"}, **kw)


@pytest.fixture(scope="module")
def sst2_rows(data_dir):
    with open(data_dir / "sst2" / "dev.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[:16]


def write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_label_never_reads_gold_and_eval_scores_it(tmp_path, sst2_rows):
    with_gold = write_jsonl(tmp_path / "with_gold.jsonl", sst2_rows)
    without = write_jsonl(tmp_path / "without.jsonl", [{"text": r["text"]} for r in sst2_rows])
    scrambled = write_jsonl(tmp_path / "scrambled.jsonl",
                            [{**r, "label": str(1 - int(r["label"]))} for r in sst2_rows])
    # Every gold label inverted and no gold column at all: any read of the column would move the output.
    outs = []
    for name, src in (("b", without), ("c", scrambled)):
        out = tmp_path / f"{name}.jsonl"
        r = cli("label", src, "--task", "classify", "--labels", "negative,positive", "--model", MODEL,
                "--max-iters", 40, "--out", out)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    preds = [json.loads(l) for l in outs[0].decode().splitlines()]
    assert [p["index"] for p in preds] == list(range(len(sst2_rows)))
    assert all(p["label"] in ("negative", "positive") and 0 <= p["confidence"] <= 1 for p in preds)
    r = cli("eval", tmp_path / "b.jsonl", "--gold", with_gold, "--labels", "negative,positive")
    assert r.returncode == 0 and "accuracy=" in r.stdout and "ECE=" in r.stdout, r.stderr


@pytest.mark.parametrize("make_input,args,message", [
    (lambda d: [(d / "empty.jsonl").write_text(""), d / "empty.jsonl"][1], ["--task", "claims"], "empty"),
    (lambda d: write_jsonl(d / "m.jsonl", [{"question": "q"}]), ["--task", "claims"], "missing field 'choice'"),
    (lambda d: write_jsonl(d / "u.jsonl", [{"text": "t"}]), ["--task", "sentiment"], "unknown preset"),
    (lambda d: write_jsonl(d / "l.jsonl", [{"question": "q", "choice": "c"}]), ["--task", "claims", "--labels", "a,b"],
     "takes no labels"),
    (lambda d: [(d / "bin.csv").write_bytes(b"text\n\xff\xfe bad \x81\n"), d / "bin.csv"][1],
     ["--task", "classify", "--labels", "a,b"], "not UTF-8"),
    (lambda d: write_jsonl(d / "dup.jsonl", [{"question": "q", "choice": "c", "consistency_id": "1"}] * 2),
     ["--task", "claims"], "duplicate consistency key"),
    (lambda d: write_jsonl(d / "long.jsonl", [{"text": "word " * 9000}, {"text": "short"}]),
     ["--task", "classify", "--labels", "negative,positive"], "longer than the model's context"),
])
def test_bad_input_is_one_clear_line(tmp_path, make_input, args, message):
    path = make_input(tmp_path)
    r = cli("label", path, *args, "--model", MODEL, "--out", tmp_path / "o.jsonl")
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_crash_mid_run_resumes_from_checkpoint(tmp_path, sst2_rows):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": r["text"]} for r in sst2_rows])
    out, ck = tmp_path / "out.jsonl", tmp_path / "run.ckpt.json"
    args = ["label", src, "--task", "classify", "--labels", "negative,positive", "--model", MODEL,
            "--max-iters", 60, "--out", out, "--checkpoint", ck]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ICM_CHECKPOINT_EVERY_S": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "icm_backend.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if ck.exists() and json.loads(ck.read_text()).get("iteration", 0) >= 5:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads(ck.read_text())
    assert 5 <= state["iteration"] < 60 and not state["done"] and not out.exists()
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "resuming ICM" in r.stderr
    assert len(out.read_text().splitlines()) == len(sst2_rows)
    assert json.loads(ck.read_text())["done"]


def test_fixed_column_clamps_rows_and_is_read_only_as_fixed(tmp_path, sst2_rows):
    # Humans labelled rows 0-3 (column "human"; the others empty); "label" (gold) stays unread.
    rows = [{"text": r["text"], "label": r["label"], "human": ("positive" if i % 2 else "negative") if i < 4 else ""}
            for i, r in enumerate(sst2_rows)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    r = cli("label", src, "--task", "classify", "--labels", "negative,positive", "--model", MODEL,
            "--max-iters", 40, "--fixed-column", "human", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "4 fixed from column 'human'" in r.stdout
    preds = [json.loads(l) for l in out.read_text().splitlines()]
    assert [p["label"] for p in preds[:4]] == ["negative", "positive", "negative", "positive"]
    assert all(p.get("fixed") and p["confidence"] == 1.0 and not p["flags"] for p in preds[:4])
    assert not any(p.get("fixed") for p in preds[4:])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**rows[0], "human": "great"}] + rows[1:])
    r = cli("label", bad, "--task", "classify", "--labels", "negative,positive", "--model", MODEL,
            "--fixed-column", "human", "--out", tmp_path / "o.jsonl")
    assert r.returncode == 2 and "fixed: row 0 has label 'great'" in r.stderr and "Traceback" not in r.stderr
    r = cli("label", src, "--task", "classify", "--labels", "negative,positive", "--model", MODEL,
            "--fixed-column", "reviewer", "--out", tmp_path / "o.jsonl")
    assert r.returncode == 2 and "--fixed-column reviewer: no row has that column" in r.stderr
