"""DICOM -> display-ready float image, following the DICOM grayscale and colour pipelines.

Grayscale: stored values -> Modality LUT / rescale slope-intercept -> VOI LUT or window center/width ->
MONOCHROME1 inversion. Colour: YBR is converted to RGB by pydicom, PALETTE COLOR through its LUT.

When the caller needs fewer pixels (``target_size``), the image is box-reduced by an integer factor as early
as the pipeline allows: the stored integers before a linear rescale slope/intercept (averaging commutes
with it), else the output of a Modality LUT or palette lookup; windowing then runs on the small image.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import warnings
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing, pixel_array

from medmoe.data.modalities import try_normalize_modality
from medmoe.data.readers import intensity
from medmoe.data.readers.meta import ImageMeta
from medmoe.data.readers.options import ReadOptions
from medmoe.data.readers.safety import check_dicom_size, inflated_header, require_finite
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.limits import DecodeLimitError

logger = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00009, 0x7FE00008))

# ------------------------------------------------------------------------------------------ the sniff
SNIFF_BYTES = 1024
"""Bytes :func:`sniff_dicom` reads: the 128-byte preamble, ``DICM``, the file meta group and the first data
elements."""
LOOKED_FOR = ("the 'DICM' marker at byte 128 followed by a file meta group, or a little-endian DICOM data element "
              "of group 0002, 0004 or 0008 at byte 0")
_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US "
                 b"UT UV".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())  # 2 reserved bytes, 4-byte length
_UNDEFINED_LENGTH_VRS = frozenset(b"OB OW SQ UN".split())
_FIRST_GROUPS = (0x0002, 0x0004, 0x0008)  # every stored SOP instance has (0008,0016) SOP Class UID
_UNDEFINED = 0xFFFFFFFF
_SNIFF_ELEMENTS = 8  # beyond the file meta group
_TRANSFER_SYNTAX_TAG = 0x00020010
_DEFLATED_UID = b"1.2.840.10008.1.2.1.99"  # a deflated stream may start with two zero bytes
MAX_HEADER_ELEMENTS = 20_000
"""Top-level data elements :func:`read_dicom_header` reads before it calls a file malformed (a CT slice holds
a few hundred)."""


def dicom_signature(head: bytes, size: int) -> str | None:
    """How the first bytes of a file of ``size`` bytes show that it is DICOM, or None when they do not.

    Returns:
        ``"part10"``: the 128-byte preamble, ``DICM``, then the file meta group (checked as below), and
        after it no group 0000 element (a command group belongs to a network message; pydicom would read
        a run of zeros there as one, element by element);
        ``"explicit-le"`` / ``"implicit-le"``: no preamble, but the first data elements (up to 8 within
        ``head``) parse as little-endian DICOM: the first in group 0002 (meta), 0004 (DICOMDIR) or 0008
        (every stored instance has a SOP Class UID there, and elements are stored in ascending order),
        each tag above the one before, explicit VRs from the standard's list, lengths within the file.

    Big-endian data without a preamble (a transfer syntax retired in 2004) is not recognised: its first
    bytes cannot be told from noise by a few reads, and pydicom would parse such noise element by element
    (a 300 MB file of zeros takes minutes).
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "part10" if _elements_parse(head, 132, size, meta_only=True) else None
    if _elements_parse(head, 0, size, meta_only=False):
        return "explicit-le" if head[4:6] in _VRS else "implicit-le"
    return None


def _elements_parse(head: bytes, offset: int, size: int, *, meta_only: bool) -> bool:
    """True when the data elements from ``offset`` parse (see :func:`dicom_signature`); with ``meta_only``
    the walk ends where the file meta group (0002, always explicit little endian) ends."""
    previous, explicit, checked, meta, deflated = -1, None, 0, 0, False
    while offset + 8 <= len(head) and checked - meta < _SNIFF_ELEMENTS:
        group, element = struct.unpack_from("<HH", head, offset)
        if checked == 0 and group not in _FIRST_GROUPS:
            return False
        if meta_only and checked and group != 0x0002:  # the dataset, in its own transfer syntax, starts here
            return group != 0 or deflated
        tag = group << 16 | element
        if tag <= previous:
            return False
        if explicit is None or (previous >> 16 == 0x0002 and group != 0x0002):
            explicit = head[offset + 4:offset + 6] in _VRS  # the dataset may switch to implicit after the meta
        header, length, vr = _element_header(head, offset, explicit)
        if header is None:
            return checked > 0 and explicit and head[offset + 4:offset + 6] in _VRS  # cut by the sniff window
        if header == 0:
            return False
        checked += 1
        meta += group == 0x0002
        if length == _UNDEFINED:
            return not explicit or vr in _UNDEFINED_LENGTH_VRS  # a sequence: its items are not walked
        if tag == _TRANSFER_SYNTAX_TAG:
            deflated = head[offset + header:offset + header + length].rstrip(b"\0 ") == _DEFLATED_UID
        offset += header + length
        if offset > size:
            return False
        previous = tag
    return checked > 0


