"""Small projects: is the label `label_rows` reports as good as the ICM search's own labelling?

    python bench/bench_small.py --seeds 0 1 2 3 4 --json out.jsonl

For each seed, ICM on the bundled 64-sentence SST-2 sample (what `make demo` labels) through `label_rows`
with a checkpoint; the checkpoint holds the search's own final labels, which are scored beside the
reported (assessed: context ensemble, calibration, drift guard) labels, and bootstrap's. One table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import numpy as np

from bench_scale import machine  # bench/ is sys.path[0] when run as a script
from icm_backend.engine.io import read_rows
from icm_backend.engine.labeler import label_rows
from icm_backend.engine.model import load_lm

LABELS = ["negative", "positive"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", help="append results here; a rerun skips finished seeds")
    args = ap.parse_args()
    rows = read_rows(str(files("icm_backend").joinpath("samples", "sst2_sample.tsv")))
    inputs = [{"text": r["text"]} for r in rows]
    gold = np.array([int(r["label"]) for r in rows])
    out = Path(args.json) if args.json else None
    done = [json.loads(l) for l in out.read_text().splitlines()] if out and out.exists() else []
    lm = load_lm(args.model)
    print(machine())
    for seed in args.seeds:
        if any(r["seed"] == seed for r in done):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "icm.ckpt.json"
            t0 = time.perf_counter()
            preds = label_rows(inputs, task="classify", labels=LABELS, method="icm", model=lm, seed=seed,
                               checkpoint=ckpt)
            wall = time.perf_counter() - t0
            own = np.array(json.loads(ckpt.read_text())["labels"])
        boot = label_rows(inputs, task="classify", labels=LABELS, method="bootstrap", model=lm, seed=seed)
        shipped = np.array([LABELS.index(p.label) for p in preds])
        conf = np.array([p.confidence for p in preds])
        row = {"seed": seed, "n": len(rows), "reported": float((shipped == gold).mean()),
               "search_own": float((own == gold).mean()),
               "bootstrap": float((np.array([LABELS.index(p.label) for p in boot]) == gold).mean()),
               "differ": int((shipped != own).sum()),
               "differ_right_reported": int(((shipped != own) & (shipped == gold)).sum()),
               "mean_conf_where_differ": float(conf[shipped != own].mean()) if (shipped != own).any() else None,
               "wall_s": round(wall, 1), "assessment": preds.assessment.summary(),
               # per row, so another reporting rule can be scored on the same runs without rerunning them
               "rows": {"gold": gold.tolist(), "own": own.tolist(), "reported": shipped.tolist(),
                        "confidence": [round(float(c), 4) for c in conf]}}
        done.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if out:
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    print(f"{'seed':>4} {'reported':>8} {'search own':>10} {'bootstrap':>9} {'differ':>6} {'of which reported right':>23}")
    for r in sorted(done, key=lambda r: r["seed"]):
        print(f"{r['seed']:4d} {r['reported']:8.3f} {r['search_own']:10.3f} {r['bootstrap']:9.3f} {r['differ']:6d} "
              f"{r['differ_right_reported']:23d}")
    print(f"mean {np.mean([r['reported'] for r in done]):8.3f} {np.mean([r['search_own'] for r in done]):10.3f} "
          f"{np.mean([r['bootstrap'] for r in done]):9.3f}")


if __name__ == "__main__":
    main()
