"""Breast Ultrasound Images (BUSI, Al-Dhabyani et al. 2020) -> labelled rows: ``benign`` / ``malignant``.

Expected layout (the public release, unzipped)::

    ROOT/Dataset_BUSI_with_GT/benign/benign (1).png, benign (1)_mask.png, benign (4)_mask_1.png, ...
    ROOT/Dataset_BUSI_with_GT/malignant/malignant (1).png, ...
    ROOT/Dataset_BUSI_with_GT/normal/normal (1).png, ...

``ROOT`` may also be the ``Dataset_BUSI_with_GT`` folder itself. Segmentation masks (``*_mask*.png``) are
not images of the set and are ignored. The paper's Breast US column is two-class (benign vs malignant, as
UniMed-CLIP maps it), so ``normal`` images are left out unless asked for. The release has no official
split: images are assigned by a stable hash of their file name (80 % train, 20 % test). Assumption: the
paper's own test fold (UniMed-CLIP's ``breast_test_fold1.csv``) is not public; this hash split stands in.
"""

from __future__ import annotations

import os
import re

from medmoe.data.adapters.common import ImportResult, hash_split, require_dir
from medmoe.data.adapters.labelled import check_classes, label_row
from medmoe.data.readers import MissingFileError

NAME = "busi"
CLASSES = ("benign", "malignant", "normal")
PAPER_CLASSES = ("benign", "malignant")
_MASK = re.compile(r"_mask(_\d+)?$", re.IGNORECASE)
_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def import_busi(
    root: str | os.PathLike,
    *,
    classes: tuple[str, ...] | None = PAPER_CLASSES,
    test_fraction: float = 0.2,
    skip_missing: bool = True,
    progress: bool = False,
) -> ImportResult:
    """One row per ultrasound image (masks ignored), split train / test by file-name hash.

    Args:
        root: the folder holding ``Dataset_BUSI_with_GT`` (or that folder).
        classes: the class folders to read (default benign and malignant; None: all three).
        test_fraction: share of the images in the test split.
        skip_missing: unused (the images are listed from the folders); accepted for a uniform interface.
        progress: unused; accepted so every adapter takes the same options.

    Raises:
        MissingFileError: a class folder is missing or holds no image.
    """
    root = require_dir(root, NAME)
    base = root / "Dataset_BUSI_with_GT" if (root / "Dataset_BUSI_with_GT").is_dir() else root
    chosen = check_classes(CLASSES, tuple(classes) if classes is not None else None, NAME)
    result = ImportResult(NAME)
    for label in chosen:
        folder = base / label
        if not folder.is_dir():
            raise MissingFileError(f"{base}: no {label}/ folder (expected {', '.join(c + '/' for c in CLASSES)})")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES)
        images = [p for p in files if not _MASK.search(p.stem)]
        if not images:
            raise MissingFileError(f"{folder}: no ultrasound image (only masks or nothing)")
        for image in images:
            split = hash_split(f"{label}/{image.name}", (1.0 - test_fraction, 0.0, test_fraction))
            result.rows.append(label_row(image, label, dataset=NAME, split=split, modality="ultrasound"))
    return result.log()
