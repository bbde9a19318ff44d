# Kept as run (from /tmp/flag, data at /work/shared/data, the editable icm_backend of this commit); see bench/RESULTS.md.
import sys, csv, numpy as np
from math import comb
raw = list(csv.DictReader(open('/work/shared/data/sst2/dev.tsv'), delimiter='\t', quoting=csv.QUOTE_NONE))[:512]
g = np.array([int(r["label"]) for r in raw])
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
free = a["free"]; ra = a["labels"][free] == g[free]; rb = b["labels"][free] == g[free]
bb, cc = int((rb & ~ra).sum()), int((ra & ~rb).sum())
p = sum(comb(bb+cc, k) for k in range(bb, bb+cc+1)) / 2**(bb+cc)
print(f"{sys.argv[2]} vs {sys.argv[1]}: acc {ra.mean():.4f} -> {rb.mean():.4f} on {len(free)}; only new right {bb}, only base right {cc}, one-sided sign p {p:.4f}")
