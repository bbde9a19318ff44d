"""Projects of any size: quality and cost of ICM on a core + one pass, on the shipped path (`label_rows`).

    # (a) quality on SST-2 dev (all rows), per seed: zero-shot, bootstrap, ICM in shards of 128 (each shard
    #     its own search: the job before this change), core + one pass with cores of 128 / 256 / 512
    python bench/bench_scale.py quality --data data/sst2/dev.tsv --seeds 0 1 2 --json out.json
    #     (--save-labels DIR writes each labelling as `icm-backend label` would, for bench_accept.py)
    # (b) cost growth: tasks/s of the default ICM job's labelling and of zero-shot at each size (texts of the
    #     given files repeated past their count), in process or through a model server (--server URL --model M)
    python bench/bench_scale.py cost --texts data/sst2/dev.tsv data/sst2/test.tsv --sizes 1000 10000
    #     the one-pass phase alone (a relabel: label_rows(core=) reusing the core an icm row wrote to --core),
    #     e.g. through a model server: --methods icm one-pass --core core.json --server URL --model M
    # (c) relabel after a review: the previous core reused vs a new search, gold on the 100 least confident
    python bench/bench_scale.py relabel --data data/sst2/dev.tsv --seeds 0 --json relabel.jsonl
    # the number format: zero-shot on 50 rows with --dtype auto, fp32, bf16
    python bench/bench_scale.py dtype --data data/sst2/dev.tsv
    # packed vs padded batches (TransformersScorer.score): ms a row after a one-pass-sized prefix, and alone
    python bench/bench_scale.py packing --data data/sst2/dev.tsv

Every labelling is `label_rows` as `icm-backend label` and the server's job run it. A row of the table is
appended to --json as each finishes (a rerun skips finished rows). The CPU and its bf16 support are printed
with every table: timings on these machines differ by 5-8x between CPUs with and without native bf16.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from icm_backend.commands.server_args import add_server_args, remote_scorer
from icm_backend.engine.io import write_predictions
from icm_backend.engine.labeler import label_rows
from icm_backend.engine.model import NATIVE_BF16_FLAGS, cpu_flags, load_lm
from icm_backend.engine.scorer import TransformersScorer
from icm_backend.engine.search import SearchConfig

LABELS = ["negative", "positive"]


def machine() -> str:
    name = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    native = sorted(set(NATIVE_BF16_FLAGS) & cpu_flags())
    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"CPU {name}, {os.cpu_count()} cores, native bf16: {', '.join(native) if native else 'no (AVX2 only)'}"
            f", load {load:.1f} at start")


def read_tsv(path: str) -> tuple[list[str], list[int | None]]:
    """text<TAB>label rows (a header line first); label None where the column is not 0/1."""
    texts, gold = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split("\t")
        texts.append(parts[0].strip())
        gold.append(int(parts[1]) if len(parts) > 1 and parts[1].strip() in ("0", "1") else None)
    return texts, gold


def scores(preds, gold: list[int]) -> dict:
    """Accuracy, ECE (10 bins), and the share of all errors that the review flags caught."""
    from icm_backend.engine.evaluate import calibration

    y = np.array([LABELS.index(p.label) for p in preds])
    conf = np.array([p.confidence for p in preds])
    wrong = y != np.array(gold)
    flagged = np.array([bool(p.flags) for p in preds])
    ece, _ = calibration(conf, ~wrong)
    return {"accuracy": round(float((~wrong).mean()), 4), "ece": round(float(ece), 4),
            "errors_in_flagged": round(float((wrong & flagged).sum() / max(wrong.sum(), 1)), 4),
            "flagged": int(flagged.sum())}


def make_model(args):
    remote = remote_scorer(args)
    if remote is not None:
        remote.set_labels(LABELS)
        return remote
    return TransformersScorer(load_lm(args.model, dtype=args.dtype), LABELS)


def run_one(scorer, rows, method: str, seed: int, core: int | None, max_iters: int | None = None,
            phases: dict | None = None, prior: dict | None = None):
    """One labelling through label_rows; (predictions, wall s, LM tokens). `prior`: a previous labelling's
    core for label_rows(core=) to reuse, so that only the one-pass phase runs (as a relabel does).

    `phases`, if given, gets the seconds until the one-pass phase's first progress line ("search_s": the
    core's search and the first chunk's assessment) from the engine's own progress messages."""
    before = scorer.stats.tokens_processed
    t0 = time.perf_counter()

    last = [0.0]

    def progress(done, total, msg):
        now = time.perf_counter() - t0
        if phases is not None and "search_s" not in phases and msg.startswith("one pass"):
            phases["search_s"] = round(now, 1)
        if now - last[0] >= 60:  # a line a minute: a 10,000-row labelling runs for most of an hour
            last[0] = now
            print(f"  {method}, {len(rows)} rows, {now / 60:.0f} min: {msg} {done}/{total}", file=sys.stderr, flush=True)

    preds = label_rows(rows, task="classify", labels=LABELS, method=method, model=scorer, seed=seed,
                       config=SearchConfig(core_size=core, max_iters=max_iters), progress=progress, core=prior)
    return preds, time.perf_counter() - t0, scorer.stats.tokens_processed - before


