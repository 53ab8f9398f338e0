"""What a prediction input is: one CT (a NIfTI file or a DICOM series folder) or a folder of cases.

Rules, decided from the folder's own entries (no file is decoded; DICOM files are recognised by their first
kilobyte, whatever their name, by :func:`medmoe.data.readers.dicom.is_dicom_file`, as
:func:`medmoe.data.volumes.read_dicom_series` does):

- a NIfTI file is one case, named by its stem (``ct_001.nii.gz`` -> ``ct_001``);
- a folder whose files are DICOM slices is one case (one series), named by the folder;
- a folder holding NIfTI files and/or sub-folders with DICOM files is a folder of cases: each NIfTI file
  and each DICOM sub-folder is a case (sub-folder name); other files and sub-folders without DICOM files
  are ignored (logged);
- a folder with DICOM slices *and* NIfTI files is ambiguous and refused, so is one holding no CT.

Two cases with the same name (``a.nii.gz`` and a sub-folder ``a``) get ``-2``, ``-3`` ... suffixes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from medmoe.data.readers.dicom import is_dicom_file
from medmoe.data.readers.nifti import is_nifti
from medmoe.errors import InvalidInputError

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Case:
    """One CT to segment.

    Attributes:
        name: output name (NIfTI stem or DICOM folder name).
        path: the NIfTI file or the DICOM series folder.
        kind: ``"nifti"`` or ``"dicom"``.
    """

    name: str
    path: Path
    kind: str


@dataclass(frozen=True)
class CaseSet:
    """The cases of one input; ``folder`` is True for a folder of cases (then outputs go into a folder)."""

    cases: list[Case]
    folder: bool
    ignored: list[Path]


def nifti_stem(path: str | os.PathLike) -> str:
    """``ct.nii.gz`` -> ``ct``; ``ct.nii`` -> ``ct``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as err:
        raise InvalidInputError(f"{folder}: cannot list the folder ({err.strerror or err})") from err


def holds_dicom_files(folder: Path) -> bool:
    """True when ``folder`` itself (not its sub-folders) holds at least one DICOM file."""
    return any(p.is_file() and not is_nifti(p) and is_dicom_file(p) for p in _entries(folder))


def find_cases(path: str | os.PathLike) -> CaseSet:
    """The cases of a prediction input (see the module doc for the rules).

    Raises:
        InvalidInputError: the path does not exist, is not a CT format, or the folder holds no CT or mixes
            DICOM slices with NIfTI files.
    """
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: no such file or folder (expected a CT as NIfTI, a DICOM series folder "
                                "or a folder of cases)")
    if p.is_file():
        if is_nifti(p):
            return CaseSet([Case(nifti_stem(p), p, "nifti")], folder=False, ignored=[])
        # not a volume format: read_ct names the problem (a single DICOM slice, a PNG...)
        from medmoe.data.volumes import read_ct

        read_ct(p, check_ct=False)
        raise InvalidInputError(f"{p}: not a CT volume (expected a .nii/.nii.gz file or a folder)")  # pragma: no cover
    entries = _entries(p)
    files = [e for e in entries if e.is_file()]
    niftis = [e for e in files if is_nifti(e)]
    dicoms = [e for e in files if not is_nifti(e) and is_dicom_file(e)]
    if dicoms and niftis:
        raise InvalidInputError(
            f"{p}: holds both DICOM slices ({len(dicoms)}) and NIfTI files ({len(niftis)}); put each DICOM "
            "series in its own sub-folder to predict a folder of cases")
    if dicoms:
        others = [e for e in entries if e.is_dir()]
        if others:
            logger.warning("%s: read as one DICOM series (%d files); its sub-folders %s are ignored", p, len(dicoms),
                           [o.name for o in others[:5]])
        return CaseSet([Case(p.resolve().name or str(p), p, "dicom")], folder=False, ignored=[])
    cases: list[Case] = []
    ignored: list[Path] = []
    for entry in entries:
        if entry.is_file() and is_nifti(entry):
            cases.append(Case(nifti_stem(entry), entry, "nifti"))
        elif entry.is_dir() and holds_dicom_files(entry):
            cases.append(Case(entry.name, entry, "dicom"))
        elif entry.is_file() or entry.is_dir():
            ignored.append(entry)
    if not cases:
        raise InvalidInputError(
            f"{p}: no CT found (expected DICOM slices of one series, or NIfTI files and/or sub-folders holding "
            "one DICOM series each)")
    for entry in ignored:
        logger.info("%s: not a case (neither a NIfTI file nor a folder of DICOM files), ignored", entry)
    return CaseSet(_unique_names(cases), folder=True, ignored=ignored)


def _unique_names(cases: list[Case]) -> list[Case]:
    seen: dict[str, int] = {}
    out = []
    for case in cases:
        key = case.name.lower()  # case-insensitive file systems would merge "A" and "a"
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            renamed = f"{case.name}-{seen[key]}"
            logger.warning("two cases are named %r; %s is written as %r", case.name, case.path, renamed)
            case = Case(renamed, case.path, case.kind)
            seen[renamed.lower()] = 1
        out.append(case)
    return out
