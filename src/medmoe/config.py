"""Dataclass configs readable at a glance, built from JSON dicts with unknown keys rejected."""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any, TypeVar

from medmoe.errors import InvalidInputError

T = TypeVar("T")


def config_from_dict(cls: type[T], data: dict[str, Any], *, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclass fields accept dicts.

    Every value is checked against its field's annotation before the dataclass is built (``int`` fields
    take integers, not ``6.5``, ``1e7`` or ``"six"``; ``bool`` fields take true/false; ``str | None``,
    ``tuple[int, ...]`` and fixed-length tuples are checked element by element; a nested config takes a
    mapping), so a hand-edited or hostile config fails with one line naming the field.

    Raises:
        InvalidInputError: a key that ``cls`` has no field for (naming the valid ones), or a value of the
            wrong type (naming the field, the value and the expected type).
    """
    if not isinstance(data, dict):
        raise InvalidInputError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidInputError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {key: config_from_dict(hints[key], value, where=f"{where}.{key}")
              if dataclasses.is_dataclass(hints.get(key)) and isinstance(value, dict)
              else checked_value(value, hints.get(key), f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except InvalidInputError as err:
        message = str(err)
        raise InvalidInputError(message if message.startswith(where) else f"{where}: {message}") from None
    except (TypeError, ValueError, AttributeError) as err:  # a check in __post_init__ met a value it did not expect
        raise InvalidInputError(f"{where}: {err}") from None


def checked_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it fits annotation ``hint`` (lists become tuples for tuple fields), else an error.

    Raises:
        InvalidInputError: naming ``where``, the value and the expected type.
    """
    if hint is None or hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return checked_value(value, arg, where)
            except InvalidInputError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else _wrong(value, hint, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _wrong(value, hint, where)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(checked_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise InvalidInputError(f"{where}: expected {len(args)} values, got {len(value)} ({_short(value)})")
        return tuple(checked_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        raise InvalidInputError(f"{where}: expected a mapping of {hint.__name__} fields, got {_short(value)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise InvalidInputError(f"{where}: expected a finite number, got {value!r}")
            return float(value) if isinstance(value, numbers.Integral) else value
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    else:
        return value
    raise _wrong(value, hint, where)


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _wrong(value: Any, hint: Any, where: str) -> InvalidInputError:
    expected = _TYPE_NAMES.get(hint, getattr(hint, "__name__", None) or str(hint).replace("typing.", ""))
    return InvalidInputError(f"{where}: expected {expected}, got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def positive_int(text: str) -> int:
    """``text`` as an integer > 0 (a voxel count given on the command line).

    Raises:
        ValueError: not an integer, or not positive.
    """
    value = int(text)
    if value <= 0:
        raise ValueError(f"{text!r}: expected a positive number")
    return value


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
            value = {**data[key], **value}
        elif dataclasses.is_dataclass(value):
            value = config_to_dict(value)
        data[key] = value
    return config_from_dict(type(config), data, where=where)
