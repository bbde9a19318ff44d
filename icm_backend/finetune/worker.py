"""Child process of the "train" job: `python -m icm_backend.finetune.worker REQUEST.json`.

Reads the training request the job wrote, trains, writes the version (atomic), switches CURRENT, and
reports on stdout as JSON lines: {"event":"progress",...} per step, then {"event":"done",...}.
Errors go to stderr; the last line is the reason the job shows.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

from icm_backend.errors import InputError
from icm_backend.finetune.data import TrainingRow, TrainingSet
from icm_backend.finetune.lora import TrainConfig
from icm_backend.finetune.pipeline import train_gate_promote


def die_with_parent() -> int:
    """A trainer whose server died must not finish and switch CURRENT behind a job already marked
    failed: ask Linux to SIGKILL us when the parent goes (best effort elsewhere; the progress
    callback also checks the parent pid every step)."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    return parent


def main(argv: list[str]) -> int:
    parent = die_with_parent()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from icm_backend.finetune.lora import training_threads

    # The whole child (training and the gate's labellings) shares the box with the server that started it.
    torch.set_num_threads(training_threads())
    req = json.loads(open(argv[0]).read())
    ts = TrainingSet(rows=[TrainingRow(**r) for r in req["rows"]], skipped=req.get("skipped", []),
                     conflicts=req.get("conflicts", 0))

    def progress(step: int, total: int, info: dict) -> None:
        if os.getppid() != parent:
            raise SystemExit("the server that started this training is gone; not writing a version")
        print(json.dumps({"event": "progress", "step": step, "total": total, "info": info}), flush=True)

    gate = req.get("gate")  # {"method", "serving_model", "serving_name"}: promote only if the served method gains
    gone = []

    def still_wanted() -> bool:  # the job was failed meanwhile: keep the version on disk, do not serve it
        if os.getppid() != parent:
            gone.append(True)
        return not gone

    try:
        v, verdict, promoted = train_gate_promote(ts, req["task"], req["labels"], req["model_dir"],
                                                  req.get("base_model"), TrainConfig(**req["config"]), gate,
                                                  progress, req.get("extra_metrics"), may_promote=still_wanted)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if gone:
        print(f"error: server gone before version {v.name} could be made current", file=sys.stderr)
        return 3
    best = v.metrics.get("heldout_best") or {}
    print(json.dumps({"event": "done", "version": v.name, "steps": v.metrics["steps"],
                      "stopped": v.metrics["stopped"], "heldout_accuracy": best.get("accuracy"),
                      "promoted": promoted, "gate": verdict.reason if verdict else None}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
