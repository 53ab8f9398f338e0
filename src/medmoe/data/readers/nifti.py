"""NIfTI volume -> one axial image (a slice or a projection), in radiological display orientation."""

from __future__ import annotations

import gzip
import logging

import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation

from medmoe.data.readers.intensity import apply_window, robust_rescale
from medmoe.data.readers.meta import ImageMeta
from medmoe.errors import CorruptFileError, InvalidInputError

logger = logging.getLogger(__name__)

PROJECTIONS = ("mip", "mean")
# Axis roles assumed when the affine cannot be trusted: voxel axes taken as RAS+.
_STORED_ORDER = {"axial": 2, "x": (0, 1), "y": (1, 1)}


def load_nifti(path: str | None, name: str, data: bytes | None = None) -> nib.spatialimages.SpatialImage:
    """Open a NIfTI-1/2 image from a path or from the bytes of a (possibly gzipped) file."""
    try:
        if data is None:
            return nib.load(path)
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        for cls in (nib.Nifti1Image, nib.Nifti2Image):
            try:
                return cls.from_bytes(raw)
            except Exception:  # try the other NIfTI version
                continue
        raise ValueError("neither a NIfTI-1 nor a NIfTI-2 header")
    except Exception as err:
        raise CorruptFileError(f"{name}: not a readable NIfTI file ({type(err).__name__}: {err})") from err


def read_nifti(
    path: str | None,
    name: str,
    *,
    data: bytes | None = None,
    axial_slice: int | None = None,
    projection: str | None = None,
    window: tuple[float, float] | None = None,
    target_size: int | None = None,
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
    img = load_nifti(path, name, data)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2 or min(shape) == 0:
        raise CorruptFileError(f"{name}: NIfTI image has unusable shape {shape}")
    axes = _display_axes(img, name)
    if len(shape) == 2 and axes["axial"] != 2:
        axes = dict(_STORED_ORDER)
    try:
        if len(shape) == 2:
            plane = np.asarray(img.dataobj, dtype=np.float64)
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
                plane = np.asarray(img.dataobj[tuple(index) + extra], dtype=np.float64)
            else:
                chosen = None
                volume = np.asarray(img.dataobj[(slice(None),) * 3 + extra], dtype=np.float64)
                if not np.all(np.isfinite(volume)):
                    raise CorruptFileError(f"{name}: NIfTI volume contains NaN or infinite voxels")
                plane = volume.max(axis=axial) if projection == "mip" else volume.mean(axis=axial)
    except (CorruptFileError, InvalidInputError):
        raise
    except Exception as err:
        raise CorruptFileError(f"{name}: cannot read NIfTI voxel data ({type(err).__name__}: {err})") from err
    if not np.all(np.isfinite(plane)):
        raise CorruptFileError(f"{name}: NIfTI slice contains NaN or infinite voxels")

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
