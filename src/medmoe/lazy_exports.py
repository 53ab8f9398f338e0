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
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__


def lazy_package(namespace: dict[str, Any], modules: Mapping[str, str], *, also: tuple[str, ...] = ()) -> None:
    """Make a package offer the names of its modules, each imported on first use.

    Sets ``__all__`` (the names, plus ``also``: names the package defines itself), ``__getattr__`` and
    ``__dir__`` in ``namespace``.

    Args:
        namespace: the package's ``globals()``.
        modules: ``{module: "name name ..."}``; a module name starting with ``.`` is relative to the package.

    Example:
        >>> lazy_package(globals(), {".readers": "read_image decode_image"})  # doctest: +SKIP
    """
    package = namespace["__name__"]
    exports = {name: package + module if module.startswith(".") else module
               for module, names in modules.items() for name in names.split()}
    namespace["__all__"] = sorted({*exports, *also})
    namespace["__getattr__"] = lazy_getattr(package, exports, namespace)
    namespace["__dir__"] = lambda: sorted({*namespace, *exports})
