"""NIfTI volume -> one axial image (a slice or a projection), in radiological display orientation."""

from __future__ import annotations

import gzip
import io
import logging
import os
from collections.abc import Callable
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation

from medmoe.data.readers.intensity import apply_window, robust_rescale
from medmoe.data.readers.meta import ImageMeta
from medmoe.data.readers.options import ReadOptions
from medmoe.data.readers.safety import require_finite
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.limits import MAX_PIXELS_ENV, MAX_VOXELS_ENV, DecodeLimitError, check_budget

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Axis roles assumed when the affine cannot be trusted: voxel axes taken as RAS+.
_STORED_ORDER = {"axial": 2, "x": (0, 1), "y": (1, 1)}


def is_nifti(path: str | os.PathLike) -> bool:
    """A ``.nii`` / ``.nii.gz`` name (any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def load_nifti(
    path: str | None, name: str, data: bytes | None = None, *, max_voxels: int | None = None
) -> nib.spatialimages.SpatialImage:
    """Open a NIfTI-1/2 image from a path or from the bytes of a (possibly gzipped) file.

    Only the header is read from a path (voxels load lazily). Gzipped bytes are inflated no further than
    the voxel data their header announces, and that is checked against ``max_voxels`` first, so a small
    file cannot inflate to gigabytes. The header's shape is checked in both cases (:func:`check_nifti_size`).

    Raises:
        CorruptFileError: not NIfTI, or an uncompressed file shorter than its header's voxel data.
        DecodeLimitError: the header claims more voxels than ``max_voxels``.
    """
    try:
        if data is None:
            image = nib.load(path)
            size = os.path.getsize(path) if not str(path).lower().endswith(".gz") else None
        else:
            raw = _inflate_nifti(data, name, max_voxels) if data[:2] == b"\x1f\x8b" else data
            image, size = _either_version(lambda image_class, _: image_class.from_bytes(raw)), len(raw)
    except (CorruptFileError, InvalidInputError):
        raise
    except Exception as err:
        raise CorruptFileError(f"{name}: not a readable NIfTI file ({type(err).__name__}: {err})") from err
    check_nifti_size(image.header, name, max_voxels=max_voxels, file_size=size)
    return image


def _either_version(load: Callable[[type, type], Any]) -> Any:
    """``load(image class, header class)`` of NIfTI-1, else of NIfTI-2."""
    for classes in ((nib.Nifti1Image, nib.Nifti1Header), (nib.Nifti2Image, nib.Nifti2Header)):
        try:
            return load(*classes)
        except Exception:  # try the other NIfTI version
            continue
    raise ValueError("neither a NIfTI-1 nor a NIfTI-2 header")


def _inflate_nifti(data: bytes, name: str, max_voxels: int | None) -> bytes:
    """Gunzip a NIfTI file held in memory, reading its header first and then only the bytes it announces."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        head = stream.read(544)  # a NIfTI-2 header is 540 bytes, NIfTI-1 348 (+ 4 extension flag bytes)
        header = _either_version(lambda _, header: header.from_fileobj(io.BytesIO(head), check=False))
        check_nifti_size(header, name, max_voxels=max_voxels)
        return head + stream.read(max(0, _data_end(header) - len(head)))


def _data_end(header) -> int:
    """Byte offset of the end of the voxel data a NIfTI header announces."""
    offset = int(header.get_data_offset())
    return offset + int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize


def check_nifti_size(header, name: str, *, max_voxels: int | None = None, file_size: int | None = None) -> None:
    """Refuse a NIfTI header whose shape (all dimensions) exceeds ``max_voxels``, or whose voxel data would
    run past the end of an uncompressed file of ``file_size`` bytes.

    Raises:
        DecodeLimitError: over ``max_voxels`` (default ``MEDMOE_MAX_VOXELS``, see :mod:`medmoe.limits`).
        CorruptFileError: the file is shorter than its header says.
    """
    shape = tuple(int(s) for s in header.get_data_shape())
    count = int(np.prod(shape, dtype=np.float64)) if shape else 0
    check_budget(name, " x ".join(str(s) for s in shape) + " voxels", count, MAX_VOXELS_ENV, max_voxels)
    if file_size is not None and _data_end(header) > file_size:
        raise CorruptFileError(
            f"{name}: truncated NIfTI file: its header announces {_data_end(header):,} bytes, the file has "
            f"{file_size:,}"
        )


