"""`medmoe models`: list registered architectures and show their configs."""

from __future__ import annotations

import argparse
import json

from medmoe.cli.arguments import add_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "models", run)
    parser.add_argument("name", nargs="?", help="a model name: print its JSON config")


def run(args: argparse.Namespace) -> int:
    """list registered models or show one config"""
    from medmoe.registry import get_model_config, list_models

    if args.name:
        print(json.dumps(get_model_config(args.name), indent=2))
    else:
        for name in list_models():
            print(f"{name:24s} {get_model_config(name)['model_type']}")
    return 0


def model_from_flag(value: str, *, family: str | None = None, device=None, flag: str = "--model"):
    """The model a command's ``--model`` names (``medmoe.create_model``: a saved folder or a registered name),
    in eval mode; an error names the flag (``--model runs/x: holds a MoME segmentation (mome) model; ...``)."""
    import medmoe
    from medmoe.errors import InvalidInputError, NotAModelDirectoryError

    try:
        return medmoe.create_model(value, family=family, device=device).eval()
    except (InvalidInputError, NotAModelDirectoryError) as err:
        raise type(err)(f"{flag} {err}") from None
