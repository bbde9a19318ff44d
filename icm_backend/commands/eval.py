"""`icm-backend eval OUT.jsonl --gold INPUT [--task PRESET] [--labels a,b]`"""

from __future__ import annotations

from icm_backend.commands.label import parse_labels
from icm_backend.engine.evaluate import evaluate
from icm_backend.engine.io import read_predictions, read_rows
from icm_backend.engine.tasks import Problem, build_problem


def add_subcommands(sub) -> None:
    p = sub.add_parser("eval", help="accuracy and calibration of a label file against gold")
    p.add_argument("predictions", help="output of `icm-backend label`")
    p.add_argument("--gold", required=True, help="the input file with its gold column")
    p.add_argument("--gold-field", default="label")
    p.add_argument("--task", default=None, help="preset (default: classify when --labels is given, else claims)")
    p.add_argument("--labels", help="label words, for classify (class indices in gold map onto them)")
    p.set_defaults(func=run)


def run(args) -> int:
    preds = read_predictions(args.predictions)
    gold_rows = read_rows(args.gold)
    labels = parse_labels(args.labels)
    if labels is None and args.task in (None, "classify"):
        labels = sorted({p.label for p in preds})
        if set(labels) <= {"True", "False"}:
            labels = None
    multiclass = labels is not None
    problem = Problem(args.task or ("classify" if multiclass else "claims"),
                      labels or ["True", "False"], [], "none", multiclass=multiclass)
    print(evaluate(preds, gold_rows, problem, args.gold_field).table())
    return 0
