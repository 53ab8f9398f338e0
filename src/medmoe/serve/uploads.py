"""Checks on uploaded files before anything decodes them: present, non-empty, within the size limit, of a
type the tab reads; zipped DICOM series unpacked safely; CTs measured from their headers before their voxels
are read.

Uploads are data: they are only ever opened by the image and volume readers (pydicom, nibabel, Pillow),
never imported, unpickled or executed, and a zip's member names never choose where its files are written.
Every refusal is a :class:`~medmoe.errors.InvalidInputError` or :class:`~medmoe.errors.CorruptFileError`
whose message the page shows as it is.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from medmoe.errors import CorruptFileError, InvalidInputError

# Defaults of `medmoe serve`: an abdominal CT is 50-300 MB as .nii.gz and 512 x 512 x 300-900 voxels.
DEFAULT_MAX_UPLOAD_MB = 1024
DEFAULT_MAX_CT_VOXELS = 512 * 512 * 1024
MAX_ZIP_MEMBERS = 5000
_CHUNK = 1 << 20


@dataclass(frozen=True)
class UploadLimits:
    """What the page accepts.

    Attributes:
        max_bytes: largest upload (and largest unpacked zip) in bytes.
        max_ct_voxels: largest CT to segment, in voxels (read from the file's header before its voxels).
        max_zip_members: most files in a zipped DICOM series.
    """

    max_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    max_ct_voxels: int = DEFAULT_MAX_CT_VOXELS
    max_zip_members: int = MAX_ZIP_MEMBERS

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_ct_voxels < 1 or self.max_zip_members < 1:
            raise InvalidInputError(f"upload limits must be positive, got {self}")


def _megabytes(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def display_name(path: str | os.PathLike) -> str:
    """The uploaded file's own name (Gradio keeps it as the last part of the path it stores the upload at)."""
    return Path(path).name


def uploaded_file(value, limits: UploadLimits, *, what: str) -> Path:
    """The path of one uploaded file, checked to be a non-empty regular file within ``limits.max_bytes``.

    Args:
        value: what a Gradio ``File`` input hands the handler: a path, an object with ``.name``, or None.
        what: what the tab expects, for the message when nothing was uploaded (``"an image"``).

    Raises:
        InvalidInputError: nothing uploaded, or the file is larger than the limit.
        CorruptFileError: the file is empty or not a regular file.
    """
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise InvalidInputError(f"upload one file ({what}), got {len(value)}")
        value = value[0]
    if value is None or value == "":
        raise InvalidInputError(f"no file uploaded: upload {what} first")
    path = Path(getattr(value, "name", value))
    try:
        info = path.lstat()
    except OSError as err:
        raise InvalidInputError(f"{display_name(path)}: the upload is gone ({err.strerror}); upload it again") from err
    if not stat.S_ISREG(info.st_mode):
        raise CorruptFileError(f"{display_name(path)}: not a regular file")
    if info.st_size == 0:
        raise CorruptFileError(f"{display_name(path)}: the file is empty")
    if info.st_size > limits.max_bytes:
        raise InvalidInputError(f"{display_name(path)}: {_megabytes(info.st_size)} is larger than this page accepts "
                                f"({_megabytes(limits.max_bytes)}; `medmoe serve --max-upload-mb`)")
    return path


def volume_kind(path: Path) -> str:
    """``"nifti"`` or ``"zip"`` from the file's first bytes (the name only breaks ties).

    Raises:
        InvalidInputError: neither a NIfTI file (plain or gzipped) nor a zip archive.
    """
    with open(path, "rb") as fh:
        head = fh.read(352)
    lower = path.name.lower()
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        if lower.endswith(".nii.gz"):
            return "nifti"
        raise InvalidInputError(f"{path.name}: a gzipped file that is not named .nii.gz; expected a NIfTI CT "
                                "(.nii or .nii.gz) or a .zip of one DICOM series")
    if (len(head) >= 348 and head[344:347] in (b"n+1", b"ni1")) or (len(head) >= 8 and head[4:7] == b"n+2"):
        return "nifti"
    if lower.endswith((".nii", ".nii.gz")):
        raise CorruptFileError(f"{path.name}: named NIfTI but its header is not a NIfTI header (truncated or "
                               "another format)")
    raise InvalidInputError(f"{path.name}: not a CT volume (expected a NIfTI file .nii/.nii.gz or a .zip holding "
                            "one DICOM series, one file per slice)")


def extract_dicom_zip(path: Path, dest: Path, limits: UploadLimits) -> Path:
    """Unpack the DICOM files of a zip into ``dest`` (flat, renamed ``00000.dcm``...), within the limits.

    Member names never reach the file system: each file is written as its position in the archive plus
    ``.dcm``. Only members whose first bytes are DICOM's (:func:`~medmoe.data.readers.dicom.dicom_signature`,
    read from the first kilobyte) are written; the others (a README, a file of zeros) are skipped unread
    beyond that kilobyte. Links and folders are skipped; the unpacked size is counted as it is written,
    whatever the archive declares.

    Returns:
        ``dest``, holding the unpacked files.

    Raises:
        InvalidInputError: no file, or no DICOM file, in the archive; too many files; too large unpacked;
            encrypted.
        CorruptFileError: a damaged archive.
    """
    name = path.name
    dest.mkdir(parents=True, exist_ok=True)
    written, count, skipped = 0, 0, []
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16):
                    continue
                if info.flag_bits & 0x1:
                    raise InvalidInputError(f"{name}: the archive is encrypted; upload an unencrypted .zip")
                count += 1
                if count > limits.max_zip_members:
                    raise InvalidInputError(f"{name}: more than {limits.max_zip_members} files; a zipped CT "
                                            "series holds one file per slice")
                total = _unpack_dicom(archive, info, dest / f"{count - 1:05d}.dcm", written, limits.max_bytes, name)
                if total is None:
                    skipped.append(info.filename)
                written = total or written
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as err:
        raise CorruptFileError(f"{name}: not a readable zip archive ({type(err).__name__}: {err})") from err
    except RuntimeError as err:  # zipfile's way of saying "password required" and similar
        raise InvalidInputError(f"{name}: cannot unpack ({err})") from err
    if count == 0:
        raise InvalidInputError(f"{name}: the archive holds no file; expected one DICOM series")
    if len(skipped) == count:
        from medmoe.data.readers.dicom import LOOKED_FOR

        raise InvalidInputError(f"{name}: the archive holds no DICOM file: none of its {count} file(s) starts like "
                                f"DICOM (looked for {LOOKED_FOR}); expected one DICOM series")
    return dest


