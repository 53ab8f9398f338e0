"""The trainer's command-line flags (generated from :class:`TrainConfig`) and the run config saved with a run.

``add_training_arguments(parser)`` adds one flag per ``TrainConfig`` field and ``--config YAML``; on a
:class:`~medmoe.settings.SettingsParser` the YAML's keys (field names) set the settings, and the command
line wins over them. :func:`save_resolved_config` writes the run's settings so that ``--config`` loads them back.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from medmoe.paths import write_text_atomic
from medmoe.settings import SETTINGS_ATTR, add_config_file_flag, add_dataclass_flags
from medmoe.train.config import TrainConfig

# Never written to the saved run config: re-using it must not resume or chain configs by surprise.
_NOT_SAVED = {"config", "resume", "func"}


def add_training_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the trainer's flags (see ``medmoe <group> train --help``) and ``--config`` to ``parser``."""
    group = add_dataclass_flags(parser, TrainConfig, title="training")
    add_config_file_flag(parser, group)
    return parser


def resolved_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings as plain YAML-ready values, loadable again with ``--config``."""
    data = vars(args)
    keys = data.get(SETTINGS_ATTR) or [k for k in data if not k.startswith("_")]
    plain = {key: _plain(data[key]) for key in keys if key not in _NOT_SAVED and key in data}
    return {key: value for key, value in plain.items() if value is not _UNSET}


_UNSET = object()


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        items = [_plain(v) for v in value]
        return _UNSET if any(v is _UNSET for v in items) else items
    if isinstance(value, dict):
        items = {str(k): _plain(v) for k, v in value.items()}
        return _UNSET if any(v is _UNSET for v in items.values()) else items
    return _UNSET


def save_resolved_config(args: argparse.Namespace, path: Path) -> None:
    """Write :func:`resolved_config` as YAML to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(resolved_config(args), sort_keys=True))