def _element_header(head: bytes, offset: int, explicit: bool) -> tuple[int | None, int, bytes]:
    """(header bytes, value length, VR) of the element at ``offset``; header 0 when it cannot be an element,
    None when ``head`` ends inside it."""
    if not explicit:
        return 8, struct.unpack_from("<I", head, offset + 4)[0], b""
    vr = head[offset + 4:offset + 6]
    if vr not in _VRS:
        return 0, 0, vr
    if vr not in _LONG_VRS:
        return 8, struct.unpack_from("<H", head, offset + 6)[0], vr
    if offset + 12 > len(head):
        return None, 0, vr
    if head[offset + 6:offset + 8] != b"\0\0":
        return 0, 0, vr
    return 12, struct.unpack_from("<I", head, offset + 8)[0], vr


def sniff_dicom(source: str | os.PathLike | BinaryIO) -> str | None:
    """:func:`dicom_signature` of a file (a path or a seekable binary file object, left at offset 0); reads
    at most :data:`SNIFF_BYTES`. None also for a file that cannot be read."""
    path = isinstance(source, str | os.PathLike)
    try:
        with open(source, "rb") if path else contextlib.nullcontext(source) as fh:
            size = fh.seek(0, io.SEEK_END)
            fh.seek(0)
            head = fh.read(SNIFF_BYTES)
            fh.seek(0)
    except OSError:
        return None
    return dicom_signature(head, size)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when :func:`sniff_dicom` recognises the file (any name, any suffix)."""
    return sniff_dicom(path) is not None


def require_dicom(source: str | os.PathLike | BinaryIO, name: str) -> str:
    """The :func:`dicom_signature` of a file, or a :class:`CorruptFileError` saying what was looked for."""
    kind = sniff_dicom(source)
    if kind is None:
        raise CorruptFileError(f"{name}: not a DICOM file (looked for {LOOKED_FOR})")
    return kind


class _AscendingTags:
    """A pydicom ``stop_when`` callback: stops at a top-level tag not above the one before (data that is not
    a DICOM dataset: zeros, text, a damaged stream), after :data:`MAX_HEADER_ELEMENTS` elements, and at the
    pixel data when ``stop_at_pixels``; says afterwards why it stopped."""

    def __init__(self, handle: BinaryIO, stop_at_pixels: bool) -> None:
        self.handle, self.stop_at_pixels = handle, stop_at_pixels
        self.previous, self.count, self.problem = -1, 0, None

    def __call__(self, tag, vr, length) -> bool:
        tag = int(tag)
        if self.stop_at_pixels and tag in _PIXEL_TAGS:
            return True
        self.count += 1
        if tag <= self.previous:
            self.problem = (f"data element ({tag >> 16:04X},{tag & 0xFFFF:04X}) near byte {self.handle.tell():,} "
                            f"follows ({self.previous >> 16:04X},{self.previous & 0xFFFF:04X}); DICOM elements "
                            "ascend")
        elif self.count > MAX_HEADER_ELEMENTS:
            self.problem = f"more than {MAX_HEADER_ELEMENTS:,} top-level data elements"
        self.previous = tag
        return self.problem is not None


def read_dicom_header(source: str | os.PathLike | BinaryIO, name: str, *, defer_size: int | None = None,
                      stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file with pydicom after :func:`require_dicom`, stopping at the first element that breaks
    the dataset's order (so a valid start followed by junk costs only the valid part).

    Args:
        source: a path or a seekable binary file object.
        name: for messages.
        defer_size: values of at least this many bytes are read only when used (pydicom's ``defer_size``;
            a path source only).
        stop_before_pixels: stop at the pixel data.

    Raises:
        CorruptFileError: not DICOM, malformed, or unreadable.
    """
    require_dicom(source, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every oddity it tolerates
        try:
            path = isinstance(source, str | os.PathLike)
            with open(source, "rb") if path else contextlib.nullcontext(source) as handle:
                guard = _AscendingTags(handle, stop_before_pixels)
                ds = read_partial(handle, guard, defer_size=defer_size if path else None, force=True)
        except CorruptFileError:
            raise
        except Exception as err:  # pydicom raises many types for malformed input
            raise CorruptFileError(f"{name}: not a readable DICOM file ({type(err).__name__}: {err})") from err
    if guard.problem:
        raise CorruptFileError(f"{name}: not a readable DICOM file ({guard.problem})")
    return ds


def read_dicom(source: str | BinaryIO, name: str, options: ReadOptions) -> tuple[np.ndarray, ImageMeta]:
    """Read one frame of a DICOM image.

    Args:
        source: a path or a binary file object.
        name: the path (or name) used in error messages and in the metadata.
        options: ``frame`` (default the middle one of a multi-frame object), ``window`` ((center, width)
            overriding the file's own VOI for grayscale images), ``target_size`` (the image is box-reduced by
            the largest integer factor that keeps its longer side at least ``target_size``, so under
            ``2 * target_size``), ``max_pixels`` (limit on rows x columns x samples x frames, default
            ``MEDMOE_MAX_PIXELS``) and ``max_decoded_bytes`` (those values x BitsAllocated in bytes, default
            ``MEDMOE_MAX_DECODED_BYTES``). Both limits are checked from the header before any pixel is decoded;
            a deflated file is inflated only after its header passed and its inflated size was counted.

    Returns:
        ``(image, meta)``: float32 ``(H, W)`` or ``(H, W, 3)`` in [0, 1], and :class:`ImageMeta`.

    Raises:
        CorruptFileError: not DICOM, no pixel data, or pixel data that cannot be decoded.
        DecodeLimitError: the header claims more values than ``max_pixels``.
        InvalidInputError: ``frame`` is out of range.
    """
    with warnings.catch_warnings():
        # force=True lets preamble-less files through; pydicom warns about every oddity it tolerates.
        warnings.simplefilter("ignore")
        ds, frames, shape = _checked_dataset(source, name, options)
        index = _frame_index(frames, options.frame, name)
        image, photometric = _frame_to_unit(ds, index, options, name)
    require_finite(image, f"{name}: DICOM pixel data")
    return np.ascontiguousarray(image, dtype=np.float32), ImageMeta(
        path=name,
        format="dicom",
        modality=try_normalize_modality(ds.get("Modality")),
        source_modality=_text(ds.get("Modality")),
        body_part=(_text(ds.get("BodyPartExamined")) or "").lower() or None,
        spacing=_spacing(ds),
        photometric=photometric,
        original_shape=shape,
        frame=index,
        description=_description(ds),
    )


def _checked_dataset(source: str | BinaryIO, name: str,
                     options: ReadOptions) -> tuple[Dataset, int, tuple[int, ...]]:
    """The dataset (pixel data not decoded), its frame count and its stored shape ((frames,) rows, columns
    (, samples)), after the sniff and the size limits: a deflated file's header is inflated and checked
    first, then the dataset read and checked again."""
    require_dicom(source, name)  # a few hundred bytes decide, before pydicom parses anything
    limits = (options.max_pixels, options.max_decoded_bytes)
    try:
        # a deflated file: its header checked before it inflates (a file object is left at offset 0)
        inflated_header(source, name, *limits)
    except (CorruptFileError, InvalidInputError):
        raise
    except Exception as err:  # pydicom raises many types for malformed input
        raise CorruptFileError(f"{name}: not a readable DICOM file ({type(err).__name__}: {err})") from err
    ds = read_dicom_header(source, name)
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise CorruptFileError(f"{name}: DICOM file has no pixel data (or is not DICOM at all)")
    rows, cols, samples, frames, _ = check_dicom_size(ds, name, *limits)
    shape = (frames, rows, cols) if frames > 1 else (rows, cols)
    return ds, frames, shape + ((samples,) if samples > 1 else ())


def _frame_index(frames: int, frame: int | None, name: str) -> int | None:
    """The frame to decode: ``frame``, the middle one by default, None for a single-frame image."""
    if frame is not None and not 0 <= frame < frames:
        raise InvalidInputError(f"{name}: frame {frame} out of range; the file has {frames} frame(s)")
    if frames == 1:
        return None
    return frames // 2 if frame is None else frame


def _frame_to_unit(ds: Dataset, index: int | None, options: ReadOptions, name: str) -> tuple[np.ndarray, str]:
    """Decode frame ``index`` (None: the only one) to [0, 1] through the grey, palette or colour pipeline,
    box-reduced for ``options.target_size``; also the photometric interpretation."""
    try:
        arr = pixel_array(ds, index=index)
        factor = intensity.reduction_factor(arr.shape[0], arr.shape[1], options.target_size)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
            return _colour_to_unit(arr, ds, factor), photometric
        if photometric == "PALETTE COLOR":
            return _palette_to_unit(arr, ds, factor), photometric
        image = _grey_to_unit(arr, ds, options.window, name, factor)
        return (1.0 - image if photometric == "MONOCHROME1" else image), photometric
    except (CorruptFileError, InvalidInputError, DecodeLimitError):
        raise
    except Exception as err:
        raise CorruptFileError(f"{name}: cannot decode DICOM pixel data ({type(err).__name__}: {err})") from err


def _grey_to_unit(
    arr: np.ndarray, ds: Dataset, window: tuple[float, float] | None, name: str, factor: int = 1
) -> np.ndarray:
    if factor > 1 and "ModalityLUTSequence" not in ds:
        values = _modality(intensity.box_reduce(arr, factor), ds)
        sample = _modality(intensity.range_sample(arr, factor), ds)
    else:
        # A Modality LUT is indexed by the stored integers, so it runs before averaging.
        full = _modality(arr, ds)
        values, sample = intensity.box_reduce(full, factor), intensity.range_sample(full, factor)
    values = values.astype(np.float32, copy=False)
    if window is not None:
        return intensity.apply_window(values, *window)
    if "VOILUTSequence" in ds:
        lut_max = float(np.max(ds.VOILUTSequence[0].LUTData)) or 1.0
        # The LUT's own largest entry is its white; the descriptor's bit depth often overstates it.
        out = _by_rows(lambda v: apply_voi_lut(v, ds, prefer_lut=True), values)
        return intensity.to_unit_range(out, 0.0, lut_max, copy=False)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            low, high = _window_output_range(ds)
            out = _by_rows(lambda v: apply_windowing(v, ds), values)
            return intensity.to_unit_range(out, low, high - low, copy=False)
        except Exception as err:
            logger.debug("%s: ignoring unusable window (%s); rescaling to the data range", name, err)
    return intensity.robust_rescale(values, sample=sample)


def _by_rows(function, values: np.ndarray, rows: int = 256) -> np.ndarray:
    """``function`` (an element-wise pydicom LUT, which works in float64) applied to blocks of rows into one
    float32 result, so its temporaries are a block's size, not the image's."""
    out = np.empty(values.shape, dtype=np.float32)
    for start in range(0, values.shape[0], rows):
        out[start:start + rows] = function(values[start:start + rows])
    return out


def _modality(arr: np.ndarray | None, ds: Dataset) -> np.ndarray | None:
    """The Modality LUT or rescale slope / intercept; the linear case in float32, not pydicom's float64."""
    if arr is None:
        return None
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(arr, ds)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None or intercept is None:  # as pydicom: rescale only when both are given
        return arr
    values = arr.astype(np.float32)
    values *= np.float32(float(slope))
    values += np.float32(float(intercept))
    return values


def _window_output_range(ds: Dataset) -> tuple[float, float]:
    """The range pydicom's ``apply_windowing`` maps the window onto (PS3.3 C.11.2.1.2)."""
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = sorted((low * float(slope) + float(intercept), high * float(slope) + float(intercept)))
    if high <= low:
        raise ValueError("empty window output range")
    return low, high


def _colour_to_unit(arr: np.ndarray, ds: Dataset, factor: int = 1) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.floating):
        sample = intensity.range_sample(arr, factor)
        return intensity.robust_rescale(intensity.box_reduce(arr, factor), sample=sample)
    bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
    return np.clip(intensity.box_reduce(arr, factor).astype(np.float32) / np.float32(2**bits - 1), 0.0, 1.0)


