"""Read medical images (DICOM, NIfTI, PNG/JPEG/TIFF/BMP) into display-ready float arrays.

    >>> image, meta = read_image("chest.dcm")          # (H, W) float32 in [0, 1]
    >>> meta.modality, meta.spacing
    ('xray', (0.139, 0.139))
    >>> small, _ = read_image("chest.dcm", target_size=448)   # longer side in [448, 896)

``target_size`` is for loaders that resize anyway: the reader may then decode at reduced size (JPEG DCT
scaling, integer box reduction of the stored pixels) instead of converting millions of full-resolution
pixels to float. Resizing the reduced image to the final size gives the same picture as resizing the full
one, within interpolation tolerance.

The format is detected from the file's first bytes (DICOM preamble, PNG/JPEG/TIFF signatures, gzip or
NIfTI header) with the extension as fallback, so a PNG named ``.dcm`` still reads. Every failure is a
medmoe error naming the file and the reason: :class:`~medmoe.errors.MissingFileError` for a path that does
not exist, :class:`~medmoe.errors.CorruptFileError` for anything unreadable (FIFOs and devices included:
they are refused, never opened), :class:`~medmoe.limits.DecodeLimitError` for a file whose header claims
more decoded bytes, pixels or voxels than ``MEDMOE_MAX_DECODED_BYTES`` / ``MEDMOE_MAX_PIXELS`` /
``MEDMOE_MAX_VOXELS`` allow (see :mod:`medmoe.limits`).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from medmoe.data.readers.dicom import read_dicom
from medmoe.data.readers.meta import ImageMeta
from medmoe.data.readers.nifti import read_nifti
from medmoe.data.readers.options import PROJECTIONS, ReadOptions
from medmoe.data.readers.pillow import read_pillow
from medmoe.data.readers.safety import require_regular_file
from medmoe.errors import CorruptFileError, MedMoEError, MissingFileError

__all__ = [
    "IMAGE_FORMATS",
    "ImageMeta",
    "PROJECTIONS",
    "ReadOptions",
    "decode_image",
    "detect_format",
    "read_image",
]

IMAGE_FORMATS = ("dicom", "nifti", "png", "jpeg", "tiff", "bmp")

_EXTENSIONS = {
    ".dcm": "dicom", ".dicom": "dicom", ".dic": "dicom", ".ima": "dicom", "": "dicom",
    ".nii": "nifti", ".nii.gz": "nifti",
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg",
    ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp",
}
# Leading bytes of the formats that have them; gzip is the only compressed format read here (NIfTI).
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"II*\x00", "tiff"),
          (b"MM\x00*", "tiff"), (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"), (b"\x1f\x8b", "nifti"))
_HEAD_BYTES = 552  # enough for the DICOM preamble and both NIfTI header magics


def _extension(name: str) -> str:
    lower = os.path.basename(name).lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(lower)[1]


def detect_format(head: bytes, name: str = "") -> str | None:
    """The image format from the first bytes of a file (at least 552 for NIfTI), else from ``name``.

    Returns:
        One of :data:`IMAGE_FORMATS`, or None when neither the bytes nor the extension are recognised.
    """
    if head[128:132] == b"DICM":
        return "dicom"
    signed = next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)
    if signed is not None:
        return signed
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1") and head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):
        return "nifti"
    if len(head) >= 8 and head[4:7] == b"n+2":
        return "nifti"
    if head[:2] == b"BM" and _extension(name) == ".bmp":
        return "bmp"
    return _EXTENSIONS.get(_extension(name))


def read_image(path: str | os.PathLike, **options: Any) -> tuple[np.ndarray, ImageMeta]:
    """Read one 2-D image from a file.

    Args:
        path: a DICOM, NIfTI (``.nii`` / ``.nii.gz``), PNG, JPEG, TIFF or BMP file.
        options: the fields of :class:`ReadOptions`: ``frame``, ``axial_slice``, ``projection``, ``window``,
            ``target_size`` and the limits ``max_pixels``, ``max_voxels``, ``max_decoded_bytes``.

    Returns:
        ``(image, meta)``: ``image`` is float32 ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB) in [0, 1] after
        windowing, MONOCHROME1 inversion and colour conversion; ``meta`` is an :class:`ImageMeta` that
        describes the stored image (``original_shape``, ``spacing``) even when ``image`` is reduced.

    Raises:
        MissingFileError: ``path`` does not exist.
        CorruptFileError: the file is empty, truncated, of an unsupported type, not a regular file (a FIFO,
            a device) or otherwise unreadable.
        DecodeLimitError: the header claims more than ``max_pixels`` / ``max_voxels`` / ``max_decoded_bytes``
            (a CorruptFileError).
        InvalidInputError: an option does not fit the file (frame / slice out of range, bad projection) or
            ``target_size`` is not a positive integer.
        TypeError: an option that :class:`ReadOptions` does not have.
    """
    requested = ReadOptions(**options)
    name = os.fspath(path)
    if not os.path.exists(name):
        raise MissingFileError(f"{name}: no such file")
    if os.path.isdir(name):
        raise CorruptFileError(f"{name}: is a directory, expected an image file")
    size = require_regular_file(name, "image file").st_size
    try:
        with open(name, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as err:
        raise CorruptFileError(f"{name}: cannot be read ({err})") from err
    if size == 0:
        raise CorruptFileError(f"{name}: file is empty")
    fmt = _checked_format(head, name)
    return _dispatch(fmt, name, name, None, requested.check(fmt, name))


def decode_image(data: bytes, name: str, **options: Any) -> tuple[np.ndarray, ImageMeta]:
    """Like :func:`read_image` for a file held in memory (e.g. a member of a tar shard).

    Args:
        data: the encoded file.
        name: a name for messages and metadata; its extension is the fallback format hint.
        options: as for :func:`read_image`.
    """
    requested = ReadOptions(**options)
    if not data:
        raise CorruptFileError(f"{name}: file is empty")
    fmt = _checked_format(data[:_HEAD_BYTES], name)
    return _dispatch(fmt, None, name, data, requested.check(fmt, name))


def _checked_format(head: bytes, name: str) -> str:
    fmt = detect_format(head, name)
    if fmt is None:
        raise CorruptFileError(
            f"{name}: unsupported file type (extension {_extension(name)!r} and unrecognised content); "
            f"expected one of {list(IMAGE_FORMATS)}"
        )
    return fmt


def _dispatch(fmt: str, path: str | None, name: str, data: bytes | None,
              options: ReadOptions) -> tuple[np.ndarray, ImageMeta]:
    """The reader of ``fmt`` on the file at ``path`` or on its bytes ``data``; any error names the file."""
    try:
        if fmt == "nifti":
            return read_nifti(path, name, options, data=data)
        source = path if data is None else io.BytesIO(data)
        if fmt == "dicom":
            return read_dicom(source, name, options)
        return read_pillow(source, name, options)
    except MedMoEError:
        raise
    except Exception as err:  # a reader bug or library edge case must still name the file
        raise CorruptFileError(f"{name}: cannot read {fmt} image ({type(err).__name__}: {err})") from err
