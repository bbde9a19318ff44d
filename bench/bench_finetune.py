"""Held-out gain of fine-tuning on accepted labels: SST-2, before vs after, zero-shot and ICM.

    python bench/bench_finetune.py --model gemma3-270m --n-train 64 --n-test 256 --methods zero-shot,icm

Trains a LoRA version on `--n-train` labelled SST-2 dev rows (the "accepted labels"; 1 = positive),
then labels `--n-test` other SST-2 dev rows (GLUE's test split has no labels) with each method using the base model and the new
version, and prints accuracy before / after. Gold test labels are used only to score.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icm_backend.finetune.data import TrainingRow, TrainingSet  # noqa: E402
from icm_backend.finetune.lora import TrainConfig  # noqa: E402
from icm_backend.finetune.pipeline import train_version  # noqa: E402

LABELS = ["negative", "positive"]


def read_tsv(path: str) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def accuracy(model, rows: list[dict], method: str, seed: int, n_icm: int | None,
             icm_iters: int | None = None) -> tuple[float, int, float]:
    from icm_backend.engine.labeler import label_rows
    from icm_backend.engine.search import SearchConfig

    if method == "icm" and n_icm:
        rows = rows[:n_icm]
    t0 = time.monotonic()
    config = SearchConfig(max_iters=icm_iters) if icm_iters else None
    last = [0.0]

    def progress(done: int, total: int, msg: str = "") -> None:
        if time.monotonic() - last[0] > 30:  # a line every 30 s: ICM runs take minutes
            last[0] = time.monotonic()
            print(f"  {method}: {done}/{total} {msg}", flush=True)

    preds = label_rows([{"text": r["text"]} for r in rows], task="classify", labels=LABELS, method=method, model=model,
                       seed=seed, config=config, progress=progress)
    gold = [LABELS[int(r["label"])] for r in rows]
    acc = sum(p.label == g for p, g in zip(preds, gold)) / len(rows)
    return acc, len(rows), time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--train", default=str(Path(__file__).resolve().parents[1] / "data" / "sst2" / "dev.tsv"))
    # data/sst2/test.tsv is GLUE's *unlabelled* test split (its "label" column is the row
    # index 0..1820), so the default test set is dev rows disjoint from the training rows.
    ap.add_argument("--test", default="dev-holdout",
                    help="a labelled TSV, or dev-holdout: dev rows not used for training")
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--n-test", type=int, default=256)
    ap.add_argument("--n-icm", type=int, default=None, help="ICM on the first N test rows only (CPU time)")
    ap.add_argument("--icm-iters", type=int, default=None, help="cap ICM search iterations (default 20 x N)")
    ap.add_argument("--methods", default="zero-shot,icm")
    ap.add_argument("--max-steps", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0, help="seed of the labelling methods and of training")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split (keep it when "
                                                                "reusing --version)")
    ap.add_argument("--out", default="runs/bench_finetune")
    ap.add_argument("--version", default=None, help="reuse an existing version dir instead of training")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from icm_backend.finetune.lora import training_threads
    from icm_backend.engine.model import load_lm

    torch.set_num_threads(training_threads())  # scoring suffers from oversubscription the same way
    print(f"torch threads: {torch.get_num_threads()}", flush=True)

    dev = read_tsv(args.train)
    random.Random(args.split_seed).shuffle(dev)
    train = dev[:args.n_train]
    if args.test == "dev-holdout":
        test = dev[args.n_train:args.n_train + args.n_test]
    else:
        test = read_tsv(args.test)[:args.n_test]
    bad = [r["label"] for r in test if r["label"] not in ("0", "1")]
    if bad:
        sys.exit(f"error: {args.test}: column 'label' holds {bad[:3]}..., not 0/1 gold labels "
                 "(GLUE's SST-2 test split is unlabelled); use --test dev-holdout")
    methods = [m for m in args.methods.split(",") if m]
    results: dict = {"model": args.model, "n_train": len(train), "n_test": len(test), "rows": []}

    base = load_lm(args.model, "none")
    before = {m: accuracy(base, test, m, args.seed, args.n_icm, args.icm_iters) for m in methods}
    print("before:", before, flush=True)
    del base

    if args.version:
        vdir = Path(args.version)
        train_s = None
    else:
        ts = TrainingSet(rows=[TrainingRow(row={"text": r["text"]}, label=LABELS[int(r["label"])], source="file",
                                           task_id=i) for i, r in enumerate(train)])
        t0 = time.monotonic()
        v = train_version(ts, "classify", LABELS, args.out, args.model,
                          TrainConfig(max_steps=args.max_steps, seed=args.seed),
                          progress=lambda s, n, info: print(f"step {s}/{n} {info}", flush=True))
        train_s = time.monotonic() - t0
        vdir = v.path
        results["train_metrics"] = {k: v.metrics[k] for k in ("steps", "stopped", "best_step", "heldout_before",
                                                              "heldout_best", "train_rows", "heldout_rows")}
    tuned = load_lm(str(vdir), "none")
    after = {m: accuracy(tuned, test, m, args.seed, args.n_icm, args.icm_iters) for m in methods}
    results.update(version=str(vdir), train_seconds=train_s)
    print(f"\nSST-2 {'dev rows disjoint from training' if args.test == 'dev-holdout' else args.test}, model {args.model}, fine-tuned on {len(train)} accepted dev labels "
          f"(version {vdir.name}, training {train_s and round(train_s)} s)\n")
    print("| method | n | accuracy before | accuracy after | gain |")
    print("|---|---|---|---|---|")
    for m in methods:
        (a0, n, s0), (a1, _, s1) = before[m], after[m]
        results["rows"].append({"method": m, "n": n, "before": a0, "after": a1, "seconds": [s0, s1]})
        print(f"| {m} | {n} | {a0:.3f} | {a1:.3f} | {a1 - a0:+.3f} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
