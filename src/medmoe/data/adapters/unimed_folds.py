"""Test sets as UniMed-CLIP's evaluation download prepared them: a CSV of (image, label) per fold.

UniMed-CLIP (the protocol MedMoE's paper follows) ships processed copies of several test sets, one folder
each, whose CSV names an image (relative to the folder) and its label; its evaluation code reads the
columns by position after a header row. The layouts read here, from that code:

========================= ============================== ============ ===== =============================
source                    folder / test CSV              image col    label label values -> medmoe class
========================= ============================== ============ ===== =============================
``unimed-breast-us``      ``breast_test_fold1.csv``      0            1     benign, malignant
``unimed-acl-mri``        ``test_fold1.csv``             0            1     no -> normal, yes -> acl tear
``unimed-meniscus-mri``   ``meniscus_test_fold1.csv``    0            1     n -> normal, p -> meniscal tear
``unimed-rsna-pneumonia`` ``RSNA_pneumonia_balanced_     1            2     0 -> normal, 1 -> pneumonia
                          testfile.csv``
========================= ============================== ============ ===== =============================

(The thyroid folder has the same form: :mod:`medmoe.data.adapters.thyroid_us`.) Assumption: the training
CSVs (for the linear probe) are named like the test ones with ``test`` replaced by ``train``; they are
optional, and a set without one is evaluated zero-shot only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medmoe.data.adapters.common import ImportResult, read_csv_table, require_dir
from medmoe.data.adapters.labelled import label_row
from medmoe.data.readers import MissingFileError
from medmoe.errors import CorruptFileError


@dataclass(frozen=True)
class FoldLayout:
    """Where a prepared fold's CSV is and how to read it.

    Attributes:
        name: dataset name of the rows; test_csv: the test CSV's name (``test`` -> ``train`` names the
        training CSV); image_column, label_column: column positions; labels: CSV value -> class;
        modality: the rows' modality.
    """

    name: str
    test_csv: str
    image_column: int
    label_column: int
    labels: dict[str, str]
    modality: str

    @property
    def train_csv(self) -> str:
        return self.test_csv.replace("test", "train")


LAYOUTS = {
    "unimed-breast-us": FoldLayout("breast-us", "breast_test_fold1.csv", 0, 1,
                                   {"benign": "benign", "malignant": "malignant"}, "ultrasound"),
    "unimed-acl-mri": FoldLayout("acl-mri", "test_fold1.csv", 0, 1, {"no": "normal", "yes": "acl tear"}, "mri"),
    "unimed-meniscus-mri": FoldLayout("meniscus-mri", "meniscus_test_fold1.csv", 0, 1,
                                      {"n": "normal", "p": "meniscal tear"}, "mri"),
    "unimed-rsna-pneumonia": FoldLayout("rsna-pneumonia", "RSNA_pneumonia_balanced_testfile.csv", 1, 2,
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


def import_fold_layout(root: str | os.PathLike, layout: FoldLayout, *, skip_missing: bool = True) -> ImportResult:
    """Rows of ``layout``'s test CSV (split ``test``) and, when present, its training CSV (``train``).

    Raises:
        MissingFileError: no test CSV in ``root``.
    """
    root = require_dir(root, layout.name)
    if not (root / layout.test_csv).is_file():
        raise MissingFileError(f"{root}: no {layout.test_csv} (the prepared {layout.name} test fold)")
    result = ImportResult(layout.name)
    for split, csv_name in (("train", layout.train_csv), ("test", layout.test_csv)):
        path = root / csv_name
        if split == "train" and (csv_name == layout.test_csv or not path.is_file()):
            continue
        for image, label in read_fold_csv(path, layout.image_column, layout.label_column, layout.labels):
            image_path = root / image
            if skip_missing and not image_path.is_file():
                result.skip("missing image", str(image_path))
                continue
            result.rows.append(label_row(image_path, label, dataset=layout.name, split=split,
                                         modality=layout.modality))
    return result.log()


def _adapter(source: str):
    def run(root: str | os.PathLike, *, skip_missing: bool = True, progress: bool = False) -> ImportResult:
        return import_fold_layout(root, LAYOUTS[source], skip_missing=skip_missing)

    run.__name__ = f"import_{source.replace('-', '_')}"
    run.__doc__ = f"Rows of UniMed-CLIP's prepared {LAYOUTS[source].name} folder (see the module docstring)."
    return run


import_unimed_breast_us = _adapter("unimed-breast-us")
import_unimed_acl_mri = _adapter("unimed-acl-mri")
import_unimed_meniscus_mri = _adapter("unimed-meniscus-mri")
import_unimed_rsna_pneumonia = _adapter("unimed-rsna-pneumonia")
