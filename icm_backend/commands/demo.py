"""`icm-backend demo`: ICM and its baselines on a bundled SST-2 sample, scored against its gold labels."""

from __future__ import annotations

import time
from importlib.resources import files

import numpy as np

from icm_backend.engine.evaluate import evaluate
from icm_backend.versions import cli_model
from icm_backend.engine.io import read_rows
from icm_backend.engine.labeler import label_rows
from icm_backend.engine.model import load_lm
from icm_backend.engine.tasks import build_problem
from icm_backend.commands.server_args import add_dtype_arg, add_server_args, remote_scorer

SAMPLE = "sst2_sample.tsv"
LABELS = ["negative", "positive"]


def add_subcommands(sub) -> None:
    p = sub.add_parser("demo", help="ICM vs baselines on a bundled 64-sentence SST-2 sample")
    p.add_argument("--model", help="default: the embedded gemma3-270m")
    p.add_argument("--seed", type=int, default=0)
    add_dtype_arg(p)
    add_server_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    path = files("icm_backend").joinpath("samples", SAMPLE)
    rows = read_rows(str(path))
    # The engine sees only the text; gold stays here for scoring.
    inputs = [{"text": r["text"]} for r in rows]
    gold = [r["label"] for r in rows]
    lm = remote_scorer(args)
    if lm is not None:
        where = f"model {lm.model} on the model server {lm.base_url}"
    else:
        lm = load_lm(cli_model(args.model), dtype=args.dtype)
        where = f"model {lm.name} ({'4-bit NF4' if lm.quantization == 'nf4' else lm.dtype} on {lm.device})"
    problem = build_problem(inputs, "classify", LABELS)
    print(f"SST-2 sample: {len(rows)} sentences, {where}, seed {args.seed}\n")
    print(f"{'method':16} {'accuracy':>8} {'ECE':>6} {'positive':>8} {'time':>7}")
    for method in ("zero-shot", "random-fewshot", "bootstrap", "icm", "gold-fewshot"):
        t0 = time.time()
        preds = label_rows(inputs, task="classify", labels=LABELS, method=method, model=lm, seed=args.seed, gold=gold)
        report = evaluate(preds, rows, problem)
        pos = np.mean([p.label == "positive" for p in preds])
        note = "  (uses gold labels: a ceiling, not a method)" if method == "gold-fewshot" else ""
        print(f"{method:16} {report.accuracy:8.3f} {report.ece:6.3f} {pos:8.2f} {time.time() - t0:6.0f}s{note}",
              flush=True)
    print(f"\ngold share of positive: {np.mean([int(g) == 1 for g in gold]):.2f}")
    return 0
