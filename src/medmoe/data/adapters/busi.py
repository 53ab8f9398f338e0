"""Breast Ultrasound Images (BUSI, Al-Dhabyani et al. 2020) -> labelled rows, split by RadImageNet's fold.

Source: the BUSI paper (Data in Brief 28, 2020) describes 780 PNG images in three class folders,
``benign`` / ``malignant`` / ``normal``, each image with its ground-truth mask(s) ``<name>_mask.png``
(``_mask_1.png`` for a second lesion). The paper publishes no split; the protocol's breast-ultrasound test
set (UniMed-CLIP's ``breast_test_fold1.csv``) is RadImageNet's published fold (github.com/BMEII-AI/RadImageNet,
``breast/dataframe/breast_{train,val,test}_fold{1..5}.csv``, header ``filename,label``, e.g.
``images/normal (99).png,benign``), which labels the ``normal`` images ``benign``. Layout::

    ROOT/Dataset_BUSI_with_GT/benign/benign (1).png, benign (1)_mask.png, benign (4)_mask_1.png, ...
    ROOT/Dataset_BUSI_with_GT/malignant/malignant (1).png, ...
    ROOT/Dataset_BUSI_with_GT/normal/normal (1).png, ...       (may be absent)
    ROOT/dataframe/breast_{train,val,test}_fold1.csv     RadImageNet's fold (also read from ROOT or from
                                                         Dataset_BUSI_with_GT[/dataframe])

``ROOT`` may be ``Dataset_BUSI_with_GT`` itself. Masks are not images of the set and are ignored. A fold row
is matched to the BUSI file of the same name. Choices, each named:

- ``normal="benign"`` (default, the protocol's: RadImageNet's fold labels them so), ``"exclude"`` (leave
  the normal images out: a benign-vs-malignant set) or ``"class"`` (a third class ``normal``);
- ``split="fold"`` (default: RadImageNet's fold ``fold``; its test CSV must be present) or ``"hash"``
  (no fold: a stable hash of the file name puts ``test_fraction`` of the images in ``test``, the rest in
  ``train``; not the protocol's split).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from medmoe.data.adapters.common import ImportResult, hash_split, require_dir
from medmoe.data.adapters.labelled import label_row
from medmoe.data.adapters.unimed_folds import LAYOUTS, find_fold_csv, read_folds
from medmoe.errors import InvalidInputError, MissingFileError

NAME = "busi"
FOLDERS = ("benign", "malignant", "normal")
NORMAL_CHOICES = ("benign", "exclude", "class")
SPLIT_CHOICES = ("fold", "hash")
_MASK = re.compile(r"_mask(_\d+)?$", re.IGNORECASE)
_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_FOLD = dataclasses.replace(LAYOUTS["unimed-breast-us"], name=NAME)  # RadImageNet's breast-US fold CSVs


def _class_images(base: Path) -> dict[str, list[Path]]:
    """class folder -> its ultrasound images (masks left out); a missing ``normal/`` folder reads as empty.

    Raises:
        MissingFileError: the benign or malignant folder is missing, or a class folder holds no image.
    """
    images: dict[str, list[Path]] = {}
    for label in FOLDERS:
        folder = base / label
        if label == "normal" and not folder.is_dir():
            images[label] = []
            continue
        if not folder.is_dir():
            raise MissingFileError(f"{base}: no {label}/ folder (expected {', '.join(c + '/' for c in FOLDERS)})")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES)
        images[label] = [p for p in files if not _MASK.search(p.stem)]
        if not images[label]:
            raise MissingFileError(f"{folder}: no ultrasound image (only masks or nothing)")
    return images


def _label(folder_class: str, fold_label: str, normal: str) -> str | None:
    """The row's class: the fold's label, or for a ``normal`` image what ``normal`` says (None: left out)."""
    if folder_class != "normal":
        return fold_label
    return {"benign": fold_label, "class": "normal", "exclude": None}[normal]


def _rows_from_fold(root: Path, base: Path, images: dict[str, list[Path]], fold: int, normal: str) -> ImportResult:
    folders = list(dict.fromkeys([root, root / "dataframe", base, base / "dataframe"]))
    if find_fold_csv(folders, _FOLD.csv_name("test", fold)) is None:
        raise MissingFileError(f"{root}: cannot find RadImageNet's BUSI fold breast_test_fold{fold}.csv (looked in "
                               f"{root}, {root / 'dataframe'}, {base} and {base / 'dataframe'}; it is published in "
                               "github.com/BMEII-AI/RadImageNet under breast/dataframe/); or choose split='hash'")
    by_name = {p.name: (label, p) for label, paths in images.items() for p in paths}

    def add(rows: ImportResult, path: Path, split: str, image: str, fold_label: str) -> None:
        name = image.replace("\\", "/").rsplit("/", 1)[-1]
        if name not in by_name:
            rows.skip("missing image", f"{base}/*/{name}")
            return
        folder_class, file = by_name[name]
        label = _label(folder_class, fold_label, normal)
        if label is None:
            rows.skip("normal image left out (normal='exclude')", str(file))
        else:
            rows.rows.append(label_row(file, label, dataset=NAME, split=split, modality="ultrasound"))

    return read_folds(_FOLD, folders, fold, add)


def _rows_by_hash(images: dict[str, list[Path]], normal: str, test_fraction: float) -> ImportResult:
    result = ImportResult(NAME)
    for folder_class, paths in images.items():
        for image in paths:
            label = _label(folder_class, folder_class if folder_class != "normal" else "benign", normal)
            if label is None:
                result.skip("normal image left out (normal='exclude')", str(image))
                continue
            split = hash_split(f"{folder_class}/{image.name}", (1.0 - test_fraction, 0.0, test_fraction))
            result.rows.append(label_row(image, label, dataset=NAME, split=split, modality="ultrasound"))
    return result


def import_busi(
    root: str | os.PathLike,
    *,
    normal: str = "benign",
    split: str = "fold",
    fold: int = 1,
    test_fraction: float = 0.2,
    skip_missing: bool = True,
    progress: bool = False,
) -> ImportResult:
    """One row per ultrasound image (masks ignored), labelled and split as ``normal`` and ``split`` say.

    Args:
        root: the folder holding ``Dataset_BUSI_with_GT`` (or that folder).
        normal: ``benign`` (default; RadImageNet's fold labels them so), ``exclude`` or ``class``.
        split: ``fold`` (RadImageNet's fold CSVs; default) or ``hash`` (a file-name hash; no val split).
        fold: which RadImageNet fold (1-5) with ``split="fold"``.
        test_fraction: share of the images in ``test`` with ``split="hash"``.
        skip_missing: unused (fold rows without a BUSI file are always left out and counted); accepted for a
            uniform interface.
        progress: unused; accepted so every adapter takes the same options.

    Raises:
        InvalidInputError: an unknown ``normal`` or ``split`` choice.
        MissingFileError: a class folder is missing or empty, the fold's test CSV is missing, or none of a
            fold CSV's images is in the BUSI folders.
    """
    if normal not in NORMAL_CHOICES:
        raise InvalidInputError(f"busi: normal={normal!r}: expected one of {list(NORMAL_CHOICES)}")
    if split not in SPLIT_CHOICES:
        raise InvalidInputError(f"busi: split={split!r}: expected one of {list(SPLIT_CHOICES)}")
    root = require_dir(root, NAME)
    base = root / "Dataset_BUSI_with_GT" if (root / "Dataset_BUSI_with_GT").is_dir() else root
    images = _class_images(base)
    if split == "fold":
        result = _rows_from_fold(root, base, images, fold, normal)
    else:
        result = _rows_by_hash(images, normal, test_fraction)
    return result.log()