def _done(path: Path | None) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()] if path and path.exists() else []


def _append(path: Path | None, row: dict) -> None:
    print(json.dumps(row), file=sys.stderr, flush=True)
    if path:
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _setup(args, n: int | None = None):
    """--data's rows (the first n), gold, the --json file, the (arm, seed) pairs it has, the model; the CPU line."""
    texts, gold = read_tsv(args.data)
    if n:
        texts, gold = texts[:n], gold[:n]
    out = Path(args.json) if args.json else None
    scorer = make_model(args)
    print(machine())
    return [{"text": t} for t in texts], gold, out, {(r["arm"], r["seed"]) for r in _done(out)}, scorer


# -- (a) quality -------------------------------------------------------------------------------------
ARMS = {"zero-shot": ("zero-shot", None), "bootstrap": ("bootstrap", None), "sharded-128": ("icm", 0),
        "core-128": ("icm", 128), "core-256": ("icm", 256), "core-512": ("icm", 512)}


def quality(args) -> None:
    rows, gold, out, have, scorer = _setup(args, args.n)
    for seed in args.seeds:
        for arm in args.arms:
            if (arm, seed) in have:
                continue
            method, core = ARMS[arm]
            if arm.startswith("sharded-"):  # each shard of 128 its own whole search, as the job ran before
                preds, wall, tokens = [], 0.0, 0
                for s in range(0, len(rows), 128):
                    p, w, t = run_one(scorer, rows[s:s + 128], "icm", seed, None, args.max_iters)
                    preds += p
                    wall, tokens = wall + w, tokens + t
            else:
                preds, wall, tokens = run_one(scorer, rows, method, seed, core, args.max_iters)
            if args.save_labels:  # the CLI's own writer: bench_accept reads these as `icm-backend label` outputs
                write_predictions(preds, Path(args.save_labels) / f"{arm}-s{seed}.jsonl")
            _append(out, {"arm": arm, "seed": seed, "n": len(rows), "wall_s": round(wall, 1), "lm_tokens": tokens,
                          **scores(preds, gold)})
    table_quality(_done(out) if out else [], args.arms)


def table_quality(results: list[dict], arms: list[str]) -> None:
    print(f"\n{'method':14} {'seeds':>5} {'accuracy':>15} {'ECE':>7} {'errors flagged':>14} {'wall s':>8} "
          f"{'LM tokens':>11}")
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        if not rs:
            continue
        acc = [r["accuracy"] for r in rs]
        sd = f" ± {np.std(acc, ddof=1):.3f}" if len(rs) > 1 else ""
        print(f"{arm:14} {len(rs):5d} {np.mean(acc):8.3f}{sd:>7} {np.mean([r['ece'] for r in rs]):7.3f} "
              f"{np.mean([r['errors_in_flagged'] for r in rs]):14.2f} {np.mean([r['wall_s'] for r in rs]):8.0f} "
              f"{np.mean([r['lm_tokens'] for r in rs]):11.0f}")


