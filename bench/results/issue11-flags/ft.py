# Kept as run (the editable icm_backend of this commit), but for its paths: they were a developer's absolute
# paths and are now the repo's (data/sst2/dev.tsv, bench/results/, output under runs/flag/ instead of
# /tmp/flag/); see bench/RESULTS.md.
"""Does fine-tuning on the random arm's 128 reviewed labels lift ICM on the other 384 tasks? (seed-0 state)"""
import sys, json, csv, time, numpy as np
from pathlib import Path
REPO = Path(__file__).resolve().parents[3]  # the repo root
(REPO / "runs" / "flag").mkdir(parents=True, exist_ok=True)
sys.path.insert(0, str(REPO))
from icm_backend.engine.labeler import label_rows
from icm_backend.engine.search import SearchConfig
from icm_backend.engine.calibration import ReviewConfig
from icm_backend.engine.model import load_lm
from icm_backend.finetune.data import TrainingRow, TrainingSet
from icm_backend.finetune.lora import TrainConfig
from icm_backend.finetune.pipeline import train_version
arm, steps, lr, holdout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
raw = list(csv.DictReader(open(REPO / 'data' / 'sst2' / 'dev.tsv'), delimiter='\t', quoting=csv.QUOTE_NONE))[:512]
words = ["negative", "positive"]
rows = [{"text": r["text"]} for r in raw]; gold = [words[int(r["label"])] for r in raw]
st = json.load(open(REPO / "bench" / "results" / "issue11-cpu" / f"state-{arm}-seed{seed}.json"))
rev = {int(k): v for k, v in st["reviewed"].items()}
free = [i for i in range(512) if i not in rev]
t0 = time.time()
if steps > 0:
    ts = TrainingSet(rows=[TrainingRow(row=dict(rows[i]), label=y, source="human", task_id=i) for i, y in sorted(rev.items())])
    v = train_version(ts, "classify", words, REPO / "runs" / "flag" / f"ft-{arm}-{steps}-{lr}-{holdout}-s{seed}", "gemma3-270m",
                      TrainConfig(max_steps=steps, seed=seed, batch_size=4, context_tokens=192, learning_rate=lr, holdout_fraction=holdout))
    t1 = time.time()
    lm = load_lm(str(v.path), "none")
else:
    t1 = time.time(); v = None
    lm = load_lm("gemma3-270m")
preds = label_rows(rows, task="classify", labels=words, method="icm", model=lm, seed=seed,
                   config=SearchConfig(max_iters=2048, context_tokens=384), fixed=rev, review=ReviewConfig(fraction=0.2))
acc = np.mean([preds[i].label == gold[i] for i in free])
np.savez(REPO / "runs" / "flag" / f"ftlab-{arm}-{steps}-{lr}-{holdout}-s{seed}.npz", labels=np.array([words.index(p.label) for p in preds]), conf=np.array([p.confidence for p in preds]), free=np.array(free))
print(f"RESULT seed={seed} arm={arm} steps={steps} lr={lr} holdout={holdout} reviewed={len(rev)} free acc {acc:.4f} train {t1-t0:.0f}s label {time.time()-t1:.0f}s metrics {getattr(v,'metrics',None)}", flush=True)
