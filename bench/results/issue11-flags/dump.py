# Kept as run (the editable icm_backend of this commit), but for its paths: they were a developer's absolute
# paths and are now the repo's (data/sst2/dev.tsv, bench/results/); see bench/RESULTS.md.
"""Round-0 ICM on SST-2 dev rows; save every per-row view for offline flag-ranking experiments."""
import sys, csv, numpy as np
from pathlib import Path
REPO = Path(__file__).resolve().parents[3]  # the repo root
import icm_backend.engine.labeler as L
from icm_backend.engine.search import SearchConfig
from icm_backend.engine.calibration import ReviewConfig
from icm_backend.engine.model import load_lm

start, n, seed, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
raw = list(csv.DictReader(open(REPO / 'data' / 'sst2' / 'dev.tsv'), delimiter='\t', quoting=csv.QUOTE_NONE))[start:start+n]
words = ["negative", "positive"]
rows = [{"text": r["text"]} for r in raw]
gold = np.array([int(r["label"]) if r["label"].isdigit() else words.index(r["label"]) for r in raw])
saved = {}
orig_assess = L.assess
def spy(problem, score_rows, zero_shot, fixed, review, use_consistency):
    saved["score_rows"] = np.stack(score_rows); saved["zero_shot"] = zero_shot
    preds, a = orig_assess(problem, score_rows, zero_shot, fixed, review, use_consistency)
    saved["conf"] = np.array([p.confidence for p in preds]); saved["label"] = np.array([words.index(p.label) for p in preds])
    return preds, a
L.assess = spy
orig_resampled = L.ICMSearch.resampled_rows
def resampled(self, labels, samples, s):
    out_ = orig_resampled(self, labels, samples, s)
    saved["flipped"] = self.final_rows(1 - np.asarray(labels))
    saved["search_labels"] = np.asarray(labels)
    rng = np.random.default_rng(s + 5)
    saved["randomctx"] = self.final_rows(rng.integers(0, 2, size=len(labels)))
    return out_
L.ICMSearch.resampled_rows = resampled
lm = load_lm("gemma3-270m")
preds = L.label_rows(rows, task="classify", labels=words, method="icm", model=lm, seed=seed,
                     config=SearchConfig(max_iters=2048, context_tokens=384), review=ReviewConfig(fraction=0.2, resamples=8))
np.savez(out, gold=gold, **saved)
lab = saved["label"]; err = lab != gold
flag = np.argsort(saved["conf"], kind="stable")[:int(np.ceil(0.2*n))]
print(out, "acc", (~err).mean(), "errors", err.sum(), "recall@20%", err[flag].sum()/max(err.sum(),1))
