"""Labelled test sets as (image, label) CSVs per fold: RadImageNet's published dataframes and UniMed-CLIP's copies.

Source: RadImageNet's downstream tasks (github.com/BMEII-AI/RadImageNet) publish, per task, a ``dataframe``
folder of 5-fold CSVs (header ``filename,label``; ``filename`` relative to the task folder) beside the
task's ``images`` folder. UniMed-CLIP (github.com/mbzuai-oryx/UniMed-CLIP, ``clipeval/datasets.py``), which
the MedMoE paper's protocol follows, evaluates fold 1's test CSV of the same tasks, copied into one folder
per set, reading the columns by position after the header. Both layouts read::

    ROOT/dataframe/breast_{train,val,test}_fold1.csv     RadImageNet (ROOT = the task folder, or dataframe/)
    ROOT/images/benign (2).png ...
    ROOT/breast_test_fold1.csv                           UniMed-CLIP's breast_us/ folder
    ROOT/images/...

========================= ========================================= ====== ===== ===========================
source                    CSV (``{split}``: train, val, test)       image  label label values -> class
========================= ========================================= ====== ===== ===========================
``thyroid-us``            ``thyroid_{split}_fold1.csv``             0      1     benign, malignant
``unimed-breast-us``      ``breast_{split}_fold1.csv``              0      1     benign, malignant
``unimed-acl-mri``        ``{split}_fold1.csv``                     0      1     no -> normal, yes -> acl tear
``unimed-meniscus-mri``   ``meniscus_{split}_fold1.csv``            0      1     n -> normal, p -> meniscal tear
``unimed-rsna-pneumonia`` ``RSNA_pneumonia_balanced_{split}file.csv`` 1    2     0 -> normal, 1 -> pneumonia
========================= ========================================= ====== ===== ===========================

A CSV is looked for in ROOT and ``ROOT/dataframe``; an image path is taken relative to ROOT, then to the
CSV's folder, then to the folder above it. The test CSV is required; the train and val CSVs are read when
present (the linear probe needs train). RadImageNet's breast fold labels BUSI's ``normal`` images
``benign``; rows keep the CSV's label. Another fold is chosen with ``fold``. Assumption: UniMed-CLIP's RSNA
file is its own balanced sample (not public); its train file, if any, is looked for as ``..._trainfile.csv``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medmoe.data.adapters.common import (
    ImportResult,
    existing_path,
    read_csv_table,
    require_dir,
    require_some_image,
)
from medmoe.data.adapters.labelled import label_row
from medmoe.errors import CorruptFileError, InvalidInputError, MissingFileError

SPLITS = ("train", "val", "test")
CSV_FOLDERS = ("", "dataframe")


@dataclass(frozen=True)
class FoldLayout:
    """Where a fold's CSVs are and how to read them.

    Attributes:
        name: dataset name of the rows; csv_pattern: the CSV's name with ``{split}`` and ``{fold}``;
        image_column, label_column: column positions; labels: CSV value -> class; modality: the rows'.
    """

    name: str
    csv_pattern: str
    image_column: int
    label_column: int
    labels: dict[str, str]
    modality: str

    def csv_name(self, split: str, fold: int) -> str:
        return self.csv_pattern.format(split=split, fold=fold)


LAYOUTS = {
    "thyroid-us": FoldLayout("thyroid-us", "thyroid_{split}_fold{fold}.csv", 0, 1,
                             {"benign": "benign", "malignant": "malignant"}, "ultrasound"),
    "unimed-breast-us": FoldLayout("breast-us", "breast_{split}_fold{fold}.csv", 0, 1,
                                   {"benign": "benign", "malignant": "malignant"}, "ultrasound"),
    "unimed-acl-mri": FoldLayout("acl-mri", "{split}_fold{fold}.csv", 0, 1, {"no": "normal", "yes": "acl tear"},
                                 "mri"),
    "unimed-meniscus-mri": FoldLayout("meniscus-mri", "meniscus_{split}_fold{fold}.csv", 0, 1,
                                      {"n": "normal", "p": "meniscal tear"}, "mri"),
    "unimed-rsna-pneumonia": FoldLayout("rsna-pneumonia", "RSNA_pneumonia_balanced_{split}file.csv", 1, 2,
                                        {"0": "normal", "1": "pneumonia"}, "xray"),
}


def read_fold_csv(path: Path, image_column: int, label_column: int, labels: dict[str, str]) -> list[tuple[str, str]]:
    """``(image, class)`` pairs from a fold CSV (header row, columns by position; values matched lower-cased).

    Raises:
        CorruptFileError: too few columns, or a value outside ``labels``.
    """
    table = read_csv_table(path)
    needed = max(image_column, label_column) + 1
    if table and len(table[0]) < needed:
        raise CorruptFileError(f"{path}: expected at least {needed} columns, found {list(table[0])}")
    pairs = []
    for number, record in enumerate(table, start=2):
        values = [str(v or "").strip() for v in record.values()]
        label = values[label_column].lower()
        if label.endswith(".0") and label[:-2].isdigit():  # pandas writes integer labels as 1.0 at times
            label = label[:-2]
        if label not in labels:
            raise CorruptFileError(f"{path}: line {number}: label {values[label_column]!r} is not one of "
                                   f"{list(labels)}")
        pairs.append((values[image_column], labels[label]))
    return pairs


def find_fold_csv(folders: Sequence[Path], name: str) -> Path | None:
    """The CSV ``name`` in the first of ``folders`` that holds it, or None."""
    return next((folder / name for folder in folders if (folder / name).is_file()), None)


def read_folds(layout: FoldLayout, folders: Sequence[Path], fold: int,
               add: Callable[[ImportResult, Path, str, str, str], None]) -> ImportResult:
    """The rows of each split's CSV of ``fold`` found in ``folders``: ``add(rows, csv, split, image, class)``
    turns each CSV row into a row of ``rows`` (or a skipped entry).

    Raises:
        MissingFileError: none of a CSV's images exists.
    """
    result = ImportResult(layout.name)
    for split in SPLITS:
        path = find_fold_csv(folders, layout.csv_name(split, fold))
        if path is None:
            continue
        split_result = ImportResult(layout.name)
        for image, label in read_fold_csv(path, layout.image_column, layout.label_column, layout.labels):
            add(split_result, path, split, image, label)
        require_some_image(split_result, path)
        result.extend(split_result)
    return result


def import_fold_layout(root: str | os.PathLike, layout: FoldLayout, *, fold: int = 1,
                       skip_missing: bool = True) -> ImportResult:
    """Rows of ``layout``'s test CSV (split ``test``) and, when present, its train and val CSVs.

    Raises:
        InvalidInputError: ``fold`` is not a positive integer.
        MissingFileError: no test CSV in ``root`` or ``root/dataframe``, or none of a CSV's images exists.
    """
    if not isinstance(fold, int) or fold < 1:
        raise InvalidInputError(f"fold {fold!r}: expected a positive integer (RadImageNet publishes folds 1-5)")
    root = require_dir(root, layout.name)
    folders = [root / folder for folder in CSV_FOLDERS]
    test_name = layout.csv_name("test", fold)
    if find_fold_csv(folders, test_name) is None:
        raise MissingFileError(f"{root}: cannot find the {layout.name} test fold (looked for {test_name} in "
                               f"{root} and {root / 'dataframe'})")

    def add(rows: ImportResult, path: Path, split: str, image: str, label: str) -> None:
        image_path = existing_path([root / image, path.parent / image, path.parent.parent / image])
        if skip_missing and not image_path.is_file():
            rows.skip("missing image", str(image_path))
        else:
            rows.rows.append(label_row(image_path, label, dataset=layout.name, split=split,
                                       modality=layout.modality))

    return read_folds(layout, folders, fold, add).log()


def fold_adapter(source: str) -> Callable[..., ImportResult]:
    """The import function of ``source``, one of :data:`LAYOUTS`."""
    layout = LAYOUTS[source]

    def run(root: str | os.PathLike, *, fold: int = 1, skip_missing: bool = True,
            progress: bool = False) -> ImportResult:
        return import_fold_layout(root, layout, fold=fold, skip_missing=skip_missing)

    run.__name__ = f"import_{source.replace('-', '_')}"
    run.__doc__ = (f"Rows of the {layout.name} fold CSVs ({layout.csv_name('{train,val,test}', 1)}) in RadImageNet's "
                   "or UniMed-CLIP's layout (see the module docstring).")
    return run


import_unimed_breast_us = fold_adapter("unimed-breast-us")
import_unimed_acl_mri = fold_adapter("unimed-acl-mri")
import_unimed_meniscus_mri = fold_adapter("unimed-meniscus-mri")
import_unimed_rsna_pneumonia = fold_adapter("unimed-rsna-pneumonia")
