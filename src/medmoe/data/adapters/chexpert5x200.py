"""CheXpert 5x200 (the GLoRIA zero-shot benchmark) -> label rows.

Source: GLoRIA (github.com/marshuang80/gloria, ``gloria/constants.py``) samples 200 frontal CheXpert
training images for each of five findings (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural
Effusion) and stores the table in the CheXpert folder as ``chexpert_8x200.csv`` (its constant is named
``CHEXPERT_5x200``), image paths in ``Path``. UniMed-CLIP (github.com/mbzuai-oryx/UniMed-CLIP,
``local_data/chexpert-5x200.csv`` read by ``clipeval/datasets.py``) ships the same 1,000 rows as
``chexpert-5x200.csv`` with the path column named ``imgpath`` and paths into the downsampled release
``CheXpert-v1.0-small/``, joined to the folder that holds that release. Both layouts read::

    ROOT/chexpert-5x200.csv                               UniMed-CLIP (or chexpert_5x200.csv)
    ROOT/CheXpert-v1.0-small/train/patient38614/study1/view1_frontal.jpg

    ROOT/CheXpert-v1.0/chexpert_8x200.csv                 GLoRIA (ROOT may be CheXpert-v1.0 itself)
    ROOT/CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg

Columns: an unnamed index, ``Path`` or ``imgpath``, Sex, Age, Frontal/Lateral, AP/PA, the 14 finding
columns (1.0 = positive) and, when present, ``Report Impression``, which becomes the row's report. A path is
tried relative to the CSV's folder, then with its first folder dropped (the CSV inside ``CheXpert-v1.0``),
then relative to the folder above. Labels are the five findings marked 1.0; rows with none are left out.
All rows go to the ``test`` split.
"""

from __future__ import annotations

import os
from pathlib import Path

from medmoe.data.adapters.common import (
    ImportResult,
    existing_path,
    find_first,
    pick_column,
    positive_labels,
    read_csv_table,
    require_columns,
    require_dir,
    require_some_image,
)
from medmoe.data.manifest import ManifestRow

NAME = "chexpert-5x200"
CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
REPORT_COLUMN = "Report Impression"
CSV_NAMES = ("chexpert-5x200.csv", "chexpert_5x200.csv", "chexpert_8x200.csv")
CSV_FOLDERS = ("", "CheXpert-v1.0/", "CheXpert-v1.0-small/")
PATH_COLUMNS = ["Path", "imgpath"]


def csv_candidates(csv_name: str | None = None) -> list[str]:
    """Where the table is looked for, relative to the root, in order."""
    return [folder + name for folder in CSV_FOLDERS for name in ([csv_name] if csv_name else CSV_NAMES)]


def image_path(base: Path, relative: str) -> Path:
    """The file a path value names, whichever folder the CSV was placed in."""
    relative = relative.strip().replace("\\", "/")
    parts = relative.split("/")
    candidates = [base / relative]
    if len(parts) > 1:
        candidates.append(base.joinpath(*parts[1:]))  # the CSV inside CheXpert-v1.0: drop that prefix
    candidates.append(base.parent / relative)
    return existing_path(candidates)


def import_chexpert5x200(
    root: str | os.PathLike,
    *,
    csv_name: str | None = None,
    skip_missing: bool = True,
    progress: bool = False,
) -> ImportResult:
    """Build label rows (report from ``Report Impression`` when the CSV has it) from CheXpert 5x200.

    Args:
        root: the folder holding the CSV (also searched in ``CheXpert-v1.0`` / ``CheXpert-v1.0-small``).
        csv_name: the CSV file name (default: UniMed-CLIP's, then GLoRIA's names).
        skip_missing: leave out rows whose image does not exist.
        progress: unused (1,000 rows); accepted so every adapter takes the same options.

    Raises:
        MissingFileError: no CSV (the message lists every path looked for), or none of its images exists.
        CorruptFileError: no ``Path`` / ``imgpath`` column, or none of the five finding columns.
    """
    root = require_dir(root, NAME)
    table_path = find_first(root, csv_candidates(csv_name), "the CheXpert 5x200 CSV")
    table = read_csv_table(table_path)
    path_column = pick_column(table, PATH_COLUMNS, table_path, "image path")
    present = [c for c in CLASSES if table and c in table[0]]
    if table and not present:
        require_columns(table, list(CLASSES), table_path)
    result = ImportResult(NAME)
    for record in table:
        image = image_path(table_path.parent, record[path_column])
        if skip_missing and not image.is_file():
            result.skip("missing image", str(image))
            continue
        labels = positive_labels(record, present)
        if not labels:
            result.skip("no positive class", record[path_column])
            continue
        result.rows.append(
            ManifestRow(
                image=str(image),
                report=(record.get(REPORT_COLUMN) or "").strip(),
                modality="xray",
                labels=labels,
                dataset=NAME,
                split="test",
            )
        )
    require_some_image(result, table_path)
    return result.log()
