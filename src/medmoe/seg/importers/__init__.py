"""Datalists from public CT segmentation datasets in the layouts they are downloaded in.

    >>> from medmoe.seg.importers import import_dataset, write_datalist
    >>> imported = import_dataset("msd", "Task09_Spleen/")
    >>> write_datalist(imported, "datalist.json")            # {"training": 41, "test": 20}

Each importer finds the cases (and their split where the dataset defines one), gives them the dataset name
the class template's ``label_maps.json`` knows, and checks the dataset's own label list, where it ships one,
against that map: a differing label stops the import with the label named. ``medmoe seg check`` then reads
every file (:mod:`medmoe.seg.check`).
"""

from __future__ import annotations

import os
from pathlib import Path

from medmoe.errors import InvalidInputError
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.importers.challenges import (
    import_abdomenct1k,
    import_btcv,
    import_ctorg,
    import_flare22,
    import_kits,
    import_lits,
    import_word,
)
from medmoe.seg.importers.core import Imported, ImportedCase, check_label_list, write_datalist
from medmoe.seg.importers.decathlon import import_amos, import_msd, import_nnunet
from medmoe.seg.importers.folders import import_folders
from medmoe.seg.importers.totalseg import import_totalsegmentator

IMPORTERS = {
    "msd": import_msd,
    "nnunet": import_nnunet,
    "totalsegmentator": import_totalsegmentator,
    "btcv": import_btcv,
    "amos": import_amos,
    "kits": import_kits,
    "word": import_word,
    "flare22": import_flare22,
    "abdomenct1k": import_abdomenct1k,
    "ctorg": import_ctorg,
    "lits": import_lits,
    "folders": import_folders,
}
IMPORT_FORMATS = tuple(IMPORTERS)


def import_dataset(fmt: str, root: str | os.PathLike, *, dataset: str | None = None,
                   labels: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                   workers: int = 0, progress: bool = True, template: ClassTemplate | None = None) -> Imported:
    """Find the cases of a downloaded dataset.

    Args:
        fmt: one of :data:`IMPORT_FORMATS`.
        root: the dataset's folder as downloaded and unpacked.
        dataset: the dataset name to write (msd, nnunet, kits, folders: overrides the one found).
        labels: folders only: the label YAML (default ``root/labels.yaml``).
        cache: totalsegmentator only: where the combined label maps go (default ``root/../<root name>_labels``).
        workers: totalsegmentator only: processes combining masks.
        progress: tqdm bar on long work.
    """
    if fmt not in IMPORTERS:
        raise InvalidInputError(f"format {fmt!r}: expected one of {', '.join(IMPORT_FORMATS)}")
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(f"{root}: no such folder; expected the unpacked {fmt} dataset")
    root = root.resolve()
    template = template or ClassTemplate.default()
    cache_dir = Path(cache) if cache else root.parent / f"{root.name}_labels"
    imported = IMPORTERS[fmt](root, template=template, dataset=dataset, labels=Path(labels) if labels else None,
                              cache=cache_dir, workers=workers, progress=progress)
    if not imported.cases:
        raise InvalidInputError(f"{root}: no cases found for format {fmt}")
    return imported


__all__ = ["IMPORT_FORMATS", "IMPORTERS", "Imported", "ImportedCase", "check_label_list", "import_dataset",
           "write_datalist"]
