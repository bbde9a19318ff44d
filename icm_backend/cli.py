"""Thin command-line layer: parses arguments, calls the library, prints one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from icm_backend.errors import InputError

# Each feature module contributes its own subcommand(s) through `add_subcommands(subparsers)`;
# the module is imported lazily so `icm-backend --help` stays fast and a missing optional
# dependency only breaks the subcommand that needs it.
SUBCOMMAND_MODULES = [
    "icm_backend.commands.label",
    "icm_backend.commands.eval",
    "icm_backend.commands.demo",
    "icm_backend.commands.serve",
    "icm_backend.commands.jobs",
    "icm_backend.commands.finetune",
    "icm_backend.commands.compare",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icm-backend", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    import importlib

    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that feature is not built yet
                continue
            raise
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
