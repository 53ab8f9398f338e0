"""``--set KEY=VALUE`` model-config overrides, shared by the train commands."""

from __future__ import annotations

import json


def json_value(text: str):
    """``text`` parsed as JSON when it is JSON (numbers, booleans, lists, objects), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: list[str] | None, *, example: str) -> dict:
    """``["feature_size=24", "text.model=tiny-bert"]`` -> nested dict (values parsed as JSON when possible).

    Raises:
        InvalidInputError: a pair without ``=`` or without a key (the message shows ``example``).
    """
    from medmoe.errors import InvalidInputError

    out: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--set {pair!r}: expected KEY=VALUE, e.g. {example}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json_value(value)
    return out
