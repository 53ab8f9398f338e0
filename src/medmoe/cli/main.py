"""Entry point of the `medmoe` command.

Each command group lives in its own module with an ``add_parser(subparsers)`` function that registers
its sub-commands; a sub-command parser sets ``func`` to a handler taking the parsed namespace and
returning an exit code. Handlers import the library lazily so that ``medmoe --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from medmoe.settings import SettingsParser

# Command groups, in the order `medmoe --help` lists them.
GROUPS = ("medmoe.cli.models", "medmoe.cli.data", "medmoe.cli.align", "medmoe.cli.seg", "medmoe.cli.demo",
          "medmoe.cli.serve", "medmoe.cli.export")


def build_parser() -> SettingsParser:
    parser = SettingsParser(
        prog="medmoe",
        description="Medical vision-language Mixture-of-Experts: MedMoE alignment and MoME segmentation.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        importlib.import_module(name).add_parser(sub)
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
        print(f"medmoe: error: {_one_line(str(err))}", file=sys.stderr)
        return 1
    except OSError as err:  # a path the user gave: missing, unwritable, under a file, a full disk ...
        print(f"medmoe: error: {os_error_text(err)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("medmoe: error: out of memory (see docs/security.md for the size limits of inputs)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medmoe: interrupted", file=sys.stderr)
        return 130


def os_error_text(err: OSError) -> str:
    """``path: reason`` for an OS error (both paths of a rename), without Python's ``[Errno N]`` noise."""
    reason = err.strerror or str(err) or type(err).__name__
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    return f"{' -> '.join(os.fsdecode(p) for p in paths)}: {reason}" if paths else reason


def _one_line(text: str) -> str:
    """A message on one line (a few carry a matrix or a list on the next lines): lines joined by spaces."""
    return " ".join(line.strip() for line in text.strip().splitlines())


if __name__ == "__main__":
    sys.exit(main())
