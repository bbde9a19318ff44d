"""Thin command-line layer: parses arguments, calls the library, prints one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from icm_backend.errors import InputError

from icm_backend.commands import compare, demo, eval, finetune, jobs, label, report, serve

# Each command module adds its subcommand(s); their heavy imports (Flask, peft, crowd-kit) happen
# inside the command, so `--help` stays fast and a missing optional extra breaks only its command.
SUBCOMMANDS = (label, eval, report, demo, serve, jobs, finetune, compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icm-backend", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: progress so far is in the checkpoint; rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