def _unpack_dicom(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, written: int, max_bytes: int,
                  name: str) -> int | None:
    """Write one member to ``target`` when its first bytes are DICOM's: the bytes unpacked so far (``written``
    before it), or None when it is not DICOM (nothing written).

    Raises:
        InvalidInputError: the archive unpacks to more than ``max_bytes``.
    """
    from medmoe.data.readers.dicom import SNIFF_BYTES, dicom_signature

    with archive.open(info) as src:
        chunk = src.read(SNIFF_BYTES)
        if dicom_signature(chunk, info.file_size) is None:
            return None
        with open(target, "wb") as out:
            while chunk:
                written += len(chunk)
                if written > max_bytes:
                    raise InvalidInputError(f"{name}: unpacks to more than {_megabytes(max_bytes)} (the upload "
                                            "limit, `medmoe serve --max-upload-mb`)")
                out.write(chunk)
                chunk = src.read(_CHUNK)
    return written


def ct_voxels(path: Path) -> int | None:
    """The voxel count of a NIfTI file or a DICOM series folder from headers only (None when unknown)."""
    try:
        if path.is_dir():
            from medmoe.data.readers.dicom import read_dicom_header
            from medmoe.data.volumes import dicom_files

            files = dicom_files(path)  # by their first bytes: a file of zeros is never parsed
            for f in files:
                ds = read_dicom_header(f, f.name, stop_before_pixels=True)
                rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
                if rows and cols:
                    return rows * cols * len(files)
            return None
        import nibabel as nib

        shape = nib.load(str(path)).header.get_data_shape()
    except Exception:  # an unreadable header: the reader says what is wrong with it
        return None
    return math.prod(int(s) for s in shape[:3])


def check_ct_size(path: Path, limits: UploadLimits, *, name: str) -> None:
    """Refuse a CT whose header gives more voxels than ``limits.max_ct_voxels``."""
    voxels = ct_voxels(path)
    if voxels is not None and voxels > limits.max_ct_voxels:
        raise InvalidInputError(f"{name}: {voxels:,} voxels is larger than this page segments "
                                f"({limits.max_ct_voxels:,}; `medmoe serve --max-ct-voxels`); crop or resample it, "
                                "or run `medmoe seg predict` on it")
