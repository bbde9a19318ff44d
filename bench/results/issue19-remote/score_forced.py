"""Score the 60 topic rows zero-shot through a running vLLM with one way forced (mode), against the
in-process labels (inprocess.jsonl). Usage: score_forced.py URL MODE OUT.json"""
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from icm_backend.engine.objective import calibrate_rows
from icm_backend.engine.remote import RemoteScorer
from icm_backend.engine.tasks import build_problem

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
R = Path(__file__).resolve().parent
url, mode, out = sys.argv[1:4]
rows = [json.loads(line) for line in (R.parents[2] / "tests/data/topics4.jsonl").read_text().splitlines()]
labels = ["Sports", "Politics", "Technology", "Food"]
problem = build_problem([{"text": r["text"]} for r in rows], "classify", labels)
s = RemoteScorer(url, "gemma", tokenizer="gemma3-270m", mode=mode, label_words=problem.label_words)
t0 = time.monotonic()
scores = s.score("", [ex.prompt for ex in problem.examples])
secs = time.monotonic() - t0
# the CLI's zero-shot labels are the argmax of the calibrated rows (labeler.zero_shot_rows)
pred = [labels[i] for i in calibrate_rows(scores, np.zeros(len(scores), dtype=int)).argmax(1)]
local = [json.loads(line)["label"] for line in (R / "inprocess.jsonl").read_text().splitlines()]
res = {"mode": s.mode, "score_seconds": round(secs, 2), "agree_with_in_process": float(np.mean([a == b for a, b in zip(pred, local)])),
       "stats": vars(s.stats)}
Path(out).write_text(json.dumps(res, indent=2))
print(json.dumps(res))