# -- (b) cost growth ---------------------------------------------------------------------------------
def cost(args) -> None:
    texts = []
    for f in args.texts:
        texts += read_tsv(f)[0]
    out = Path(args.json) if args.json else None
    have = {(r["method"], r["n"]) for r in _done(out)}
    scorer = make_model(args)
    core_file = Path(args.core) if args.core else None
    print(machine())
    for n in args.sizes:
        rows = [{"text": texts[i % len(texts)] + ("" if i < len(texts) else f" ({i // len(texts)})")}
                for i in range(n)]  # repeated past the files' count, each copy a distinct text
        for method in args.methods:
            if (method, n) in have:
                continue
            phases: dict = {}
            prior = None
            if method == "one-pass":
                if not core_file or not core_file.exists():
                    sys.exit("cost: the one-pass rows reuse a core: run an icm row first with --core FILE")
                prior = {int(i): w for i, w in json.loads(core_file.read_text()).items()}
            preds, wall, tokens = run_one(scorer, rows, "icm" if method == "one-pass" else method, args.seed,
                                          SearchConfig.core_size, args.max_iters, phases, prior)
            if method == "icm" and core_file and not core_file.exists():
                core_file.write_text(json.dumps(preds.core))
            if preds.core_origin is not None:
                phases["core"] = preds.core_origin.how
            _append(out, {"method": method, "n": n, "wall_s": round(wall, 1), "tasks_per_s": round(n / wall, 3),
                          "s_per_task": round(wall / n, 4), "lm_tokens": tokens, **phases,
                          "side": "model server" if args.server else f"in process ({args.dtype})"})
    results = _done(out) if out else []
    print(f"\n{'method':10} {'tasks':>7} {'wall s':>8} {'core s':>7} {'tasks/s':>8} {'s/task':>7} {'x zero-shot':>11}")
    for r in sorted(results, key=lambda r: (r["n"], r["method"])):
        zs = next((z for z in results if z["n"] == r["n"] and z["method"] == "zero-shot"), None)
        ratio = f"{r['s_per_task'] / zs['s_per_task']:11.1f}" if zs else f"{'-':>11}"
        core_s = f"{r['search_s']:7.0f}" if "search_s" in r else f"{'-':>7}"
        print(f"{r['method']:10} {r['n']:7d} {r['wall_s']:8.0f} {core_s} {r['tasks_per_s']:8.2f} {r['s_per_task']:7.3f} "
              f"{ratio}")


