"""A stand-in with label_rows' signature: deterministic, instant, exercises flags and checkpoints.

Used in-process: ModelHost(config, labeler=fake_label_rows).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from icm_backend.engine.types import INCONSISTENT, Flag, Prediction

CALLS: list[dict] = []


def fake_label_rows(rows, *, task, labels=None, method="icm", model=None, seed=0, checkpoint=None, progress=None,
                    config=None, on_chunk=None, **_settings):
    CALLS.append({"n": len(rows), "task": task, "method": method, "checkpoint": checkpoint})
    words = list(labels) if labels else ["True", "False"]
    delay = float(os.environ.get("FAKE_LABELER_DELAY", "0"))
    done = {}
    if checkpoint and Path(checkpoint).exists():
        done = {int(k): v for k, v in json.loads(Path(checkpoint).read_text()).items()}
    preds, pending = [], []
    size = getattr(config, "chunk_size", None) or len(rows)
    for i, row in enumerate(rows):
        if i not in done:
            if delay:
                time.sleep(delay)
            key = str(row.get("text") or row.get("choice") or "")
            done[i] = [words[len(key) % len(words)], 0.5 + (len(key) % 5) / 10]
            if checkpoint:
                Path(checkpoint).write_text(json.dumps(done))
        if progress:
            progress(i + 1, len(rows), "fake")
        label, conf = done[i]
        flags = []
        if len(rows) > 1 and i in (0, 1):  # rows 0 and 1 conflict, always
            flags.append(Flag(INCONSISTENT, (1 - i,), "rows disagree"))
        preds.append(Prediction(index=i, label=label, confidence=conf, flags=flags))
        pending.append(preds[-1])
        if on_chunk is not None and (len(pending) == size or i == len(rows) - 1):
            on_chunk(pending)  # as label_rows hands a big project's chunks over
            pending = []
    return preds


def unsure_label_rows(rows, **kw):
    """fake_label_rows, with an assessment that finds the labelling unreliable (estimated accuracy 0.52)."""
    from icm_backend.engine.calibration import Assessment
    from icm_backend.engine.types import Labelling

    out = Labelling(fake_label_rows(rows, **kw))
    out.assessment = Assessment(n=len(rows), n_fixed=0, temperature=5.0, calibrated_on="agreement with zero-shot",
                                estimated_accuracy=0.52, kappa_zero_shot=0.0, label_share={}, marginal={},
                                drift=0.0, drift_corrected=False, reliable=False,
                                reasons=["estimated accuracy 0.52 is under 0.70"])
    return out
