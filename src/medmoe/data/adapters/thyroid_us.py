"""Thyroid ultrasound (RadImageNet's thyroid downstream task, as UniMed-CLIP evaluates it) -> ``benign`` / ``malignant``.

Source: RadImageNet (github.com/BMEII-AI/RadImageNet) publishes ``thyroid/dataframe/thyroid_{train,val,test}
_fold{1..5}.csv`` (header ``filename,label``; ``filename`` relative to the task folder, e.g.
``images/....png``) beside ``thyroid/images/``; UniMed-CLIP (github.com/mbzuai-oryx/UniMed-CLIP,
``clipeval/datasets.py``) reads fold 1's test CSV from its ``thyroid_us`` folder, columns by position. Both
layouts read::

    ROOT/dataframe/thyroid_{train,val,test}_fold1.csv     RadImageNet (ROOT = the thyroid task folder)
    ROOT/images/...
    ROOT/thyroid_test_fold1.csv                           UniMed-CLIP's thyroid_us/ folder
    ROOT/<the image files the CSVs name>

The first column is the image path and the second the label, ``benign`` or ``malignant``. The test CSV is
required; train and val CSVs are read when present. Other folds are chosen with ``fold``. The reading is
:func:`medmoe.data.adapters.unimed_folds.import_fold_layout`'s.
"""

from __future__ import annotations

import os

from medmoe.data.adapters.common import ImportResult
from medmoe.data.adapters.unimed_folds import LAYOUTS, import_fold_layout

NAME = "thyroid-us"
CLASSES = ("benign", "malignant")


def import_thyroid_us(
    root: str | os.PathLike,
    *,
    fold: int = 1,
    skip_missing: bool = True,
    progress: bool = False,
) -> ImportResult:
    """Rows of the fold's test CSV (split ``test``) and, when present, its train and val CSVs.

    Args:
        root: the thyroid task folder (RadImageNet), its ``dataframe`` folder, or UniMed-CLIP's ``thyroid_us``.
        fold: which ``thyroid_{train,val,test}_fold{N}.csv`` to read.
        skip_missing: leave out rows whose image does not exist.
        progress: unused; accepted so every adapter takes the same options.

    Raises:
        MissingFileError: no test CSV of that fold, or none of a CSV's images exists.
    """
    return import_fold_layout(root, LAYOUTS[NAME], fold=fold, skip_missing=skip_missing)
