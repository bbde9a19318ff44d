"""`icm-backend label INPUT --task PRESET [--labels a,b] [--method ...] --out OUT.jsonl`"""

from __future__ import annotations

import os
from pathlib import Path

from icm_backend.versions import cli_model
from icm_backend.engine.io import read_rows, write_predictions
from icm_backend.engine.labeler import CLI_METHODS, DEFAULT_REVIEW_FRACTION, DEFAULT_REVIEW_THRESHOLD, label_rows
from icm_backend.engine.model import QUANTIZE_CHOICES
from icm_backend.engine.search import SearchConfig
from icm_backend.engine.tasks import PRESETS
from icm_backend.commands.server_args import add_dtype_arg, add_server_args, remote_scorer
from icm_backend.errors import InputError


def parse_labels(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",")] if text else None


def fixed_from_column(rows: list[dict], column: str) -> dict[int, str]:
    """Row index -> the column's value, for rows where it is non-empty (the engine checks the values)."""
    if not any(column in r for r in rows):
        have = sorted({k for r in rows[:50] for k in r})
        raise InputError(f"--fixed-column {column}: no row has that column (columns: {', '.join(have)})")
    return {i: str(r[column]).strip() for i, r in enumerate(rows)
            if r.get(column) is not None and str(r[column]).strip() != ""}


def add_subcommands(sub) -> None:
    p = sub.add_parser("label", help="label a file's rows with ICM or a baseline",
                       description="Writes one JSON object per input row, in input order: "
                                   '{"index", "label", "confidence", "flags"}. Never reads a gold column.')
    p.add_argument("input", help="rows as .json, .jsonl, .csv or .tsv")
    p.add_argument("--task", required=True, help="preset: " + ", ".join(PRESETS))
    p.add_argument("--labels", help="label words for --task classify, e.g. negative,positive")
    p.add_argument("--method", default="icm", help="one of: " + ", ".join(CLI_METHODS))
    p.add_argument("--model", help="gemma3-270m (default), smollm2-135m, a local HF dir, a .gguf file or a hub id")
    p.add_argument("--quantize", default="auto", choices=QUANTIZE_CHOICES,
                   help="auto: 4-bit NF4 on CUDA with bitsandbytes, unquantised otherwise")
    add_dtype_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .jsonl")
    p.add_argument("--checkpoint", help="checkpoint file (default: OUT.ckpt.json); rerun to resume")
    p.add_argument("--max-iters", type=int, help="ICM iteration cap (default 20 x rows)")
    p.add_argument("--context-tokens", type=int, default=SearchConfig.context_tokens,
                   help="token budget of the in-context examples")
    p.add_argument("--alpha", type=float, default=SearchConfig.alpha)
    p.add_argument("--review-threshold", type=float, default=DEFAULT_REVIEW_THRESHOLD,
                   help="flag labels whose (calibrated) confidence is below this; wins over --review-fraction")
    p.add_argument("--review-fraction", type=float, default=DEFAULT_REVIEW_FRACTION,
                   help="flag this share of the labels, least confident first (default 0.2)")
    p.add_argument("--fixed-column", metavar="COL",
                   help="a column of human labels: rows with a value there are fixed (always in context, never "
                        "flipped, returned as given); rows with it empty are labelled. Nothing else reads it.")
    add_server_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    rows = read_rows(args.input)
    # Only the fields the preset reads reach the engine, so a gold column cannot influence anything;
    # --fixed-column is read here, once, and reaches the engine only as `fixed=`.
    fixed = fixed_from_column(rows, args.fixed_column) if args.fixed_column else None
    out = Path(args.out)
    checkpoint = args.checkpoint or str(out) + ".ckpt.json"
    # ICM_CHECKPOINT_EVERY_S: how often the search saves (tests set 0 to crash right after a save).
    config = SearchConfig(alpha=args.alpha, max_iters=args.max_iters, context_tokens=args.context_tokens,
                          checkpoint_every_s=float(os.environ.get("ICM_CHECKPOINT_EVERY_S", "20")))
    preds = label_rows(rows, task=args.task, labels=parse_labels(args.labels), method=args.method,
                       model=remote_scorer(args) or cli_model(args.model), seed=args.seed,
                       checkpoint=checkpoint if args.method == "icm" else None, config=config,
                       review_threshold=args.review_threshold, quantize=args.quantize, dtype=args.dtype, fixed=fixed,
                       review_fraction=args.review_fraction)
    write_predictions(preds, out)
    flagged = sum(1 for p in preds if p.flags)
    given = f", {len(fixed)} fixed from column {args.fixed_column!r}" if fixed else ""
    print(f"wrote {len(preds)} labels to {out} ({flagged} flagged for review{given})")
    if getattr(preds, "assessment", None) is not None:
        print(f"labelling: {preds.assessment.summary()}")
    return 0
