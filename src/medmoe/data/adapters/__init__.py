"""Adapters from the public corpora users own to medmoe manifests, one module per source.

    >>> result = import_source("mimic-cxr", "/data/mimic-cxr-jpg/2.0.0")
    >>> write_manifest(result.rows, "mimic.csv")

Each adapter returns an :class:`ImportResult` (rows + entries left out, by reason) and is documented
with the exact directory layout it expects.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmoe.errors import InvalidInputError
from medmoe.lazy_exports import lazy_getattr

if TYPE_CHECKING:
    from medmoe.data.adapters.common import ImportResult

# Every adapter, as "module:function" (imported when used, so that `medmoe --help` stays fast).
SOURCES: dict[str, str] = {
    "mimic-cxr": "mimic_cxr:import_mimic_cxr",
    "chexpert5x200": "chexpert5x200:import_chexpert5x200",
    "iu-xray": "iu_xray:import_iu_xray",
    "roco": "roco:import_roco",
    "wds": "wds:import_wds",
    # labelled test sets of the papers' zero-shot and linear-probe protocols (medmoe.align.suites)
    "rsna-pneumonia": "rsna_pneumonia:import_rsna_pneumonia",
    "thyroid-us": "thyroid_us:import_thyroid_us",
    "busi": "busi:import_busi",
    "mrnet-acl": "mrnet:import_mrnet_acl",
    "mrnet-meniscus": "mrnet:import_mrnet_meniscus",
    "organamnist": "medmnist_organ:import_organamnist",
    "organcmnist": "medmnist_organ:import_organcmnist",
    "organsmnist": "medmnist_organ:import_organsmnist",
    "unimed-rsna-pneumonia": "unimed_folds:import_unimed_rsna_pneumonia",
    "unimed-breast-us": "unimed_folds:import_unimed_breast_us",
    "unimed-acl-mri": "unimed_folds:import_unimed_acl_mri",
    "unimed-meniscus-mri": "unimed_folds:import_unimed_meniscus_mri",
}

_EXPORTS = {spec.split(":")[1]: f"{__name__}.{spec.split(':')[0]}" for spec in SOURCES.values()}
_EXPORTS.update(ImportResult=f"{__name__}.common", hash_split=f"{__name__}.common")
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

__all__ = ["SOURCES", "adapter", "import_source", "layout_help", *sorted(_EXPORTS)]


def _spec(source: str) -> tuple[str, str]:
    """(module, function) of ``source``'s adapter."""
    if source not in SOURCES:
        raise InvalidInputError(f"unknown source {source!r}; expected one of {sorted(SOURCES)}")
    module, function = SOURCES[source].split(":")
    return f"{__name__}.{module}", function


def adapter(source: str) -> Callable[..., Any]:
    """The import function of ``source`` (its module imported now).

    Raises:
        InvalidInputError: unknown source name.
    """
    module, function = _spec(source)
    return getattr(importlib.import_module(module), function)


def import_source(source: str, root: str | os.PathLike, **options: Any) -> ImportResult:
    """Run the adapter named ``source`` (one of :data:`SOURCES`) on ``root``.

    Raises:
        InvalidInputError: unknown source name.
    """
    return adapter(source)(root, **options)


def layout_help(source: str) -> str:
    """What ``source``'s adapter reads: its module's description (the source it follows and the folder
    tree it expects), as plain text for ``medmoe data import SOURCE --help``.

    Raises:
        InvalidInputError: unknown source name.
    """
    module, _ = _spec(source)
    origin = importlib.util.find_spec(module).origin  # read, not imported: the help of every source stays cheap
    text = ast.get_docstring(ast.parse(Path(origin).read_text(encoding="utf-8"))) or ""
    return text.replace("``", "").replace("::\n", ":\n").strip()