def _palette_to_unit(arr: np.ndarray, ds: Dataset, factor: int = 1) -> np.ndarray:
    rgb = apply_color_lut(arr, ds)
    return intensity.box_reduce(rgb, factor).astype(np.float32) / np.float32(np.iinfo(rgb.dtype).max)


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    candidates = [ds.get("PixelSpacing"), ds.get("ImagerPixelSpacing")]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        measures = shared[0].get("PixelMeasuresSequence")
        if measures:
            candidates.append(measures[0].get("PixelSpacing"))
    for value in candidates:
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return row, col
    regions = ds.get("SequenceOfUltrasoundRegions")
    if regions:
        region = regions[0]
        # Physical units code 3 is centimetres.
        if int(region.get("PhysicalUnitsXDirection", 0)) == 3 and int(region.get("PhysicalUnitsYDirection", 0)) == 3:
            dx, dy = abs(float(region.PhysicalDeltaX)) * 10.0, abs(float(region.PhysicalDeltaY)) * 10.0
            if dx > 0 and dy > 0:
                return dy, dx
    return None


def _text(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _description(ds: Dataset) -> str | None:
    parts: list[str] = []
    for keyword in ("Modality", "BodyPartExamined", "StudyDescription", "SeriesDescription"):
        text = _text(ds.get(keyword))
        if text and text.lower() not in (p.lower() for p in parts):
            parts.append(text)
    return ", ".join(parts) or None
