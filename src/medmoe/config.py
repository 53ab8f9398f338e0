"""Dataclass configs readable at a glance, built from JSON dicts with unknown keys rejected."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from medmoe.errors import InvalidInputError

T = TypeVar("T")


def config_from_dict(cls: type[T], data: dict[str, Any], *, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclass fields accept dicts.

    Raises:
        InvalidInputError: a key that ``cls`` has no field for, naming the valid ones.
    """
    if not isinstance(data, dict):
        raise InvalidInputError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidInputError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints.get(key)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = config_from_dict(hint, value, where=f"{where}.{key}")
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a dataclass config (tuples become lists)."""
    return dataclasses.asdict(config)


def merge_overrides(config: T, overrides: dict[str, Any], *, where: str = "config") -> T:
    """Return a copy of ``config`` with top-level ``overrides`` applied.

    A dict given for a nested dataclass field updates only the keys it names.
    """
    data = config_to_dict(config)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        elif dataclasses.is_dataclass(value):
            data[key] = config_to_dict(value)
        else:
            data[key] = value
    return config_from_dict(type(config), data, where=where)
