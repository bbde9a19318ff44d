"""The HTML report opened in a real headless Chromium: it renders and its plots decode.

Needs a chromium binary (Debian: `apt-get install -y chromium`); skipped with that hint otherwise.
Set ICM_CHROMIUM_BIN to point at another Chromium/Chrome.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from icm_backend.compare import compare, write_html_report
from icm_backend.compare.data import CompareInput, CrowdLabel
from icm_backend.engine.types import Prediction


def _chromium() -> str | None:
    env = os.environ.get("ICM_CHROMIUM_BIN")
    if env:
        return env if Path(env).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found: `apt-get install -y chromium` "
                                                         "(or set ICM_CHROMIUM_BIN)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-dev-shm-usage",
         "--no-first-run", "--virtual-time-budget=5000"]


def _result():
    rng = np.random.default_rng(0)
    crowd, preds, gold = [], {}, {}
    for t in range(60):
        truth = "True" if t % 2 else "False"
        gold[t] = truth
        for w in ("ann1", "ann2", "ann3"):
            crowd.append(CrowdLabel(t, w, truth if rng.random() < 0.8 else ("False" if truth == "True" else "True")))
        ok = rng.random() < 0.75
        preds[t] = Prediction(t, truth if ok else ("False" if truth == "True" else "True"), float(rng.uniform(0.5, 1)))
    return compare(CompareInput(predictions=preds, crowd=crowd, gold=gold))


def _run(args, cwd):
    return subprocess.run([CHROMIUM, *FLAGS, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(tmp_path):
    report = write_html_report(_result(), tmp_path / "report.html")
    n_imgs = report.read_text().count("<img ")
    assert n_imgs == 6  # reliability + heatmap + 4 confusion matrices (gold present)

    # 1) the DOM after load: count <img> elements that really decoded (naturalWidth > 0). The probe
    #    script goes into a copy so the report itself stays script-free.
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace(
        "</body>", "<script>window.addEventListener('load',()=>{const i=[...document.images];"
                   "document.body.setAttribute('data-decoded',i.filter(x=>x.complete&&x.naturalWidth>0).length);"
                   "document.body.setAttribute('data-imgs',i.length);});</script></body>"))
    dom = _run(["--dump-dom", probe.as_uri()], tmp_path).stdout
    assert re.search(rf'data-imgs="{n_imgs}"', dom), dom[-2000:]
    assert re.search(rf'data-decoded="{n_imgs}"', dom), "some plots did not decode"
    assert "Disagreements worth a look" in dom

    # 2) a screenshot that is not blank
    shot = tmp_path / "shot.png"
    _run([f"--screenshot={shot}", "--window-size=1200,2400", report.as_uri()], tmp_path)
    assert shot.exists() and shot.stat().st_size > 10_000
    import matplotlib.image as mpimg

    px = mpimg.imread(shot)[..., :3]
    assert px.shape[:2] == (2400, 1200)
    assert px.std() > 0.05  # not a single colour
    non_white = (px < 0.9).any(axis=-1).mean()
    assert non_white > 0.05, f"only {non_white:.1%} of the screenshot is not white"
    keep = os.environ.get("ICM_KEEP_SCREENSHOT")
    if keep:  # to look at it by hand
        shutil.copy(shot, keep)
