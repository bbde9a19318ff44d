# Kept as run (the editable icm_backend of this commit); see bench/RESULTS.md.
import sys, numpy as np
def rec(err, score, frac=0.2):
    k = int(np.ceil(frac*len(err))); top = np.argsort(-score, kind="stable")[:k]
    return err[top].sum()/max(err.sum(),1)
def margin(lp): return lp[...,1]-lp[...,0]
def ens(rows):
    p = np.exp(rows).mean(0); return np.log(p[:,1])-np.log(p[:,0])
for f in sys.argv[1:]:
    d = np.load(f); g = d["gold"]; S = d["score_rows"]; lab = d["label"]; err = lab != g
    m3 = ens(S[:3]); m9 = ens(S); sd = margin(S).std(0); z = margin(d["zero_shot"]); fl = margin(d["flipped"]); r = margin(d["randomctx"])
    sgn = np.where(lab==1, 1, -1)
    res = {
     "current(conf)": -d["conf"],
     "ens3 |m|": -np.abs(m3), "ens9 |m|": -np.abs(m9), "final only": -np.abs(margin(S[0])),
     "ens9 + sd": -np.abs(m9) + sd, "signed ens9 (y)": -sgn*m9,
     "random-ctx agree": -sgn*r, "zero-shot agree": -sgn*z, "flipped agree": -sgn*fl,
     "ens9 + randctx": -sgn*(m9 + r), "ens9+0.5rand": -sgn*(m9+0.5*r),
     "mean margin over 9": -sgn*margin(S).mean(0),
     "min over ctx": -np.min(sgn*margin(S), axis=0),
    }
    # class-centred: shift margin so the decision share matches the mean of sigmoid(m)
    print(f, "n", len(g), "acc", round(1-err.mean(),3), "errors", err.sum(), "neg share", round((lab==0).mean(),3), "gold neg", round((g==0).mean(),3))
    for k,v in res.items(): print(f"  {k:22s} {rec(err, v):.3f}")
