# Kept as run (the editable icm_backend of this commit); see bench/RESULTS.md.
import sys, numpy as np
from scipy.optimize import minimize
def ens(rows):
    p = np.exp(rows).mean(0); return np.log(p[:,1])-np.log(p[:,0])
def fit(m, y, l2b=1.0, l2a=0.0):
    def nll(w):
        a, b = w; z = a*m + b
        return np.sum(np.logaddexp(0, z) - y*z) + l2b*b*b/2 + l2a*(a-1)**2/2
    return minimize(nll, [1.0, 0.0], method="L-BFGS-B").x
for f in sys.argv[1:]:
    d = np.load(f); g = d["gold"]; m = ens(d["score_rows"][:3])
    order = np.argsort(np.abs(m), kind="stable")
    print(f)
    for k in (32, 64, 96, 128):
        rev, rest = order[:k], order[k:]
        base = ((m[rest] > 0) == g[rest]).mean()
        out = [f"k={k} base {base:.3f}"]
        for l2b in (0.0, 1.0, 10.0):
            a, b = fit(m[rev], g[rev], l2b)
            acc = (((a*m[rest]+b) > 0) == g[rest]).mean()
            out.append(f"l2b={l2b}: a={a:.2f} b={b:.2f} cut={-b/a:.2f} acc {acc:.3f}")
        # random review instead
        rng = np.random.default_rng(0); rr = rng.permutation(len(m)); rev2, rest2 = rr[:k], rr[k:]
        a, b = fit(m[rev2], g[rev2], 1.0)
        out.append(f"| random: base {((m[rest2]>0)==g[rest2]).mean():.3f} platt {(((a*m[rest2]+b)>0)==g[rest2]).mean():.3f} cut={-b/a:.2f}")
        print("  ", "; ".join(out))