# -- (c) relabel after a review ----------------------------------------------------------------------
def relabel(args) -> None:
    """What reusing the core buys after a review, and what it costs in accuracy.

    A first labelling (ICM on the core + one pass); a reviewer gives the gold label of the `--reviewed`
    least confident rows; then the project is relabelled three ways, each with those labels fixed:
    "reuse" (the previous core, the human labels in place of its labels where they differ: no search),
    "search" (a new search on a core drawn as the first), and what ships ("as shipped", engine.core.reuse_core:
    reuse, the human labels in place; it searched again on a contradiction until 2026-12-07, so runs before
    record "search" there; one of the two by construction, recorded with `same_as`).
    Accuracy on the rows nobody reviewed, wall time."""
    rows, gold, out, have, scorer = _setup(args)
    for seed in args.seeds:
        if all((a, seed) in have for a in ("reuse", "search", "as shipped")):
            continue
        first, wall, _ = run_one(scorer, rows, "icm", seed, SearchConfig.core_size, args.max_iters)
        order = sorted(range(len(rows)), key=lambda i: (first[i].confidence, i))
        fixed = {i: LABELS[gold[i]] for i in order[:args.reviewed]}
        others = [i for i in range(len(rows)) if i not in fixed]
        contra = sum(1 for i, w in first.core.items() if i in fixed and fixed[i] != w)
        base = float(np.mean([first[i].label == LABELS[gold[i]] for i in others]))
        _append(out, {"arm": "first", "seed": seed, "wall_s": round(wall, 1), "accuracy_unreviewed": round(base, 4),
                      "reviewed": len(fixed), "reviewed_in_core": sum(i in first.core for i in fixed),
                      "contradicting_core": contra})
        # What ships is one of the other two by construction (engine.core.reuse_core: reuse, the human labels
        # in place, as SST-2 has no consistency groups): recorded as that arm's result, not run a third time.
        shipped_as = "reuse"
        for arm, core in (("reuse", {i: fixed.get(i, w) for i, w in first.core.items()}), ("search", None)):
            if (arm, seed) in have:
                continue
            t0 = time.perf_counter()
            preds = label_rows(rows, task="classify", labels=LABELS, method="icm", model=scorer, seed=seed,
                               fixed=fixed, core=core, config=SearchConfig(max_iters=args.max_iters))
            acc = float(np.mean([preds[i].label == LABELS[gold[i]] for i in others]))
            origin = preds.core_origin.text() if preds.core_origin else ""
            row = {"arm": arm, "seed": seed, "wall_s": round(time.perf_counter() - t0, 1),
                   "accuracy_unreviewed": round(acc, 4), "before": round(base, 4), "core": origin}
            _append(out, row)
            if arm == shipped_as:
                _append(out, {**row, "arm": "as shipped", "same_as": arm})
    results = _done(out) if out else []
    print(f"\n{'relabel':11} {'seeds':>5} {'acc. unreviewed':>15} {'first':>7} {'wall s':>7}")
    for arm in ("reuse", "search", "as shipped"):
        rs = [r for r in results if r["arm"] == arm]
        if rs:
            print(f"{arm:11} {len(rs):5d} {np.mean([r['accuracy_unreviewed'] for r in rs]):15.3f} "
                  f"{np.mean([r['before'] for r in rs]):7.3f} {np.mean([r['wall_s'] for r in rs]):7.0f}")


# -- the number format -------------------------------------------------------------------------------
def dtype(args) -> None:
    texts, gold = read_tsv(args.data)
    rows = [{"text": t} for t in texts[:args.n or 50]]
    print(machine())
    print(f"\n{'--dtype':8} {'ran as':7} {'zero-shot s':>11} {'accuracy':>8}")
    for choice in ("auto", "fp32", "bf16"):
        lm = load_lm(args.model, dtype=choice)
        scorer = TransformersScorer(lm, LABELS)
        label_rows(rows[:4], task="classify", labels=LABELS, method="zero-shot", model=scorer)  # warm-up
        preds, wall, _ = run_one(scorer, rows, "zero-shot", 0, None)
        acc = np.mean([LABELS.index(p.label) == g for p, g in zip(preds, gold)])
        print(f"{choice:8} {lm.dtype:7} {wall:11.2f} {acc:8.3f}", flush=True)


