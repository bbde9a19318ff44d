"""`icm-backend compare`: ICM labels vs crowd labels -> HTML report + JSON summary.

Thin layer over icm_backend.compare (see its docstring for examples); all logic lives there.

    icm-backend compare --labels icm.jsonl --crowd crowd.csv --report report.html --json summary.json
    icm-backend compare --labels icm.jsonl --crowd test_alpaca.json --crowd-format alpaca --json s.json
    icm-backend compare --crowd test_alpaca.json --crowd-format alpaca --write-crowd crowd.jsonl
    icm-backend compare --ls-url http://localhost:8080 --ls-api-key KEY --ls-project 3 --report r.html
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from icm_backend.errors import InputError


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("compare", help="compare ICM labels against crowdsourced labels",
                              description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    src = p.add_argument_group("files")
    src.add_argument("--labels", help="ICM output JSONL (icm-backend label): index, label, confidence, flags")
    src.add_argument("--crowd", help="crowd labels: JSONL/CSV rows (task, worker, label), or the alpaca JSON")
    src.add_argument("--crowd-format", default="auto", choices=["auto", "jsonl", "csv", "alpaca"])
    src.add_argument("--alpaca-mirror-pairs", action="store_true",
                     help="alpaca: give the second row of each pair the negated votes (asymmetry rule)")
    src.add_argument("--gold", help="gold labels: JSONL/CSV rows (task, label) or an alpaca-style JSON list")
    src.add_argument("--label-set", help="comma-separated label words; default: ICM (+gold) labels")
    src.add_argument("--write-crowd", help="write the crowd votes as rows (task, worker, label) to this .jsonl/.csv")
    ls = p.add_argument_group("live Label Studio project")
    ls.add_argument("--ls-url", default=os.environ.get("LABEL_STUDIO_URL") or os.environ.get("LABEL_STUDIO_HOST"))
    ls.add_argument("--ls-api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"))
    ls.add_argument("--ls-project", type=int, help="project id: crowd = annotations, ICM = predictions")
    ls.add_argument("--no-flag", action="store_true", help="do not flag disagreement tasks in Label Studio")
    out = p.add_argument_group("outputs / thresholds")
    out.add_argument("--report", help="HTML report path")
    out.add_argument("--json", dest="json_path", help="JSON summary path ('-' = stdout)")
    out.add_argument("--confident", type=float, default=0.8, help="ICM confidence >= this is 'confident'")
    out.add_argument("--unsure", type=float, default=0.6, help="ICM confidence < this is 'unsure'")
    out.add_argument("--split-share", type=float, default=0.6, help="crowd top share <= this is 'split'")
    p.set_defaults(func=run)


def run(args) -> int:
    from icm_backend.compare import compare, load_inputs, write_html_report
    from icm_backend.compare.disagreements import Thresholds
    from icm_backend.compare.loaders import load_alpaca, load_crowd, write_crowd_rows

    if args.write_crowd:
        if not args.crowd:
            raise InputError("--write-crowd needs --crowd")
        crowd = (load_alpaca(args.crowd, args.alpaca_mirror_pairs)[0] if args.crowd_format == "alpaca"
                 else load_crowd(args.crowd, args.crowd_format))
        write_crowd_rows(crowd, args.write_crowd)
        print(f"wrote {len(crowd)} crowd rows to {args.write_crowd}", file=sys.stderr)
        if not args.labels and args.ls_project is None:
            return 0
    th = Thresholds(confident=args.confident, unsure=args.unsure, split_share=args.split_share)
    label_set = [x.strip() for x in args.label_set.split(",") if x.strip()] if args.label_set else None
    if args.ls_project is not None:
        from icm_backend.compare.project import compare_project

        if not args.ls_url:
            raise InputError("--ls-url (or LABEL_STUDIO_URL) is required with --ls-project")
        result = compare_project(args.ls_url, args.ls_api_key, args.ls_project, thresholds=th,
                                 flag=not args.no_flag, label_set=label_set).result
    else:
        if not args.labels or not args.crowd:
            raise InputError("--labels and --crowd are required (or --ls-project for a live project)")
        inp = load_inputs(args.labels, args.crowd, args.gold, args.crowd_format, label_set,
                          mirror_pairs=args.alpaca_mirror_pairs)
        result = compare(inp, th)
    if args.report:
        write_html_report(result, args.report)
        print(f"report: {args.report}", file=sys.stderr)
    text = json.dumps(result.summary, indent=2, sort_keys=False)
    if args.json_path == "-" or (not args.json_path and not args.report):
        print(text)
    elif args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(text + "\n", encoding="utf-8")
    for w in result.summary["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return 0
