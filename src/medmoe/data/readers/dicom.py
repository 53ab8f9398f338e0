"""DICOM -> display-ready float image, following the DICOM grayscale and colour pipelines.

Grayscale: stored values -> Modality LUT / rescale slope-intercept -> VOI LUT or window center/width ->
MONOCHROME1 inversion. Colour: YBR is converted to RGB by pydicom, PALETTE COLOR through its LUT.

When the caller needs fewer pixels (``target_size``), the image is box-reduced by an integer factor as early
as the pipeline allows: the stored integers before a linear rescale slope/intercept (averaging commutes
with it), else the output of a Modality LUT or palette lookup; windowing then runs on the small image.
"""

from __future__ import annotations

import logging
import warnings
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing, pixel_array

from medmoe.data.modalities import try_normalize_modality
from medmoe.data.readers.intensity import (
    apply_window,
    box_reduce,
    range_sample,
    reduction_factor,
    robust_rescale,
)
from medmoe.data.readers.meta import ImageMeta
from medmoe.data.readers.safety import check_dicom_size, inflated_header, require_finite
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.limits import DecodeLimitError

logger = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dicom(
    source: str | BinaryIO,
    name: str,
    *,
    frame: int | None = None,
    window: tuple[float, float] | None = None,
    target_size: int | None = None,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Read one frame of a DICOM image.

    Args:
        source: a path or a binary file object.
        name: the path (or name) used in error messages and in the metadata.
        frame: frame of a multi-frame object; default the middle one.
        window: (center, width) overriding the file's own VOI for grayscale images.
        target_size: the longer side the caller needs; the image is box-reduced by the largest integer
            factor that keeps its longer side at least ``target_size`` (so under ``2 * target_size``).
        max_pixels: limit on rows x columns x samples x frames (default ``MEDMOE_MAX_PIXELS``, see
            :mod:`medmoe.limits`), checked from the header before any pixel is decoded; a deflated file is
            inflated only after its header passed and its inflated size was counted.

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
        try:
            header = inflated_header(source, name, max_pixels)
            if header is not None:
                check_dicom_size(header, name, max_pixels)
            if not isinstance(source, str):
                source.seek(0)
            ds = pydicom.dcmread(source, force=True)
        except (CorruptFileError, InvalidInputError):
            raise
        except Exception as err:  # pydicom raises many types for malformed input
            raise CorruptFileError(f"{name}: not a readable DICOM file ({type(err).__name__}: {err})") from err
        if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
            raise CorruptFileError(f"{name}: DICOM file has no pixel data (or is not DICOM at all)")
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        except Exception as err:
            raise CorruptFileError(f"{name}: DICOM image attributes missing or malformed ({err})") from err
        check_dicom_size(ds, name, max_pixels)
        if frame is not None and not 0 <= frame < n_frames:
            raise InvalidInputError(f"{name}: frame {frame} out of range; the file has {n_frames} frame(s)")
        index = (n_frames // 2 if frame is None else frame) if n_frames > 1 else None
        try:
            arr = pixel_array(ds, index=index)
            factor = reduction_factor(arr.shape[0], arr.shape[1], target_size)
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
            if samples == 3:
                image = _colour_to_unit(arr, ds, factor)
            elif photometric == "PALETTE COLOR":
                image = _palette_to_unit(arr, ds, factor)
            else:
                image = _grey_to_unit(arr, ds, window, name, factor)
                if photometric == "MONOCHROME1":
                    image = 1.0 - image
        except (CorruptFileError, InvalidInputError, DecodeLimitError):
            raise
        except Exception as err:
            raise CorruptFileError(f"{name}: cannot decode DICOM pixel data ({type(err).__name__}: {err})") from err

    require_finite(image, f"{name}: DICOM pixel data")
    shape = (n_frames, rows, cols) if n_frames > 1 else (rows, cols)
    meta = ImageMeta(
        path=name,
        format="dicom",
        modality=try_normalize_modality(ds.get("Modality")),
        source_modality=_text(ds.get("Modality")),
        body_part=(_text(ds.get("BodyPartExamined")) or "").lower() or None,
        spacing=_spacing(ds),
        photometric=photometric,
        original_shape=shape + ((samples,) if samples > 1 else ()),
        frame=index,
        description=_description(ds),
    )
    return np.ascontiguousarray(image, dtype=np.float32), meta


def _grey_to_unit(
    arr: np.ndarray, ds: Dataset, window: tuple[float, float] | None, name: str, factor: int = 1
) -> np.ndarray:
    if factor > 1 and "ModalityLUTSequence" not in ds:
        values = _modality(box_reduce(arr, factor), ds)
        sample = _modality(range_sample(arr, factor), ds)
    else:
        # A Modality LUT is indexed by the stored integers, so it runs before averaging.
        full = _modality(arr, ds)
        values, sample = box_reduce(full, factor), range_sample(full, factor)
    values = values.astype(np.float32, copy=False)
    if window is not None:
        return apply_window(values, *window)
    if "VOILUTSequence" in ds:
        lut_max = float(np.max(ds.VOILUTSequence[0].LUTData)) or 1.0
        # The LUT's own largest entry is its white; the descriptor's bit depth often overstates it.
        out = _by_rows(lambda v: apply_voi_lut(v, ds, prefer_lut=True), values)
        out /= np.float32(lut_max)
        return np.clip(out, 0.0, 1.0, out=out)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            low, high = _window_output_range(ds)
            out = _by_rows(lambda v: apply_windowing(v, ds), values)
            out -= np.float32(low)
            out /= np.float32(high - low)
            return np.clip(out, 0.0, 1.0, out=out)
        except Exception as err:
            logger.debug("%s: ignoring unusable window (%s); rescaling to the data range", name, err)
    return robust_rescale(values, sample=sample)


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
        return robust_rescale(box_reduce(arr, factor), sample=range_sample(arr, factor))
    bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
    return np.clip(box_reduce(arr, factor).astype(np.float32) / np.float32(2**bits - 1), 0.0, 1.0)


def _palette_to_unit(arr: np.ndarray, ds: Dataset, factor: int = 1) -> np.ndarray:
    rgb = apply_color_lut(arr, ds)
    return box_reduce(rgb, factor).astype(np.float32) / np.float32(np.iinfo(rgb.dtype).max)


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