def read_nifti(
    path: str | None, name: str, options: ReadOptions, *, data: bytes | None = None
) -> tuple[np.ndarray, ImageMeta]:
    """Read an axial slice (default the middle one) or an axial projection of a NIfTI volume.

    The slice is oriented for radiological display whatever the voxel order on disk: anterior at the top,
    the patient's right on the image's left. A 4-D series gives its first volume.

    Args:
        path: file path (or None when ``data`` is given).
        name: the name used in messages and metadata.
        options: ``axial_slice`` (slice index along the volume's inferior-superior axis) or ``projection``
            (``"mip"`` or ``"mean"`` along that axis; both checked by :meth:`ReadOptions.check`), ``window``
            ((center, width) in the volume's units, HU for CT; default a robust percentile range),
            ``max_pixels`` (limit on the values of the slice read, default ``MEDMOE_MAX_PIXELS``) and
            ``max_voxels`` (limit on the voxels of the whole image, default ``MEDMOE_MAX_VOXELS``); both
            limits are checked from the header before any voxel is read (see :mod:`medmoe.limits`).
            ``target_size`` is not used: slices are small and a volume is read whole anyway, so the slice
            comes back at full resolution.
        data: the file's bytes instead of a path (gzip allowed).

    Returns:
        ``(image, meta)``: float32 ``(H, W)`` in [0, 1] and :class:`ImageMeta`.

    Raises:
        CorruptFileError: unreadable file or NaN / infinite voxels in the requested slice.
        InvalidInputError: ``axial_slice`` out of range.
    """
    img = load_nifti(path, name, data, max_voxels=options.max_voxels)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2 or min(shape) == 0:
        raise CorruptFileError(f"{name}: NIfTI image has unusable shape {shape}")
    axes = _display_axes(img, name)
    if len(shape) == 2 and axes["axial"] != 2:
        axes = dict(_STORED_ORDER)
    plane_shape = shape[:2] if len(shape) == 2 else tuple(n for i, n in enumerate(shape[:3]) if i != axes["axial"])
    check_budget(name, f"a {plane_shape[0]} x {plane_shape[1]} slice", plane_shape[0] * plane_shape[1],
                 MAX_PIXELS_ENV, options.max_pixels)
    plane, chosen = _axial_plane(img, axes["axial"], options, name)
    require_finite(plane, f"{name}: NIfTI slice", "voxels")
    plane, zoom_axes = _to_display(plane, axes)
    image = apply_window(plane, *options.window) if options.window is not None else robust_rescale(plane)
    return np.ascontiguousarray(image, dtype=np.float32), ImageMeta(
        path=name,
        format="nifti",
        spacing=_spacing(img.header, zoom_axes),
        photometric="MONOCHROME2",
        original_shape=shape,
        frame=chosen,
        description=_description(img.header),
    )


def _axial_plane(img: nib.spatialimages.SpatialImage, axial: int, options: ReadOptions,
                 name: str) -> tuple[np.ndarray, int | None]:
    """The float32 plane to display (the image of a 2-D file, the chosen axial slice, or the projection) and
    the index of the slice read (None for a 2-D file or a projection); of a 4-D series, its first volume."""
    shape = img.shape
    try:
        if len(shape) == 2:
            return np.asarray(img.dataobj, dtype=np.float32), None
        extra = (0,) * (len(shape) - 3)  # first volume of a 4-D (or higher) series
        if options.projection is not None:
            volume = np.asarray(img.dataobj[(slice(None),) * 3 + extra], dtype=np.float32)
            require_finite(volume, f"{name}: NIfTI volume", "voxels")
            return (volume.max(axis=axial) if options.projection == "mip" else volume.mean(axis=axial)), None
        n_slices = int(shape[axial])
        chosen = n_slices // 2 if options.axial_slice is None else options.axial_slice
        if not 0 <= chosen < n_slices:
            raise InvalidInputError(f"{name}: axial_slice {chosen} out of range; the volume has {n_slices}")
        index: list[int | slice] = [slice(None)] * 3
        index[axial] = chosen
        return np.asarray(img.dataobj[tuple(index) + extra], dtype=np.float32), chosen
    except (CorruptFileError, InvalidInputError, DecodeLimitError):
        raise
    except Exception as err:
        raise CorruptFileError(f"{name}: cannot read NIfTI voxel data ({type(err).__name__}: {err})") from err


def _spacing(header, zoom_axes: tuple[int, int]) -> tuple[float, float] | None:
    """(row, column) voxel size in mm of the displayed plane, None when the header has none positive."""
    try:
        zooms = header.get_zooms()
        spacing = (float(zooms[zoom_axes[0]]), float(zooms[zoom_axes[1]]))
    except (IndexError, TypeError, ValueError):
        return None
    return spacing if min(spacing) > 0 else None


def _description(header) -> str | None:
    """The header's ``descrip`` text, or None when empty."""
    descrip = header.get("descrip") if hasattr(header, "get") else None
    if descrip is None:
        return None
    text = np.asarray(descrip).item()
    text = text.decode("latin-1") if isinstance(text, bytes) else str(text)
    return text.strip("\x00 ").strip() or None


def _display_axes(img: nib.spatialimages.SpatialImage, name: str) -> dict:
    """Which voxel axis is axial, and how the in-plane axes map onto patient x (R) and y (A)."""
    try:
        ornt = io_orientation(img.affine)[:3]
        ras_axis = {int(world): (voxel, int(flip)) for voxel, (world, flip) in enumerate(ornt)}
        if set(ras_axis) != {0, 1, 2}:
            raise ValueError("degenerate affine")
        return {"axial": ras_axis[2][0], "x": ras_axis[0], "y": ras_axis[1]}
    except Exception as err:  # degenerate or missing affine: fall back to the stored voxel order
        logger.debug("%s: cannot orient volume (%s); using stored voxel order", name, err)
        return dict(_STORED_ORDER)


def _to_display(plane: np.ndarray, axes: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """Rows run anterior -> posterior, columns patient right -> left (RAS+: +x is right, +y anterior)."""
    (x_axis, x_flip), (y_axis, y_flip) = axes["x"], axes["y"]
    # After removing the axial axis, the lower voxel axis is plane axis 0.
    if y_axis > x_axis:
        plane = plane.T
    if y_flip > 0:
        plane = plane[::-1, :]
    if x_flip > 0:
        plane = plane[:, ::-1]
    return plane, (y_axis, x_axis)
