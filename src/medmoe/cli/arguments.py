"""What the ``medmoe`` command modules share: registering a command or a group, flags several commands take,
and the train command.

One place for a flag that several commands take (``--model``, ``--data``, ``--batch-size`` ...), so that its
name, default and help read the same everywhere; each function adds the flags to a given parser.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any

from medmoe.settings import add_dataclass_flags, config_from_args


def add_command(group: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int], *,
                help: str | None = None, description: str | None = None, epilog: str | None = None,
                keep_lines: bool = False) -> argparse.ArgumentParser:
    """Register sub-command ``name`` on ``group``, handled by ``run``; returns its parser, to add the flags to.

    The command's help and description are ``run``'s docstring (see :func:`command_text`): its first paragraph
    is the one-line help, the rest the description. With an epilog or ``keep_lines``, the description keeps the
    docstring's line breaks and is printed as written (examples, tables, lines that must stay lines); otherwise
    its lines are joined and wrapped to the terminal. ``help`` and ``description`` given here replace the
    docstring's; a description given here is printed as written when it has line breaks.
    """
    doc_help, doc_description = command_text(run, keep_lines=keep_lines or epilog is not None)
    help = doc_help if help is None else help
    description = doc_description if description is None else description
    raw = epilog is not None or "\n" in (description or "")
    parser = group.add_parser(name, help=help, description=description, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter)
    parser.set_defaults(func=run)
    return parser


def command_text(run: Callable[..., Any], *, keep_lines: bool) -> tuple[str | None, str | None]:
    """The help and description of the command ``run`` handles, from its docstring (``inspect.cleandoc``).

    The help is the first paragraph on one line; the description is the rest, with its line breaks when
    ``keep_lines``, else on one line (single spaces). None for what the docstring lacks (no docstring, or only
    a first paragraph).
    """
    doc = inspect.cleandoc(run.__doc__ or "")
    first, _, rest = doc.partition("\n\n")
    rest = rest.strip()
    return " ".join(first.split()) or None, (rest if keep_lines else " ".join(rest.split())) or None


def add_command_group(sub: argparse._SubParsersAction, name: str, *, help: str) -> argparse._SubParsersAction:
    """``medmoe NAME``: a group of sub-commands (returned, to add them to); the group alone prints its help."""
    parser = sub.add_parser(name, help=help)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    return parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


MODEL_HELP = "saved model directory (or a registered name, untrained)"


def add_model_data_arguments(parser: argparse.ArgumentParser, *, model_help: str = MODEL_HELP) -> None:
    """``--model`` (required) and ``--data MANIFEST|SHARDS`` (required)."""
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--data", required=True, metavar="MANIFEST|SHARDS", help="manifest or shard source")


def add_loader_arguments(parser: argparse.ArgumentParser, *, device: str = "auto") -> None:
    """``--batch-size`` (32), ``--device`` (``device``), ``--workers`` (0) and ``--no-progress``."""
    parser.add_argument("--batch-size", type=int, default=32, help="images a batch (default 32)")
    device_help = ("auto (a GPU when present, default), cpu, cuda or cuda:N" if device == "auto"
                   else f"{device} (default), auto (a GPU when present), cuda or cuda:N")
    parser.add_argument("--device", default=device, help=device_help)
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_train_command(group: argparse._SubParsersAction, *, task_config: str, title: str,
                      run: Callable[[argparse.Namespace], int]) -> None:
    """Register ``train``: the task config's fields as flags, then the trainer's (see ``medmoe.settings``).

    The flags are added when the command is first used (``group`` makes :class:`SettingsParser` parsers), so
    that other commands do not import the task's module.

    Args:
        group: the sub-parsers of ``medmoe align`` or ``medmoe seg``.
        task_config: ``"module:Class"`` of the task's config dataclass.
        title: the name of the task flags' group in ``--help``.
        run: the handler; its docstring is the command's help and description (see :func:`add_command`).
    """

    def add_flags(parser: argparse.ArgumentParser) -> None:
        import dataclasses
        import importlib

        from medmoe.train import TrainConfig, add_training_arguments

        module, name = task_config.split(":")
        trainer_fields = [f.name for f in dataclasses.fields(TrainConfig)]  # --seed, --no-progress: the trainer's
        add_dataclass_flags(parser, getattr(importlib.import_module(module), name), title=title, skip=trainer_fields)
        add_training_arguments(parser)

    add_command(group, "train", run).defer(add_flags)


def run_train_command(args: argparse.Namespace, config_class: type, make_task: Callable[[Any], Any],
                      report: Callable[[Any], None]) -> int:
    """Build the task config from ``args``, check RUN_DIR, train, and let the main process ``report`` the result.

    Args:
        args: the parsed ``train`` flags.
        config_class: the task's config dataclass (built with ``config_from_args``).
        make_task: the task made from that config.
        report: prints the :class:`~medmoe.train.TrainResult` (called on the main process only).

    Returns:
        0 (errors are raised).
    """
    from medmoe.paths import check_run_dir
    from medmoe.train import is_main, run_training

    config = config_from_args(config_class, args)
    check_run_dir(args.out)
    result = run_training(make_task(config), args)
    if is_main():
        report(result)
    return 0


def format_numbers(values: dict[str, float]) -> str:
    """``a=0.1235, b=2`` from ``{"b": 2.0, "a": 0.12345}``: sorted by name, four significant digits."""
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
