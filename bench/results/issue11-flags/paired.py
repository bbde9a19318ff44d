# Kept as run (the editable icm_backend of this commit), but for its paths: they were a developer's absolute
# paths and are now the repo's (data/sst2/dev.tsv, bench/results/); see bench/RESULTS.md.
import sys, csv, numpy as np
from pathlib import Path
REPO = Path(__file__).resolve().parents[3]  # the repo root
from math import comb
raw = list(csv.DictReader(open(REPO / 'data' / 'sst2' / 'dev.tsv'), delimiter='\t', quoting=csv.QUOTE_NONE))[:512]
g = np.array([int(r["label"]) for r in raw])
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
free = a["free"]; ra = a["labels"][free] == g[free]; rb = b["labels"][free] == g[free]
bb, cc = int((rb & ~ra).sum()), int((ra & ~rb).sum())
p = sum(comb(bb+cc, k) for k in range(bb, bb+cc+1)) / 2**(bb+cc)
print(f"{sys.argv[2]} vs {sys.argv[1]}: acc {ra.mean():.4f} -> {rb.mean():.4f} on {len(free)}; only new right {bb}, only base right {cc}, one-sided sign p {p:.4f}")
