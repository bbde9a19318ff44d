"""Child process of the "train" job: `python -m icm_backend.finetune.worker REQUEST.json`.

Reads the training request the job wrote, trains, writes the version (atomic), switches CURRENT, and
reports on stdout as JSON lines: {"event":"progress",...} per step, then {"event":"done",...}.
Errors go to stderr; the last line is the reason the job shows.
"""

from __future__ import annotations

import json
import logging
import sys

from icm_backend.errors import InputError
from icm_backend.finetune.data import TrainingRow, TrainingSet
from icm_backend.finetune.lora import TrainConfig
from icm_backend.finetune.pipeline import train_version
from icm_backend.finetune.versions import promote


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    req = json.loads(open(argv[0]).read())
    ts = TrainingSet(rows=[TrainingRow(**r) for r in req["rows"]], skipped=req.get("skipped", []),
                     conflicts=req.get("conflicts", 0))

    def progress(step: int, total: int, info: dict) -> None:
        print(json.dumps({"event": "progress", "step": step, "total": total, "info": info}), flush=True)

    try:
        v = train_version(ts, req["task"], req["labels"], req["model_dir"], req.get("base_model"),
                          TrainConfig(**req["config"]), progress, req.get("extra_metrics"))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    promote(req["model_dir"], v.name)
    best = v.metrics.get("heldout_best") or {}
    print(json.dumps({"event": "done", "version": v.name, "steps": v.metrics["steps"],
                      "stopped": v.metrics["stopped"], "heldout_accuracy": best.get("accuracy")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
