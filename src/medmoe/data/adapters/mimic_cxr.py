"""MIMIC-CXR-JPG (PhysioNet) -> manifest rows.

Source: the PhysioNet pages of MIMIC-CXR-JPG 2.0.0 (images and CSVs) and of MIMIC-CXR 2.0.0, whose
``mimic-cxr-reports.zip`` holds one report per study as ``files/pXX/pXXXXXXXX/sXXXXXXXX.txt``. Layout::

    ROOT/mimic-cxr-2.0.0-metadata.csv.gz     dicom_id, subject_id, study_id, ..., ViewPosition, ...
    ROOT/mimic-cxr-2.0.0-split.csv.gz        dicom_id, study_id, subject_id, split (train/validate/test)
    ROOT/mimic-cxr-2.0.0-chexpert.csv.gz     subject_id, study_id, 14 finding columns (1.0/0.0/-1.0/blank)
    ROOT/files/p10/p10000032/s50414267/02aa804e-....jpg
    ROOT/files/p10/p10000032/s50414267.txt   (extracted reports) or ROOT/mimic-cxr-reports.zip

The reports may live elsewhere (``reports_root`` / ``--reports-root``): a folder holding their ``files/``
tree, the folder holding ``mimic-cxr-reports.zip``, or the zip file itself. One row per image; every image
of a study shares the study's report. Labels are the CheXpert columns marked positive (1.0); uncertain
(-1.0) labels are left out.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from medmoe.data.adapters.common import (
    ImportResult,
    find_first,
    positive_labels,
    read_csv_table,
    require_columns,
    require_dir,
)
from medmoe.data.manifest import ManifestRow, normalize_split
from medmoe.errors import CorruptFileError, MissingFileError

NAME = "mimic-cxr"
FRONTAL_VIEWS = ("PA", "AP")


REPORTS_ZIP = "mimic-cxr-reports.zip"


class _Reports:
    """Report text by study path (``files/pXX/pXXXXXXXX/sXXXXXXXX.txt``) from report folders or the zip.

    Each of ``roots`` is a folder holding the extracted ``files/`` tree and / or ``mimic-cxr-reports.zip``,
    or the zip file itself.
    """

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [r for r in roots if r.is_dir()]
        self.zip: zipfile.ZipFile | None = None  # when set, so is zip_names
        archive = next((r if r.is_file() else r / REPORTS_ZIP for r in roots
                        if r.is_file() or (r / REPORTS_ZIP).is_file()), None)
        if archive is None:
            return
        try:
            self.zip = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError) as err:
            raise CorruptFileError(f"{archive}: not a readable zip of MIMIC-CXR reports ({err})") from err
        # Index by the path from "files/" on, whatever folder the zip wraps it in.
        self.zip_names = {name[name.index("files/") :]: name for name in self.zip.namelist()
                          if name.endswith(".txt") and "files/" in name}
        if not self.zip_names:
            self.close()
            raise CorruptFileError(f"{archive}: holds no report (expected files/pXX/pXXXXXXXX/sXXXXXXXX.txt members)")

    def get(self, relative: str) -> str | None:
        for root in self.roots:
            path = root / relative
            if path.is_file():
                return path.read_text(encoding="utf-8", errors="replace")
        if self.zip is not None and relative in self.zip_names:
            return self.zip.read(self.zip_names[relative]).decode("utf-8", errors="replace")
        return None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _reports_location(path: Path) -> Path:
    """``--reports-root`` checked: a folder holding ``files/`` or the zip, or the zip itself.

    Raises:
        MissingFileError: the path does not exist, or is a folder with neither ``files/`` nor the zip.
    """
    if path.is_file() or (path / "files").is_dir() or (path / REPORTS_ZIP).is_file():
        return path
    what = "does not exist" if not path.exists() else f"holds neither files/ nor {REPORTS_ZIP}"
    raise MissingFileError(f"{path}: reports root {what} (expected the folder of the reports' files/ tree, "
                           f"the folder holding {REPORTS_ZIP}, or that zip)")


def import_mimic_cxr(
    root: str | os.PathLike,
    *,
    reports_root: str | os.PathLike | None = None,
    views: tuple[str, ...] | None = FRONTAL_VIEWS,
    skip_missing: bool = True,
    progress: bool = False,
) -> ImportResult:
    """Build manifest rows from a MIMIC-CXR-JPG tree.

    Args:
        root: the release directory (holding the CSVs and ``files/``).
        reports_root: where the reports are, if not in ``root``: the folder of their ``files/`` tree, the
            folder holding ``mimic-cxr-reports.zip``, or that zip file.
        views: keep images whose ViewPosition is one of these (default frontal PA/AP); None keeps all.
        skip_missing: leave out rows whose JPG does not exist (counted in ``skipped``).
        progress: tqdm progress bar over the metadata rows.

    Returns:
        :class:`ImportResult` with rows (dataset ``mimic-cxr``, split from the split CSV, ``validate`` ->
        ``val``) and skipped entries.
    """
    root = require_dir(root, NAME)
    metadata_path = find_first(root, ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv",
                                      "mimic-cxr-*-metadata.csv*"], "the metadata CSV")
    split_path = find_first(root, ["mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv",
                                   "mimic-cxr-*-split.csv*"], "the split CSV")
    labels_path = find_first(root, ["mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv",
                                    "mimic-cxr-*-chexpert.csv*"], "the CheXpert labels CSV", required=False)
    metadata = read_csv_table(metadata_path)
    require_columns(metadata, ["dicom_id", "subject_id", "study_id", "ViewPosition"], metadata_path)
    split_table = read_csv_table(split_path)
    require_columns(split_table, ["dicom_id", "split"], split_path)
    splits = {r["dicom_id"]: normalize_split(r["split"]) for r in split_table}
    labels: dict[tuple[str, str], list[str]] = {}
    if labels_path is not None:
        table = read_csv_table(labels_path)
        require_columns(table, ["subject_id", "study_id"], labels_path)
        columns = [c for c in (table[0] if table else {}) if c not in ("subject_id", "study_id")]
        labels = {(r["subject_id"], r["study_id"]): positive_labels(r, columns) for r in table}

    report_roots = [_reports_location(Path(reports_root))] if reports_root is not None else []
    reports = _Reports(report_roots + [root])
    result = ImportResult(NAME)
    wanted_views = {v.upper() for v in views} if views else None
    try:
        for record in tqdm(metadata, desc=NAME, unit="image", disable=not progress):
            subject, study, dicom_id = record["subject_id"], record["study_id"], record["dicom_id"]
            view = (record.get("ViewPosition") or "").strip().upper()
            if wanted_views is not None and view not in wanted_views:
                result.skip("other view", f"{dicom_id} ({view or 'no view'})")
                continue
            study_dir = f"files/p{subject[:2]}/p{subject}/s{study}"
            image = root / study_dir / f"{dicom_id}.jpg"
            if skip_missing and not image.is_file():
                result.skip("missing image", str(image))
                continue
            report = reports.get(f"{study_dir}.txt")
            if report is None:
                result.skip("missing report", f"{study_dir}.txt")
                continue
            if dicom_id not in splits:
                result.skip("no split assignment", dicom_id)
                continue
            result.rows.append(
                ManifestRow(
                    image=str(image),
                    report=report,
                    modality="xray",
                    labels=labels.get((subject, study), []),
                    dataset=NAME,
                    split=splits[dicom_id],
                    extra={"subject_id": subject, "study_id": study, "view": view},
                )
            )
    finally:
        reports.close()
    _require_some_report(result, report_roots + [root])
    return result.log()


def _require_some_report(result: ImportResult, roots: list[Path]) -> None:
    """Fail when images were found but not one report: the reports are not where they were looked for.

    Raises:
        MissingFileError: naming the report paths and the places looked in.
    """
    missing = result.skipped.get("missing report", [])
    if missing and not result.rows and "missing image" not in result.skipped:
        places = ", ".join(str(r) if r.is_file() else f"{r}/files/ and {r / REPORTS_ZIP}" for r in roots)
        raise MissingFileError(f"none of the {len(missing)} study reports was found (looked for {missing[0]}, ... in "
                               f"{places}); give the reports' folder or zip with reports_root / --reports-root")
