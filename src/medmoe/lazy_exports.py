"""Packages whose names are imported on first use (PEP 562), so that importing the package stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` on first use and returns its ``name``.

    Args:
        package: the package's ``__name__`` (for the error message).
        exports: ``{name: module}`` of the names the package offers.
        namespace: the package's ``globals()``; a name, once imported, is kept there.

    Example:
        >>> __getattr__ = lazy_getattr(__name__, {"read_image": "medmoe.data.readers"}, globals())  # doctest: +SKIP
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
