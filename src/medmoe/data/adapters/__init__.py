"""Adapters from the public corpora users own to medmoe manifests, one module per source.

    >>> result = import_source("mimic-cxr", "/data/mimic-cxr-jpg/2.0.0")
    >>> write_manifest(result.rows, "mimic.csv")

Each adapter returns an :class:`ImportResult` (rows + entries left out, by reason) and is documented
with the exact directory layout it expects.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from medmoe.data.adapters.busi import import_busi
from medmoe.data.adapters.chexpert5x200 import import_chexpert5x200
from medmoe.data.adapters.common import ImportResult, hash_split
from medmoe.data.adapters.iu_xray import import_iu_xray
from medmoe.data.adapters.medmnist_organ import import_organamnist, import_organcmnist, import_organsmnist
from medmoe.data.adapters.mimic_cxr import import_mimic_cxr
from medmoe.data.adapters.mrnet import import_mrnet_acl, import_mrnet_meniscus
from medmoe.data.adapters.roco import import_roco
from medmoe.data.adapters.rsna_pneumonia import import_rsna_pneumonia
from medmoe.data.adapters.thyroid_us import import_thyroid_us
from medmoe.data.adapters.unimed_folds import (
    import_unimed_acl_mri,
    import_unimed_breast_us,
    import_unimed_meniscus_mri,
    import_unimed_rsna_pneumonia,
)
from medmoe.data.adapters.wds import import_wds
from medmoe.errors import InvalidInputError

SOURCES: dict[str, Callable[..., ImportResult]] = {
    "mimic-cxr": import_mimic_cxr,
    "chexpert5x200": import_chexpert5x200,
    "iu-xray": import_iu_xray,
    "roco": import_roco,
    "wds": import_wds,
    # labelled test sets of the papers' zero-shot and linear-probe protocols (medmoe.align.suites)
    "rsna-pneumonia": import_rsna_pneumonia,
    "thyroid-us": import_thyroid_us,
    "busi": import_busi,
    "mrnet-acl": import_mrnet_acl,
    "mrnet-meniscus": import_mrnet_meniscus,
    "organamnist": import_organamnist,
    "organcmnist": import_organcmnist,
    "organsmnist": import_organsmnist,
    "unimed-rsna-pneumonia": import_unimed_rsna_pneumonia,
    "unimed-breast-us": import_unimed_breast_us,
    "unimed-acl-mri": import_unimed_acl_mri,
    "unimed-meniscus-mri": import_unimed_meniscus_mri,
}

__all__ = [
    "SOURCES",
    "ImportResult",
    "hash_split",
    "import_busi",
    "import_chexpert5x200",
    "import_iu_xray",
    "import_mimic_cxr",
    "import_mrnet_acl",
    "import_mrnet_meniscus",
    "import_organamnist",
    "import_organcmnist",
    "import_organsmnist",
    "import_roco",
    "import_rsna_pneumonia",
    "import_source",
    "import_thyroid_us",
    "import_wds",
    "layout_help",
]


def import_source(source: str, root: str | os.PathLike, **options: Any) -> ImportResult:
    """Run the adapter named ``source`` (one of :data:`SOURCES`) on ``root``.

    Raises:
        InvalidInputError: unknown source name.
    """
    if source not in SOURCES:
        raise InvalidInputError(f"unknown source {source!r}; expected one of {sorted(SOURCES)}")
    return SOURCES[source](root, **options)


def layout_help(source: str) -> str:
    """What ``source``'s adapter reads: its module's description (the source it follows and the folder
    tree it expects), as plain text for ``medmoe data import SOURCE --help``.

    Raises:
        InvalidInputError: unknown source name.
    """
    if source not in SOURCES:
        raise InvalidInputError(f"unknown source {source!r}; expected one of {sorted(SOURCES)}")
    text = sys.modules[SOURCES[source].__module__].__doc__ or ""
    return text.replace("``", "").replace("::\n", ":\n").strip()
