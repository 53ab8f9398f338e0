"""Entry point of the `medmoe` command.

Each command group lives in its own module with an ``add_parser(subparsers)`` function that registers
its sub-commands; a sub-command parser sets ``func`` to a handler taking the parsed namespace and
returning an exit code. Handlers import the library lazily so that ``medmoe --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Command groups, in the order `medmoe --help` lists them. A module that is missing is skipped so that a
# partial checkout still runs the groups it has.
GROUPS = ("medmoe.cli.models", "medmoe.cli.data", "medmoe.cli.align", "medmoe.cli.seg", "medmoe.cli.demo",
          "medmoe.cli.serve", "medmoe.cli.export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medmoe",
        description="Medical vision-language Mixture-of-Experts: MedMoE alignment and MoME segmentation.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from medmoe.errors import MedMoEError

    try:
        return int(args.func(args) or 0)
    except MedMoEError as err:
        print(f"medmoe: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medmoe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
