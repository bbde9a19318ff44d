"""`icm-backend finetune` (labelled file -> LoRA version) and `icm-backend versions` (list / roll back)."""

from __future__ import annotations

import json
import sys

from icm_backend.errors import InputError


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a LoRA version on labelled rows (JSON/JSONL/CSV/TSV with a 'label' field)",
        description="Writes MODEL_DIR/versions/<version>/ and, if the promotion gate passes (the new version beats "
                    "the serving one on the held-out labels, as the server's training does), makes it current. "
                    "Pass MODEL_DIR/versions/<version> (or MODEL_DIR itself) as --model to `icm-backend label`.")
    p.add_argument("labels_file", metavar="LABELS", help="rows with their input fields and a 'label'")
    p.add_argument("--task", required=True, help="preset: classify, claims, comparison, ...")
    p.add_argument("--labels", default=None, help="label words, comma-separated (classify); a numeric label "
                                                  "in the file is an index into them")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="where versions/<version>/ is written")
    p.add_argument("--model", default=None, help="base model (default: ICM_MODEL or gemma3-270m)")
    p.add_argument("--max-steps", type=int, default=48, help="cap on optimizer steps (default 48)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--holdout", type=float, default=0.2, help="held-out fraction for early stopping (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-promote", action="store_true", help="write the version but do not make it current")
    p.add_argument("--no-gate", action="store_true",
                   help="make the version current without the promotion gate (it is NOT compared with the serving one)")
    p.add_argument("--method", default="icm", help="the method the gate compares with (default icm, what serves)")
    p.set_defaults(func=run_finetune)

    v = subparsers.add_parser("versions", help="list fine-tuned versions of a MODEL_DIR, or pin one (rollback)")
    v.add_argument("model_dir", metavar="MODEL_DIR")
    v.add_argument("--pin", default=None, metavar="VERSION", help="serve VERSION from now on ('base' = base model)")
    v.set_defaults(func=run_versions)


def run_finetune(args) -> int:
    from tqdm import tqdm

    from icm_backend.finetune.data import training_set_from_file
    from icm_backend.finetune.lora import TrainConfig, context_for
    from icm_backend.finetune.pipeline import base_model_of, gate_request, train_gate_promote
    from icm_backend.finetune.prompts import label_words

    labels = label_words(args.task, [x.strip() for x in args.labels.split(",")] if args.labels else None)
    if args.max_steps < 1:
        raise InputError("--max-steps: must be at least 1")
    if not 0 <= args.holdout < 1:
        raise InputError("--holdout: must be in [0, 1)")
    ts = training_set_from_file(args.labels_file, args.task, labels)
    cfg = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.lr,
                      holdout_fraction=args.holdout, seed=args.seed, context=context_for(args.method))
    bar = tqdm(total=cfg.max_steps, desc="fine-tuning", unit="step", file=sys.stderr)

    def progress(step: int, total: int, info: dict) -> None:
        bar.n = step
        bar.set_postfix(info, refresh=False)
        bar.refresh()

    gate = None if args.no_gate else gate_request(args.out, base_model_of(args.model), args.method)
    if gate and not args.holdout:
        raise InputError("--holdout 0 leaves the promotion gate nothing to compare on: pass --no-gate to skip it")
    try:
        v, verdict, promoted = train_gate_promote(ts, args.task, labels, args.out, args.model, cfg, gate, progress,
                                                  may_promote=lambda: not args.no_promote)
    finally:
        bar.close()
    if args.no_gate:
        print("promotion gate skipped (--no-gate): the version was not compared with the serving one",
              file=sys.stderr)
    best = v.metrics.get("heldout_best") or {}
    print(json.dumps({"version": v.name, "path": str(v.path), "current": promoted,
                      "gate": "skipped (--no-gate)" if verdict is None else verdict.reason,
                      "steps": v.metrics["steps"], "stopped": v.metrics["stopped"],
                      "heldout_accuracy_before": (v.metrics.get("heldout_before") or {}).get("accuracy"),
                      "heldout_accuracy_best": best.get("accuracy")}))
    return 0


def run_versions(args) -> int:
    from icm_backend.versions import current_name, list_versions, promote

    if args.pin:
        promote(args.model_dir, args.pin)
    from icm_backend.finetune.trial import challenger

    current = current_name(args.model_dir)
    on_trial = challenger(args.model_dir, current or "base")
    for v in list_versions(args.model_dir):
        best = (v.metrics.get("heldout_best") or {}).get("accuracy")
        print(f"{'*' if v.name == current else ' '} {v.name}  {v.created_at}  base={v.base_model}  "
              f"rows={v.metrics.get('train_rows')}+{v.metrics.get('heldout_rows')}  heldout_acc={best}  "
              f"gate={_gate_status(v.metrics, on_trial is not None and v.name == on_trial.name)}")
    if current is None:
        print("* base (no fine-tuned version is current)")
    return 0


def _gate_status(metrics: dict, on_trial: bool) -> str:
    """promoted / kept / on trial (the disagreements recorded per project) / retired, as docs/finetune.md names them."""
    gate, trials = metrics.get("gate") or {}, metrics.get("trials") or {}
    trial = gate.get("trial") or {}
    if not gate:
        return "none"
    if gate.get("promoted"):
        return "promoted by review" if trial.get("promote") else "promoted"
    if trial.get("retire"):
        return "retired by review"
    if on_trial:
        return "kept, on trial (" + (", ".join(f"project {p}: {t['disagreements']} disagreements"
                                               for p, t in sorted(trials.items())) or "no ICM job since") + ")"
    return "kept"

