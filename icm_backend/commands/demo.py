"""`icm-backend demo`: ICM and its baselines on a bundled SST-2 sample, scored against its gold labels.

What it prints is for a person: progress bars on stderr while it runs (one for the methods, one for ICM's
iterations below it), then the result table alone on stdout. The engine's log stays at WARNING unless
-v, and library deprecation notices a user cannot act on are silenced here (see quiet_libraries).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from importlib.resources import files

import numpy as np
from tqdm import tqdm

from icm_backend.engine.evaluate import evaluate
from icm_backend.versions import cli_model
from icm_backend.engine.io import read_rows
from icm_backend.engine.labeler import label_rows
from icm_backend.engine.model import load_lm
from icm_backend.engine.tasks import build_problem
from icm_backend.commands.server_args import add_dtype_arg, add_server_args, remote_scorer

SAMPLE = "sst2_sample.tsv"
LABELS = ["negative", "positive"]
METHODS = ("zero-shot", "random-fewshot", "bootstrap", "icm", "gold-fewshot")


def add_subcommands(sub) -> None:
    p = sub.add_parser("demo", help="ICM vs baselines on a bundled 64-sentence SST-2 sample")
    p.add_argument("--model", help="default: the embedded gemma3-270m (e.g. smollm2-135m: faster, weaker)")
    p.add_argument("--seed", type=int, default=0)
    add_dtype_arg(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log the engine's progress on stderr (at --log-level, default INFO); default: warnings only")
    add_server_args(p)
    p.set_defaults(func=run)


@dataclass
class MethodResult:
    method: str
    accuracy: float
    ece: float
    positive: float  # share labelled positive
    seconds: float


def quiet_libraries(verbose: bool) -> None:
    """Only what a person running the demo can use reaches the terminal."""
    if not verbose:
        logging.getLogger().setLevel(logging.WARNING)
    # transformers 5.x deprecates the `past_key_values` argument the scorer passes (its replacement,
    # `cache`, is not in the transformers versions we still support); it says so once as a FutureWarning
    # and once through its own logger, in the middle of the table, and no user of the demo can act on it.
    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)
    logging.getLogger("transformers.utils.generic").addFilter(
        lambda record: "past_key_values" not in record.getMessage())
    try:  # transformers' own "Loading weights" bar: the demo's method bar already says it is working
        from transformers.utils import logging as hf_logging

        if not verbose:
            hf_logging.disable_progress_bar()
    except ImportError:  # a --server run needs no transformers model
        pass


def run_methods(inputs: list[dict], rows: list[dict], gold: list, model, seed: int) -> list[MethodResult]:
    """Each method on the sample, with a progress bar (stderr, on a terminal only) while it runs."""
    problem = build_problem(inputs, "classify", LABELS)
    out = []
    # leave=False: the bars go when done, so the table printed after them stands alone. ICM's own
    # iteration bar (engine/search.py) nests under this one.
    # no rate in the bar: "0.01 method/s" says nothing; elapsed time and the method running do
    with tqdm(total=len(METHODS), desc="methods", leave=False, disable=None,
              bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]") as bar:
        for method in METHODS:
            bar.set_postfix_str(method)
            t0 = time.monotonic()
            preds = label_rows(inputs, task="classify", labels=LABELS, method=method, model=model, seed=seed,
                               gold=gold)
            seconds = time.monotonic() - t0
            report = evaluate(preds, rows, problem)
            out.append(MethodResult(method, report.accuracy, report.ece,
                                    float(np.mean([p.label == "positive" for p in preds])), seconds))
            bar.update(1)
    return out


def format_table(results: list[MethodResult], gold: list) -> str:
    lines = [f"{'method':16} {'accuracy':>8} {'ECE':>6} {'positive':>8} {'time':>7}"]
    for r in results:
        note = "  (uses gold labels: a ceiling, not a method)" if r.method == "gold-fewshot" else ""
        lines.append(f"{r.method:16} {r.accuracy:8.3f} {r.ece:6.3f} {r.positive:8.2f} {r.seconds:6.0f}s{note}")
    lines.append(f"\ngold share of positive: {np.mean([int(g) == 1 for g in gold]):.2f}")
    return "\n".join(lines)


def run(args) -> int:
    quiet_libraries(args.verbose)
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
    print(f"SST-2 sample: {len(rows)} sentences, {where}, seed {args.seed}", flush=True)
    t0 = time.monotonic()
    results = run_methods(inputs, rows, gold, lm, args.seed)
    print(f"\n{format_table(results, gold)}\ntotal {time.monotonic() - t0:.0f}s")
    return 0
