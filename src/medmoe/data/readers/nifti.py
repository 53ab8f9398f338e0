"""NIfTI volume -> one axial image (a slice or a projection), in radiological display orientation."""

from __future__ import annotations

import gzip
import io
import logging
import os

import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation

from medmoe.data.readers.intensity import apply_window, robust_rescale
from medmoe.data.readers.meta import ImageMeta
from medmoe.data.readers.safety import require_finite
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.limits import MAX_PIXELS_ENV, MAX_VOXELS_ENV, DecodeLimitError, check_budget

logger = logging.getLogger(__name__)

PROJECTIONS = ("mip", "mean")
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
            image, size = _from_bytes(raw), len(raw)
    except (CorruptFileError, InvalidInputError):
        raise
    except Exception as err:
        raise CorruptFileError(f"{name}: not a readable NIfTI file ({type(err).__name__}: {err})") from err
    check_nifti_size(image.header, name, max_voxels=max_voxels, file_size=size)
    return image


def _from_bytes(raw: bytes) -> nib.spatialimages.SpatialImage:
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            return cls.from_bytes(raw)
        except Exception:  # try the other NIfTI version
            continue
    raise ValueError("neither a NIfTI-1 nor a NIfTI-2 header")


def _header_of(head: bytes) -> nib.Nifti1Header:
    for cls in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            return cls.from_fileobj(io.BytesIO(head), check=False)
        except Exception:  # try the other NIfTI version
            continue
    raise ValueError("neither a NIfTI-1 nor a NIfTI-2 header")


def _inflate_nifti(data: bytes, name: str, max_voxels: int | None) -> bytes:
    """Gunzip a NIfTI file held in memory, reading its header first and then only the bytes it announces."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        head = stream.read(544)  # a NIfTI-2 header is 540 bytes, NIfTI-1 348 (+ 4 extension flag bytes)
        header = _header_of(head)
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
    path: str | None,
    name: str,
    *,
    data: bytes | None = None,
    axial_slice: int | None = None,
    projection: str | None = None,
    window: tuple[float, float] | None = None,
    target_size: int | None = None,
    max_pixels: int | None = None,
    max_voxels: int | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Read an axial slice (default the middle one) or an axial projection of a NIfTI volume.

    The slice is oriented for radiological display whatever the voxel order on disk: anterior at the top,
    the patient's right on the image's left. A 4-D series gives its first volume.

    Args:
        path: file path (or None when ``data`` is given).
        name: the name used in messages and metadata.
        data: the file's bytes instead of a path (gzip allowed).
        axial_slice: slice index along the volume's inferior-superior axis.
        projection: ``"mip"`` (maximum) or ``"mean"`` along that axis instead of a slice.
        window: (center, width) in the volume's units (HU for CT); default a robust percentile range.
        target_size: accepted for symmetry with the other readers and ignored: slices are small and a
            volume is read whole anyway, so the slice comes back at full resolution.
        max_pixels: limit on the values of the slice read (default ``MEDMOE_MAX_PIXELS``).
        max_voxels: limit on the voxels of the whole image (default ``MEDMOE_MAX_VOXELS``); both are
            checked from the header before any voxel is read (see :mod:`medmoe.limits`).

    Returns:
        ``(image, meta)``: float32 ``(H, W)`` in [0, 1] and :class:`ImageMeta`.

    Raises:
        CorruptFileError: unreadable file or NaN / infinite voxels in the requested slice.
        InvalidInputError: bad ``axial_slice`` / ``projection`` or both given.
    """
    if projection is not None and projection not in PROJECTIONS:
        raise InvalidInputError(f"{name}: projection must be one of {PROJECTIONS}, got {projection!r}")
    if projection is not None and axial_slice is not None:
        raise InvalidInputError(f"{name}: give either axial_slice or projection, not both")
    img = load_nifti(path, name, data, max_voxels=max_voxels)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2 or min(shape) == 0:
        raise CorruptFileError(f"{name}: NIfTI image has unusable shape {shape}")
    axes = _display_axes(img, name)
    if len(shape) == 2 and axes["axial"] != 2:
        axes = dict(_STORED_ORDER)
    plane_shape = shape[:2] if len(shape) == 2 else tuple(n for i, n in enumerate(shape[:3]) if i != axes["axial"])
    check_budget(name, f"a {plane_shape[0]} x {plane_shape[1]} slice", plane_shape[0] * plane_shape[1],
                 MAX_PIXELS_ENV, max_pixels)
    try:
        if len(shape) == 2:
            plane = np.asarray(img.dataobj, dtype=np.float32)
            chosen = None
        else:
            extra = (0,) * (len(shape) - 3)  # first volume of a 4-D (or higher) series
            axial = axes["axial"]
            n_slices = shape[axial]
            if projection is None:
                chosen = n_slices // 2 if axial_slice is None else axial_slice
                if not 0 <= chosen < n_slices:
                    raise InvalidInputError(f"{name}: axial_slice {chosen} out of range; the volume has {n_slices}")
                index: list[int | slice] = [slice(None)] * 3
                index[axial] = chosen
                plane = np.asarray(img.dataobj[tuple(index) + extra], dtype=np.float32)
            else:
                chosen = None
                volume = np.asarray(img.dataobj[(slice(None),) * 3 + extra], dtype=np.float32)
                require_finite(volume, f"{name}: NIfTI volume", "voxels")
                plane = volume.max(axis=axial) if projection == "mip" else volume.mean(axis=axial)
    except (CorruptFileError, InvalidInputError, DecodeLimitError):
        raise
    except Exception as err:
        raise CorruptFileError(f"{name}: cannot read NIfTI voxel data ({type(err).__name__}: {err})") from err
    require_finite(plane, f"{name}: NIfTI slice", "voxels")

    plane, zoom_axes = _to_display(plane, axes)
    image = apply_window(plane, *window) if window is not None else robust_rescale(plane)
    zooms = img.header.get_zooms()
    spacing = None
    try:
        spacing = (float(zooms[zoom_axes[0]]), float(zooms[zoom_axes[1]]))
        spacing = spacing if min(spacing) > 0 else None
    except (IndexError, TypeError, ValueError):
        spacing = None
    descrip = img.header.get("descrip") if hasattr(img.header, "get") else None
    description = None
    if descrip is not None:
        description = np.asarray(descrip).item()
        description = (description.decode("latin-1") if isinstance(description, bytes) else str(description))
        description = description.strip("\x00 ").strip() or None
    meta = ImageMeta(
        path=name,
        format="nifti",
        spacing=spacing,
        photometric="MONOCHROME2",
        original_shape=shape,
        frame=chosen,
        description=description,
    )
    return np.ascontiguousarray(image, dtype=np.float32), meta


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
    in_plane = sorted((x_axis, y_axis))
    if plane.ndim != 2:
        return plane, (0, 1)
    # After removing the axial axis, the lower voxel axis is plane axis 0.
    if in_plane.index(y_axis) != 0:
        plane = plane.T
    if y_flip > 0:
        plane = plane[::-1, :]
    if x_flip > 0:
        plane = plane[:, ::-1]
    return plane, (y_axis, x_axis)
