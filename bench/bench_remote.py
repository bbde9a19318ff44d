"""The same ICM run (SST-2 dev rows 100-355, seed 0) in process and through a vLLM server, on this machine.

    python bench/bench_remote.py                          # starts vLLM itself (.venv-vllm, bf16), runs both
    python bench/bench_remote.py --server http://127.0.0.1:8000/v1 --model gemma3-270m   # an existing server
    python bench/bench_remote.py --only local             # one side (each side is kept in OUT/results.json)

Prints wall time, rows/s, LM tokens, vLLM's prefix-cache hit rate (from its /metrics, over this run only),
accuracy, and what 10,000 and 100,000 tasks would cost at the measured rates. The extrapolation is linear:
the backend labels a project in shards of ICM_JOB_SHARD_SIZE (128) tasks, so the cost per task does not
grow with the project. A finished side is not rerun (delete OUT/results.json to start over).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the vLLM harness

from icm_backend.commands.server_args import add_server_args, remote_scorer  # noqa: E402
from icm_backend.engine.labeler import label_rows  # noqa: E402
from icm_backend.engine.model import load_lm  # noqa: E402
from icm_backend.engine.remote import server_metrics  # noqa: E402
from icm_backend.engine.scorer import TransformersScorer  # noqa: E402

LABELS = ["negative", "positive"]
MODEL = "gemma3-270m"


def sst2_rows(start: int = 100, n: int = 256):
    path = REPO / "data" / "sst2" / "dev.tsv"
    lines = path.read_text().splitlines()[1 + start:1 + start + n]
    parts = [line.split("\t") for line in lines]
    return [{"text": p[0].strip()} for p in parts], [int(p[1]) for p in parts]


def run_icm(rows, gold, model, seed: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    preds = label_rows(rows, task="classify", labels=LABELS, method="icm", model=model, seed=seed)
    wall = time.perf_counter() - t0
    return wall, float(np.mean([LABELS.index(p.label) == g for p, g in zip(preds, gold)]))


def bench_local(rows, gold, seed: int) -> dict:
    t0 = time.perf_counter()
    lm = load_lm(MODEL, quantize="none")
    load = time.perf_counter() - t0
    scorer = TransformersScorer(lm, LABELS)
    wall, acc = run_icm(rows, gold, scorer, seed)
    return {"side": "in process (transformers, bf16)", "load_s": load, "wall_s": wall, "accuracy": acc,
            "lm_tokens": scorer.stats.tokens_processed, "calls": scorer.stats.forward_calls,
            "prefix_hit_rate": None}


def bench_remote(rows, gold, seed: int, args) -> dict:
    server = None
    if not args.server:
        from vllm_harness import VLLMServer, default_model_dir

        t0 = time.perf_counter()
        server = VLLMServer.start(default_model_dir(MODEL), MODEL, Path(args.out) / "vllm", dtype="bfloat16")
        args.server, args.model = server.base_url, MODEL
        start = time.perf_counter() - t0
        print(f"vLLM started in {start:.0f}s (log {server.log_path})", flush=True)
    try:
        t0 = time.perf_counter()
        scorer = remote_scorer(args)
        load = time.perf_counter() - t0
        before = server_metrics(args.server)
        wall, acc = run_icm(rows, gold, scorer, seed)
        after = server_metrics(args.server)
    finally:
        if server is not None:
            server.stop()
    q = after.get("vllm:prefix_cache_queries_total", 0) - before.get("vllm:prefix_cache_queries_total", 0)
    h = after.get("vllm:prefix_cache_hits_total", 0) - before.get("vllm:prefix_cache_hits_total", 0)
    s = scorer.stats
    return {"side": f"vLLM ({args.model})", "server": args.server, "load_s": load, "wall_s": wall, "accuracy": acc,
            "lm_tokens": s.tokens_processed, "calls": s.forward_calls, "prefix_hit_rate": (h / q) if q else None,
            "server_tokens_computed": q - h, "fallback_rows": s.fallback_rows, "topk_rows": s.topk_rows,
            "retries": s.retries}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="with --server: the served model name")
    add_server_args(ap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--only", choices=["local", "remote"])
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_remote"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    rows, gold = sst2_rows(n=args.rows)
    for side in ("local", "remote"):
        if (args.only and side != args.only) or side in results:
            continue
        print(f"running ICM on {len(rows)} SST-2 rows, seed {args.seed}: {side} ...", flush=True)
        results[side] = bench_local(rows, gold, args.seed) if side == "local" else bench_remote(rows, gold, args.seed, args)
        results[side]["rows"] = len(rows)
        results_file.write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def print_table(results: dict) -> None:
    print(f"\nICM, SST-2 dev rows 100-355, seed 0, {MODEL}, this 2-core CPU\n")
    names = {"local": "in process (transformers, bf16)", "remote": "vLLM server, /v1/completions"}
    print(f"{'':34} {'wall':>7} {'rows/s':>7} {'LM tokens':>10} {'tok/row':>8} {'prefix hits':>11} {'accuracy':>8}")
    for side in ("local", "remote"):
        r = results.get(side)
        if not r:
            continue
        hit = f"{r['prefix_hit_rate']:.1%}" if r.get("prefix_hit_rate") is not None else "-"
        print(f"{names[side]:34} {r['wall_s']:6.0f}s {r['rows'] / r['wall_s']:7.2f} {r['lm_tokens']:10,d} "
              f"{r['lm_tokens'] / r['rows']:8.0f} {hit:>11} {r['accuracy']:8.3f}")
    if "remote" in results and results["remote"].get("server_tokens_computed") is not None:
        r = results["remote"]
        print(f"\nvLLM computed {r['server_tokens_computed']:,.0f} of the {r['lm_tokens']:,d} prompt tokens it was sent "
              f"(the rest came from its prefix cache); {r['topk_rows']:,d} rows scored from the top-20, "
              f"{r['fallback_rows']:,d} rescored with prompt_logprobs; {r['calls']:,d} requests.")
    print("\nAt the measured rates (linear: the backend works in shards of 128 tasks):\n")
    print(f"{'':34} {'10,000 tasks':>22} {'100,000 tasks':>22}")
    for side in ("local", "remote"):
        r = results.get(side)
        if not r:
            continue
        per_row_s, per_row_tok = r["wall_s"] / r["rows"], r["lm_tokens"] / r["rows"]
        cells = [f"{_hours(per_row_s * n)}, {per_row_tok * n / 1e6:.0f}M tok" for n in (10_000, 100_000)]
        print(f"{names[side]:34} {cells[0]:>22} {cells[1]:>22}")


if __name__ == "__main__":
    sys.exit(main())
