"""MRNet knee MRI (Bien et al. 2018) -> labelled 2-D rows for ACL tear or meniscal tear.

Source: the MRNet release (stanfordmlgroup.github.io/competitions/mrnet, ``MRNet-v1.0``). Layout::

    ROOT/train/{axial,coronal,sagittal}/0000.npy ... 1129.npy     (S, 256, 256) uint8 volumes
    ROOT/valid/{axial,coronal,sagittal}/1130.npy ... 1249.npy
    ROOT/train-acl.csv, valid-acl.csv, train-meniscus.csv, valid-meniscus.csv   (no header: case,label)

The 2-D image of an exam is the **middle slice** (index S // 2) of one plane's volume: sagittal for the
ACL task and coronal for the meniscus task by default (the planes radiologists read those tears on).
Assumption: UniMed-CLIP's prepared ACL / meniscus folders are 2-D images of the same exams; the exact
slices they took are not public, so this choice is documented here and can be changed with ``plane``.
Each slice is written once as a PNG under the cache folder (``ROOT/.medmoe-png/mrnet/`` unless
``cache_dir`` is given). ``train`` exams go to the train split and the public ``valid`` exams (the
released test set) to ``test``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medmoe.data.adapters.common import ImportResult, require_dir
from medmoe.data.adapters.labelled import cache_folder, label_row, write_grey_png
from medmoe.errors import CorruptFileError, InvalidInputError, MissingFileError

NAME = "mrnet"
PLANES = ("axial", "coronal", "sagittal")
TASKS = {"acl": ("normal", "acl tear"), "meniscus": ("normal", "meniscal tear")}
DEFAULT_PLANE = {"acl": "sagittal", "meniscus": "coronal"}
SPLITS = {"train": "train", "valid": "test"}


def _labels(path: Path) -> list[tuple[str, int]]:
    """``(case, label)`` of a header-less MRNet CSV; case ids zero-padded to 4 digits."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path}: cannot read ({err})") from None
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[0].isdigit() or parts[1] not in ("0", "1"):
            raise CorruptFileError(f"{path}: line {number}: expected 'case,label' with label 0 or 1, got {line!r}")
        pairs.append((parts[0].zfill(4), int(parts[1])))
    return pairs


def middle_slice(volume_path: Path) -> np.ndarray:
    """The middle slice (index S // 2) of an (S, H, W) ``.npy`` volume.

    Raises:
        CorruptFileError: not a readable ``.npy`` array of three dimensions.
    """
    try:
        volume = np.load(volume_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CorruptFileError(f"{volume_path}: not a readable .npy volume ({err})") from None
    if volume.ndim != 3 or volume.shape[0] == 0:
        raise CorruptFileError(f"{volume_path}: expected an (S, H, W) volume, got shape {volume.shape}")
    return np.asarray(volume[volume.shape[0] // 2])


def import_mrnet(
    root: str | os.PathLike,
    *,
    task: str = "acl",
    plane: str | None = None,
    splits: tuple[str, ...] = ("train", "test"),
    cache_dir: str | os.PathLike | None = None,
    skip_missing: bool = True,
    progress: bool = False,
) -> ImportResult:
    """One row per exam: the PNG of its middle slice in ``plane`` and its class for ``task``.

    Args:
        root: the ``MRNet-v1.0`` folder.
        task: ``acl`` (classes ``normal`` / ``acl tear``) or ``meniscus`` (``normal`` / ``meniscal tear``).
        plane: ``axial``, ``coronal`` or ``sagittal`` (default: sagittal for ACL, coronal for meniscus).
        splits: which splits to read: ``train`` (the ``train`` exams) and / or ``test`` (``valid``).
        cache_dir: where the slices are written (default ``ROOT/.medmoe-png``).
        skip_missing: leave out exams whose volume does not exist.
        progress: tqdm progress bar over the exams.

    Raises:
        InvalidInputError: an unknown task, plane or split.
        MissingFileError: no ``valid-<task>.csv`` (the test labels) under ``root``.
    """
    if task not in TASKS:
        raise InvalidInputError(f"MRNet task {task!r}: expected one of {sorted(TASKS)}")
    plane = plane or DEFAULT_PLANE[task]
    if plane not in PLANES:
        raise InvalidInputError(f"MRNet plane {plane!r}: expected one of {list(PLANES)}")
    if unknown := [s for s in splits if s not in SPLITS.values()]:
        raise InvalidInputError(f"MRNet split(s) {unknown}: expected some of {list(SPLITS.values())}")
    root = require_dir(root, NAME)
    if not (root / f"valid-{task}.csv").is_file():
        raise MissingFileError(f"{root}: no valid-{task}.csv (MRNet-v1.0 layout: train/, valid/, "
                               f"train-{task}.csv, valid-{task}.csv)")
    name = f"{NAME}-{task}"
    cache = cache_folder(root, cache_dir, NAME)
    result = ImportResult(name)
    for folder, split in SPLITS.items():
        labels_csv = root / f"{folder}-{task}.csv"
        if split not in splits or not labels_csv.is_file():
            continue
        pairs = _labels(labels_csv)
        for case, label in tqdm(pairs, desc=f"{name} {folder}", unit="exam", disable=not progress):
            volume = root / folder / plane / f"{case}.npy"
            png = cache / folder / plane / f"{case}.png"
            if not png.is_file():
                if not volume.is_file():
                    if skip_missing:
                        result.skip("missing volume", str(volume))
                        continue
                    raise MissingFileError(f"{volume}: MRNet volume not found")
                write_grey_png(middle_slice(volume), png)
            result.rows.append(label_row(png, TASKS[task][label], dataset=name, split=split, modality="mri"))
    return result.log()


def import_mrnet_acl(root: str | os.PathLike, **options: Any) -> ImportResult:
    """:func:`import_mrnet` for the ACL-tear task."""
    return import_mrnet(root, task="acl", **options)


def import_mrnet_meniscus(root: str | os.PathLike, **options: Any) -> ImportResult:
    """:func:`import_mrnet` for the meniscal-tear task."""
    return import_mrnet(root, task="meniscus", **options)
