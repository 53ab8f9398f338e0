"""CheXpert 5x200 (the GLoRIA zero-shot benchmark) -> manifest rows.

GLoRIA samples 200 frontal CheXpert training images for each of five findings, each image positive for
exactly one of them, and writes ``chexpert_5x200.csv`` with CheXpert's columns: ``Path`` (starting with
``CheXpert-v1.0/``), Sex, Age, Frontal/Lateral, AP/PA, the 14 finding columns and, when the master
table was used, ``Report Impression``. Expected layout (the CSV sits in the CheXpert folder)::

    ROOT/chexpert_5x200.csv                      (ROOT = .../CheXpert-v1.0, or its parent)
    ROOT/train/patient00001/study1/view1_frontal.jpg

CheXpert's reports are not public, so rows usually have an empty report and one label: label-only rows
for zero-shot classification. All rows go to the ``test`` split.
"""

from __future__ import annotations

import os
from pathlib import Path

from medmoe.data.adapters.common import ImportResult, find_first, read_csv_table, require_columns, require_dir
from medmoe.data.manifest import ManifestRow

NAME = "chexpert-5x200"
CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
REPORT_COLUMN = "Report Impression"


def _image_path(root: Path, relative: str) -> Path:
    """Resolve a ``Path`` value whichever folder the CSV was placed in."""
    relative = relative.strip().replace("\\", "/")
    parts = relative.split("/")
    candidates = [root / relative, root.parent / relative]
    if len(parts) > 1:
        candidates.insert(0, root.joinpath(*parts[1:]))  # GLoRIA: CSV inside CheXpert-v1.0, drop that prefix
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[0]


def import_chexpert5x200(
    root: str | os.PathLike,
    *,
    csv_name: str = "chexpert_5x200.csv",
    skip_missing: bool = True,
    progress: bool = False,
) -> ImportResult:
    """Build label rows (report from ``Report Impression`` when the CSV has it) from CheXpert 5x200.

    Args:
        root: the folder holding the CSV (searched also in ``root/CheXpert-v1.0``).
        csv_name: the CSV file name.
        skip_missing: leave out rows whose image does not exist.
        progress: unused (1,000 rows); accepted so every adapter takes the same options.
    """
    root = require_dir(root, NAME)
    table_path = find_first(root, [csv_name, f"CheXpert-v1.0/{csv_name}", f"*/{csv_name}"], csv_name)
    base = table_path.parent
    table = read_csv_table(table_path)
    require_columns(table, ["Path"], table_path)
    present = [c for c in CLASSES if table and c in table[0]]
    if table and not present:
        require_columns(table, list(CLASSES), table_path)
    result = ImportResult(NAME)
    for record in table:
        image = _image_path(base, record["Path"])
        if skip_missing and not image.is_file():
            result.skip("missing image", str(image))
            continue
        labels = []
        for column in present:
            try:
                if float(record.get(column) or 0) == 1.0:
                    labels.append(column)
            except ValueError:
                continue
        if not labels:
            result.skip("no positive class", record["Path"])
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
    return result.log()
