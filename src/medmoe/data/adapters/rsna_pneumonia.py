"""RSNA Pneumonia Detection Challenge (Kaggle, 2018) -> labelled rows: ``normal`` / ``pneumonia``.

Source: the competition's Kaggle data page (kaggle.com/c/rsna-pneumonia-detection-challenge), unzipped.
Layout::

    ROOT/stage_2_train_labels.csv          patientId,x,y,width,height,Target  (stage_1_... also accepted)
    ROOT/stage_2_train_images/<patientId>.dcm

A patient has one row per box (several rows when several opacities were boxed); ``Target`` is 1 for
"Lung Opacity" (pneumonia) and 0 otherwise. The challenge's test images have no public labels, so the
labelled training images are split by a stable hash of ``patientId`` (80 % train, 10 % val, 10 % test;
the same on every machine). Assumption: the paper's RSNA test set (UniMed-CLIP's own balanced file, not
public) is a class-balanced sample; with ``balanced_test`` the test split keeps every pneumonia patient
and as many normal patients (those of lowest hash), as MedCLIP's ``rsna-balanced-test`` does.
"""

from __future__ import annotations

import os

from medmoe.data.adapters.common import (
    ImportResult,
    find_first,
    hash_split,
    read_csv_table,
    require_columns,
    require_dir,
    stable_hash,
)
from medmoe.data.adapters.labelled import label_row
from medmoe.errors import CorruptFileError, MissingFileError

NAME = "rsna-pneumonia"
CLASSES = ("normal", "pneumonia")
IMAGE_FOLDERS = ("stage_2_train_images", "stage_1_train_images")


def import_rsna_pneumonia(
    root: str | os.PathLike,
    *,
    balanced_test: bool = True,
    skip_missing: bool = True,
    progress: bool = False,
) -> ImportResult:
    """One row per patient: its DICOM and its class (``pneumonia`` when any box row has Target 1).

    Args:
        root: the competition folder.
        balanced_test: keep as many ``normal`` as ``pneumonia`` patients in the test split.
        skip_missing: leave out patients whose DICOM does not exist.
        progress: unused (one CSV read); accepted so every adapter takes the same options.

    Raises:
        MissingFileError: no labels CSV or no image folder under ``root``.
        CorruptFileError: the CSV lacks ``patientId`` / ``Target`` or holds a Target other than 0 / 1.
    """
    root = require_dir(root, NAME)
    table_path = find_first(root, ["stage_2_train_labels.csv", "stage_1_train_labels.csv"], "the labels CSV")
    images = next((root / f for f in IMAGE_FOLDERS if (root / f).is_dir()), None)
    if images is None:
        raise MissingFileError(f"{root}: no image folder (looked for {list(IMAGE_FOLDERS)})")
    table = read_csv_table(table_path)
    require_columns(table, ["patientId", "Target"], table_path)
    target: dict[str, int] = {}
    for record in table:
        value = (record.get("Target") or "").strip()
        if value not in ("0", "1"):
            raise CorruptFileError(f"{table_path}: Target {value!r} of patient {record['patientId']!r} is not 0 or 1")
        pid = record["patientId"].strip()
        target[pid] = max(target.get(pid, 0), int(value))
    result = ImportResult(NAME)
    test: dict[str, list[str]] = {c: [] for c in CLASSES}
    for pid in sorted(target):
        image = images / f"{pid}.dcm"
        if skip_missing and not image.is_file():
            result.skip("missing image", str(image))
            continue
        label = CLASSES[target[pid]]
        split = hash_split(pid)
        if split == "test":
            test[label].append(pid)
            continue
        result.rows.append(label_row(image, label, dataset=NAME, split=split, modality="xray"))
    if balanced_test:
        keep = min(len(test["normal"]), len(test["pneumonia"]))
        for label in CLASSES:
            test[label] = sorted(sorted(test[label], key=stable_hash)[:keep])
    for label in CLASSES:
        result.rows += [label_row(images / f"{pid}.dcm", label, dataset=NAME, split="test", modality="xray")
                        for pid in test[label]]
    return result.log()
