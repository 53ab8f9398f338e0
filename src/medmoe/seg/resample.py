"""Resampling a multi-channel volume from one voxel grid onto another (nearest or linear, zeros outside).

Edges: each source voxel covers half a voxel beyond its centre. ``padding="border"`` reads the edge voxel
there (clamped coordinates), so a constant map stays constant up to the source's outer faces;
``padding="zeros"`` (the default) blends linear interpolation with zeros past the last centre, so a
constant 1 reads 0.67 on a destination voxel a third of a source voxel beyond it. Points farther out
than the faces read 0 in both modes.

CT grids almost always differ only by axis order, flips, spacing and origin. Then the mapping is separable
and each axis is resampled by 1-D index gathers: no (X, Y, Z, 3) sampling grid, so a 512 x 512 x 600 CT costs
the memory of its output only. Oblique grids fall back to MONAI's ``SpatialResample``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from medmoe.errors import InvalidInputError

_EPS = 1e-6


def _axis_map(matrix: np.ndarray) -> list[int] | None:
    """For each destination axis the one source axis it moves along; None if the mapping is oblique."""
    linear = matrix[:3, :3]
    scale = np.abs(linear).max()
    perm = []
    for j in range(3):
        column = np.abs(linear[:, j]) > _EPS * max(scale, 1.0)
        if column.sum() != 1:
            return None
        perm.append(int(np.argmax(column)))
    return perm if sorted(perm) == [0, 1, 2] else None


PADDINGS = ("zeros", "border")
# tolerance (in source voxels) of the half-voxel footprint test, against rounding of grid origins
_FOOTPRINT_EPS = 1e-3


def _along(arr: np.ndarray, axis: int, coords: np.ndarray, mode: str, padding: str = "zeros") -> np.ndarray:
    size = arr.shape[axis]
    shape = [1] * arr.ndim
    shape[axis] = coords.size
    if padding == "border" and mode == "linear":
        half = 0.5 + _FOOTPRINT_EPS
        inside = ((coords >= -half) & (coords <= size - 1 + half)).reshape(shape)
        clamped = np.clip(coords, 0.0, size - 1)
        lo = np.minimum(np.floor(clamped).astype(np.int64), max(size - 2, 0))
        w = (clamped - lo).astype(np.float32).reshape(shape)
        hi = np.minimum(lo + 1, size - 1)
        out = (1.0 - w) * np.take(arr, lo, axis=axis) + w * np.take(arr, hi, axis=axis)
        return np.where(inside, out, np.float32(0.0)).astype(np.float32, copy=False)
    if mode == "nearest":
        idx = np.rint(coords).astype(np.int64)  # ties to even, as torch grid_sample does
        inside = ((idx >= 0) & (idx < size)).reshape(shape)
        out = np.take(arr, np.clip(idx, 0, size - 1), axis=axis)
        return np.where(inside, out, np.zeros((), dtype=arr.dtype))
    lo = np.floor(coords).astype(np.int64)
    w = (coords - lo).astype(np.float32).reshape(shape)
    out = np.zeros((*arr.shape[:axis], coords.size, *arr.shape[axis + 1:]), dtype=np.float32)
    for idx, weight in ((lo, 1.0 - w), (lo + 1, w)):
        inside = ((idx >= 0) & (idx < size)).reshape(shape)
        out += np.where(inside, weight, 0.0) * np.take(arr, np.clip(idx, 0, size - 1), axis=axis)
    return out


def resample_to_grid(channels: np.ndarray | torch.Tensor, src_affine: np.ndarray | torch.Tensor,
                     dst_affine: np.ndarray | torch.Tensor, dst_shape: Sequence[int], mode: str = "nearest",
                     padding: str = "zeros") -> np.ndarray:
    """Resample channels from the ``src_affine`` grid onto ``dst_affine`` / ``dst_shape``.

    Voxel centres sit at integer indices (NIfTI convention); points outside the source read 0.

    Args:
        channels: (C, X, Y, Z) source values.
        src_affine, dst_affine: (4, 4) voxel -> world.
        dst_shape: (X', Y', Z') of the destination.
        mode: ``"nearest"`` (keeps the dtype) or ``"linear"`` (float32).
        padding: ``"zeros"`` or ``"border"``: what linear interpolation reads between the last source
            voxel centre and the source's outer face (half a voxel): zeros, or the edge voxel (clamped
            coordinates; use it to bring a map computed on a grid that covers the destination back, e.g.
            probabilities to the native CT grid). Nearest is the same in both.

    Returns:
        (C, X', Y', Z') numpy array.
    """
    if mode not in ("nearest", "linear"):
        raise InvalidInputError(f"resampling mode {mode!r}: expected 'nearest' or 'linear'")
    if padding not in PADDINGS:
        raise InvalidInputError(f"resampling padding {padding!r}: expected one of {PADDINGS}")
    arr = channels.detach().cpu().numpy() if isinstance(channels, torch.Tensor) else np.asarray(channels)
    if arr.ndim != 4:
        raise InvalidInputError(f"channels of shape {arr.shape}: expected (C, X, Y, Z)")
    src = np.asarray(src_affine, dtype=np.float64)
    dst = np.asarray(dst_affine, dtype=np.float64)
    matrix = np.linalg.inv(src) @ dst  # destination index -> source index
    perm = _axis_map(matrix)
    if perm is None:
        return _monai_resample(arr, src, dst, dst_shape, mode, padding)
    if mode == "linear":
        arr = arr.astype(np.float32, copy=False)
    # gather the axis that shrinks most first, so intermediates stay small
    order = sorted(range(3), key=lambda j: dst_shape[j] / max(arr.shape[1 + perm[j]], 1))
    for j in order:
        i = perm[j]
        coords = matrix[i, j] * np.arange(dst_shape[j], dtype=np.float64) + matrix[i, 3]
        arr = _along(arr, 1 + i, coords, mode, padding)
    return np.ascontiguousarray(arr.transpose(0, *[1 + perm[j] for j in range(3)]))


def _monai_resample(arr: np.ndarray, src: np.ndarray, dst: np.ndarray, dst_shape: Sequence[int], mode: str,
                    padding: str = "zeros") -> np.ndarray:
    border = padding == "border" and mode == "linear"
    resample = SpatialResample(mode="nearest" if mode == "nearest" else "bilinear",
                               padding_mode="border" if border else "zeros")
    size = tuple(int(s) for s in dst_shape)

    def one(channel: np.ndarray, how: SpatialResample) -> np.ndarray:
        img = MetaTensor(torch.from_numpy(np.ascontiguousarray(channel, dtype=np.float32))[None],
                         affine=torch.as_tensor(src))
        res = how(img, dst_affine=torch.as_tensor(dst), spatial_size=size)
        return np.asarray(res[0].as_tensor() if isinstance(res, MetaTensor) else res[0])

    # border: clamped reads inside the source's footprint (nearest of ones, zeros outside), 0 beyond
    footprint = (one(np.ones(arr.shape[1:], np.float32), SpatialResample(mode="nearest", padding_mode="zeros")) > 0.5
                 if border else None)
    # one channel at a time bounds the (X, Y, Z, 3) sampling grid to one volume
    values = (one(channel, resample) for channel in arr)
    out = [np.where(footprint, v, 0.0) if footprint is not None else v for v in values]
    return np.stack(out).astype(arr.dtype if mode == "nearest" else np.float32)
