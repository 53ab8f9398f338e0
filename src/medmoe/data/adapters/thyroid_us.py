"""Thyroid ultrasound (the RadImageNet downstream set, as UniMed-CLIP prepared it) -> ``benign`` / ``malignant``.

Expected layout (UniMed-CLIP's ``thyroid_us`` evaluation folder)::

    ROOT/thyroid_train_fold1.csv      header row, then: image path (relative to ROOT), label
    ROOT/thyroid_test_fold1.csv
    ROOT/<the image files the CSVs name>

The first column is the image path and the second the label, ``benign`` or ``malignant`` (UniMed-CLIP
reads the columns by position; their header names are not relied on). Assumption: these are the fold files
of RadImageNet's thyroid-ultrasound downstream task as UniMed-CLIP distributes them (its evaluation reads
fold 1); other folds are chosen with ``fold``. The train CSV is optional (only the linear probe needs it).
"""

from __future__ import annotations

import os

from medmoe.data.adapters.common import ImportResult, require_dir
from medmoe.data.adapters.labelled import label_row
from medmoe.data.adapters.unimed_folds import read_fold_csv
from medmoe.data.readers import MissingFileError

NAME = "thyroid-us"
CLASSES = ("benign", "malignant")


def import_thyroid_us(
    root: str | os.PathLike,
    *,
    fold: int = 1,
    skip_missing: bool = True,
    progress: bool = False,
) -> ImportResult:
    """Rows of the fold's test CSV (split ``test``) and, when present, its train CSV (split ``train``).

    Args:
        root: the ``thyroid_us`` folder.
        fold: which ``thyroid_{train,test}_fold{N}.csv`` pair to read.
        skip_missing: leave out rows whose image does not exist.
        progress: unused; accepted so every adapter takes the same options.

    Raises:
        MissingFileError: no test CSV of that fold.
    """
    root = require_dir(root, NAME)
    result = ImportResult(NAME)
    test_csv = root / f"thyroid_test_fold{fold}.csv"
    if not test_csv.is_file():
        raise MissingFileError(f"{root}: no {test_csv.name} (the thyroid test fold CSV: image,label)")
    for split in ("train", "test"):
        path = root / f"thyroid_{split}_fold{fold}.csv"
        if not path.is_file():
            continue
        for image, label in read_fold_csv(path, 0, 1, {c: c for c in CLASSES}):
            image_path = root / image
            if skip_missing and not image_path.is_file():
                result.skip("missing image", str(image_path))
                continue
            result.rows.append(label_row(image_path, label, dataset=NAME, split=split, modality="ultrasound"))
    return result.log()