def packing(args) -> None:
    """The scorer's packed batches (every target in one sequence after the prefix) against padded ones: the
    same `score` calls, `scorer.packed` switched, alternating, the median of `--repeats` per way."""
    from icm_backend.engine.context import SEP
    from icm_backend.engine.tasks import build_problem

    texts, _ = read_tsv(args.data)
    prompts = [ex.prompt for ex in build_problem([{"text": t} for t in texts], "classify", LABELS).examples]
    scorer = TransformersScorer(load_lm(args.model, dtype=args.dtype), LABELS)
    budget, prefix, k = SearchConfig.context_tokens, "", 0
    while scorer.count_tokens(prefix + f"{prompts[k]} {LABELS[k % 2]}{SEP}") <= budget:  # labels alternate:
        prefix += f"{prompts[k]} {LABELS[k % 2]}{SEP}"  # the timing does not depend on them, gold is not read
        k += 1
    targets = prompts[k:k + args.n]
    print(machine())
    ways = () if args.sizes_only else ((f"{scorer.count_tokens(prefix)} tokens", prefix), ("none (zero-shot)", ""))
    if ways:
        print(f"\n{'prefix':18} {'rows':>5} {'padded ms/row':>13} {'packed ms/row':>13} {'speed-up':>8} {'max |d log-p|':>13}")
    for name, pre in ways:
        scorer.score(pre, targets[:16])  # warm-up, and packing's one check against padded batches
        times: dict[bool, list[float]] = {True: [], False: []}
        got: dict[bool, np.ndarray] = {}
        for _ in range(args.repeats):
            for packed in (False, True):
                scorer.packed = packed
                t0 = time.perf_counter()
                got[packed] = scorer.score(pre, targets)
                times[packed].append(time.perf_counter() - t0)
        pad, pack = (float(np.median(times[p])) * 1000 / len(targets) for p in (False, True))
        print(f"{name:18} {len(targets):5d} {pad:13.1f} {pack:13.1f} {pad / pack:8.2f} "
              f"{float(np.abs(got[True] - got[False]).max()):13.1e}", flush=True)
    if not args.batch_sizes:
        return
    if not ways:  # warm-up, and the packing check, which the first table did otherwise
        scorer.score(prefix, targets[:16])
    # Rows per packed sequence after the prefix: bigger matmuls against more masked-out attention.
    scorer.packed = True
    print(f"\n{'rows per pack':>13} {'packed ms/row':>13} {'vs ' + str(args.batch_sizes[0]):>8}   (after the {scorer.count_tokens(prefix)}-token prefix)")
    times = {b: [] for b in args.batch_sizes}
    for _ in range(args.repeats):
        for b in args.batch_sizes:
            scorer.batch_size = b
            t0 = time.perf_counter()
            scorer.score(prefix, targets)
            times[b].append(time.perf_counter() - t0)
    base = float(np.median(times[args.batch_sizes[0]]))
    for b in args.batch_sizes:
        m = float(np.median(times[b]))
        print(f"{b:13d} {m * 1000 / len(targets):13.1f} {base / m:8.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--data", required=True)
    q.add_argument("--n", type=int, help="first N rows only")
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    q.add_argument("--save-labels", metavar="DIR", help="write each labelling as `icm-backend label` does "
                   "(DIR/<arm>-s<seed>.jsonl), e.g. for bench_accept.py")
    c = sub.add_parser("cost")
    c.add_argument("--texts", nargs="+", required=True)
    c.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    c.add_argument("--methods", nargs="+", default=["zero-shot", "icm"], choices=["zero-shot", "icm", "one-pass"])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--core", metavar="FILE", help="the core ({row: label}) an icm row writes here if absent; "
                   "method one-pass reuses it (label_rows(core=): the one-pass phase alone, as a relabel runs it)")
    r = sub.add_parser("relabel")
    r.add_argument("--data", required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--reviewed", type=int, default=100, help="rows a reviewer labels (the least confident)")
    d = sub.add_parser("dtype")
    d.add_argument("--data", required=True)
    d.add_argument("--n", type=int, default=50)
    k = sub.add_parser("packing")
    k.add_argument("--data", required=True)
    k.add_argument("--n", type=int, default=256, help="rows scored per way and repeat")
    k.add_argument("--repeats", type=int, default=3)
    k.add_argument("--batch-sizes", type=int, nargs="+", help="also time packed scoring at these rows per pack "
                   "(the first is the reference)")
    k.add_argument("--sizes-only", action="store_true", help="only the --batch-sizes table")
    for p in (q, c, r, d, k):
        p.add_argument("--model", default=None)
        p.add_argument("--dtype", default="auto")
        p.add_argument("--json", help="append results here (JSON lines); a rerun skips finished rows")
        p.add_argument("--max-iters", type=int, help="cap the search (default: the engine's 20 x N; 12 x N on a core)")
    for p in (q, c, r):
        add_server_args(p)
    args = ap.parse_args()
    {"quality": quality, "cost": cost, "relabel": relabel, "dtype": dtype, "packing": packing}[args.cmd](args)


if __name__ == "__main__":
    main()
