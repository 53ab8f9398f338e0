"""Checks the readers make before they decode: regular files only, and sizes from headers within the limits.

See :mod:`medmoe.limits` for the limits and how to raise them.
"""

from __future__ import annotations

import io
import math
import os
import stat
import zlib
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import Tag

from medmoe.errors import CorruptFileError
from medmoe.limits import MAX_DECODED_BYTES_ENV, MAX_PIXELS_ENV, DecodeLimitError, check_budget, limit

_DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_TAGS = {Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData")}
_HEADER_BYTES = 8 * 2**20  # inflated bytes read to find a deflated dataset's image attributes
_SLACK_BYTES = 64 * 2**20  # inflated bytes allowed beyond the pixel data the header announces
_CHUNK = 2**20

_KINDS = {
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
    stat.S_ISDIR: "a directory",
}


def require_finite(array: np.ndarray, what: str, unit: str = "values") -> None:
    """Raise ``CorruptFileError("<what> contains NaN or infinite <unit>")`` unless every value is finite.

    Args:
        array: the decoded values.
        what: names the file and the data, e.g. ``"scan.dcm: DICOM pixel data"``.
        unit: ``values`` or ``voxels``.
    """
    if not np.all(np.isfinite(array)):
        raise CorruptFileError(f"{what} contains NaN or infinite {unit}")


def require_regular_file(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path`` after checking it is a regular file, so that opening it cannot block.

    Raises:
        CorruptFileError: ``path`` is a FIFO, a device, a socket or a directory, or cannot be stat'ed.
    """
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except OSError as err:
        raise CorruptFileError(f"{name}: cannot be read ({err.strerror or err})") from err
    if not stat.S_ISREG(info.st_mode):
        kind = next((text for test, text in _KINDS.items() if test(info.st_mode)), "not a regular file")
        raise CorruptFileError(f"{name}: is {kind}; expected a regular {what}")
    return info


def check_dicom_size(ds: Dataset, name: str, max_pixels: int | None = None,
                     max_decoded_bytes: int | None = None) -> tuple[int, int, int, int, int]:
    """Refuse a DICOM dataset whose Rows x Columns x SamplesPerPixel x NumberOfFrames exceeds the pixel limit,
    or whose decoded pixel data (those values x BitsAllocated rounded up to bytes) exceeds the byte budget.

    Returns:
        ``(rows, columns, samples per pixel, frames, bytes per sample)`` of the dataset.

    Raises:
        CorruptFileError: the attributes are missing or not numbers.
        DecodeLimitError: over ``max_pixels`` (default ``MEDMOE_MAX_PIXELS``) or ``max_decoded_bytes``
            (default ``MEDMOE_MAX_DECODED_BYTES``).
    """
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        sample_bytes = max(1, -(-int(ds.get("BitsAllocated", 16) or 16) // 8))
    except Exception as err:  # missing, empty or non-numeric values
        raise CorruptFileError(f"{name}: DICOM image attributes missing or malformed ({err})") from err
    if min(rows, cols, samples, frames) < 1:
        raise CorruptFileError(
            f"{name}: DICOM image attributes out of range (Rows {rows}, Columns {cols}, SamplesPerPixel {samples}, "
            f"NumberOfFrames {frames})"
        )
    what = f"{frames} frame(s) x {rows} x {cols} x {samples} sample(s)"
    check_budget(name, what, frames * rows * cols * samples, MAX_PIXELS_ENV, max_pixels)
    check_budget(name, f"{what} x {sample_bytes} byte(s)", frames * rows * cols * samples * sample_bytes,
                 MAX_DECODED_BYTES_ENV, max_decoded_bytes, unit="bytes")
    return rows, cols, samples, frames, sample_bytes


def inflated_header(source: str | BinaryIO, name: str, max_pixels: int | None = None,
                    max_decoded_bytes: int | None = None) -> Dataset | None:
    """The dataset header of a *deflated* DICOM file (transfer syntax 1.2.840.10008.1.2.1.99), read without
    inflating the whole file; None for any other file (pydicom reads those as stored, no expansion).

    pydicom inflates a deflated dataset in one piece before reading any of it, so a megabyte can become
    gigabytes before the image attributes are seen. Here the stream is inflated in chunks: the first 8 MiB
    are parsed for the attributes, the rest only counted, and a stream that inflates to more than the
    announced pixel data (plus 64 MiB) is refused.

    Raises:
        DecodeLimitError: the header claims more values than the limit, or the stream inflates to more
            than the header announces.
        CorruptFileError: the deflated stream or the header cannot be read.
    """
    handle = open(source, "rb") if isinstance(source, str) else source
    try:
        handle.seek(0)
        if read_preamble(handle, force=True) is None:
            return None  # no preamble: not a deflated Part 10 file (force=True reads it as stored)
        meta = read_dataset(handle, is_implicit_VR=False, is_little_endian=True,
                            stop_when=lambda tag, vr, length: tag.group != 2)
        if str(meta.get("TransferSyntaxUID", "")).strip() != _DEFLATED:
            return None
        head, total = _inflate_counting(handle, name, max_pixels)
    finally:
        if isinstance(source, str):
            handle.close()
        else:
            source.seek(0)
    try:
        header = read_dataset(DicomBytesIO(head), is_implicit_VR=False, is_little_endian=True,
                              stop_when=lambda tag, vr, length: tag in _PIXEL_TAGS)
    except Exception as err:  # truncated inside an element: a header over 8 MiB, or damage
        raise CorruptFileError(f"{name}: deflated DICOM header unreadable ({type(err).__name__}: {err})") from err
    announced = math.prod(check_dicom_size(header, name, max_pixels, max_decoded_bytes))
    if total > announced + _SLACK_BYTES:
        raise DecodeLimitError(
            f"{name}: deflated DICOM inflates to more than {announced + _SLACK_BYTES:,} bytes while its header "
            f"announces {announced:,} bytes of pixels; refused"
        )
    return header


def _inflate_counting(handle: BinaryIO, name: str, max_pixels: int | None) -> tuple[bytes, int]:
    """(first inflated bytes, total inflated size) of the rest of ``handle``, holding one chunk at a time.

    Counting stops, with a :class:`DecodeLimitError`, once the total passes 8 bytes per value of the limit.
    """
    ceiling = 8 * limit(MAX_PIXELS_ENV, max_pixels) + _SLACK_BYTES
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = io.BytesIO()
    total = 0
    try:
        while True:
            data = handle.read(_CHUNK)
            pending = data
            while True:
                out = inflater.decompress(pending, _CHUNK)
                pending = inflater.unconsumed_tail
                total += len(out)
                if head.tell() < _HEADER_BYTES:
                    head.write(out[: _HEADER_BYTES - head.tell()])
                if total > ceiling:
                    raise DecodeLimitError(f"{name}: deflated DICOM inflates to over {ceiling:,} bytes; refused "
                                           "(see MEDMOE_MAX_PIXELS in docs/security.md)")
                if inflater.eof or (not pending and len(out) < _CHUNK):
                    break  # bytes after the end of the stream (a padding byte) are not data
            if not data or inflater.eof:
                break
    except zlib.error as err:
        raise CorruptFileError(f"{name}: deflated DICOM data is corrupt ({err})") from err
    return head.getvalue(), total
