"""Are prompt_logprobs rows the same as logprob_token_ids rows on a real vLLM, with the fallback's
requests in flight together (4) and one at a time (1)? Per-row label log-probs compared.
Usage: fallback_check.py URL OUT.json"""
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
url, out = sys.argv[1:3]
rows = [json.loads(line) for line in (R.parents[2] / "tests/data/topics4.jsonl").read_text().splitlines()]
labels = ["Sports", "Politics", "Technology", "Food"]
problem = build_problem([{"text": r["text"]} for r in rows], "classify", labels)
prompts = [ex.prompt for ex in problem.examples]
local = [json.loads(line)["label"] for line in (R / "inprocess.jsonl").read_text().splitlines()]
res, got = {}, {}
for name, kw in (("logprob-token-ids", {"mode": "logprob-token-ids"}),
                 ("prompt-logprobs_in_flight_1", {"mode": "prompt-logprobs", "max_in_flight": 1}),
                 ("prompt-logprobs_in_flight_4", {"mode": "prompt-logprobs", "max_in_flight": 4})):
    s = RemoteScorer(url, "gemma", tokenizer="gemma3-270m", label_words=problem.label_words, **kw)
    t0 = time.monotonic()
    got[name] = s.score("", prompts)
    # the CLI's zero-shot labels are the argmax of the calibrated rows (labeler.zero_shot_rows)
    pred = [labels[i] for i in calibrate_rows(got[name], np.zeros(len(prompts), dtype=int)).argmax(1)]
    res[name] = {"seconds": round(time.monotonic() - t0, 2),
                 "agree_with_in_process": float(np.mean([a == b for a, b in zip(pred, local)])),
                 "rows_differing_from_in_process": [i for i, (a, b) in enumerate(zip(pred, local)) if a != b]}
    print(name, res[name], flush=True)
base = got["logprob-token-ids"]
for name in got:
    d = np.abs(got[name] - base)
    res[name]["max_abs_diff_vs_logprob_token_ids"] = float(d.max())
    res[name]["rows_over_0.01"] = [int(i) for i in np.where(d.max(1) > 0.01)[0]]
Path(out).write_text(json.dumps(res, indent=2))
print(json.dumps(res, indent=2))
