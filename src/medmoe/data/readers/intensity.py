"""Mapping raw intensities onto [0, 1]."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medmoe.errors import InvalidInputError


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window: ``center - width/2`` -> 0, ``center + width/2`` -> 1, clipped.

    Raises:
        InvalidInputError: ``width`` is not positive.
    """
    if not width > 0:
        raise InvalidInputError(f"window width must be > 0, got {width}")
    return to_unit_range(values, center - width / 2.0, width)


def to_unit_range(values: np.ndarray, low: float, span: float, *, copy: bool = True) -> np.ndarray:
    """``(values - low) / span`` clipped to [0, 1] in float32, computed in place in one float32 copy of
    ``values`` (or in ``values`` itself when it is float32 and ``copy`` is False)."""
    out = np.asarray(values).astype(np.float32, copy=copy)
    out -= np.float32(low)
    out /= np.float32(span)
    return np.clip(out, 0.0, 1.0, out=out)


def robust_rescale(
    values: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5, *, sample: np.ndarray | None = None
) -> np.ndarray:
    """Map the ``low_pct``..``high_pct`` percentile range onto [0, 1] (clipped).

    Percentiles rather than min/max so that a few saturated pixels (burned-in text, metal) do not flatten
    the contrast of the rest. A constant image maps to zeros. The caller checks for non-finite values.
    The result is float32 (one copy of ``values``); the percentiles are computed in float64.

    Args:
        values: the image to rescale.
        low_pct, high_pct: the percentiles mapped onto 0 and 1.
        sample: values to take the percentiles from instead of ``values`` (see :func:`range_sample`).
    """
    source = np.asarray(values if sample is None else sample).reshape(-1)
    # Percentiles of a subsample: exact enough for a display range and much faster on large images.
    subsample = source[:: max(1, source.size // 1_000_000)].astype(np.float64)
    subsample = subsample[np.isfinite(subsample)]
    low, high = np.percentile(subsample, [low_pct, high_pct]) if subsample.size else (0.0, 0.0)
    if subsample.size and high <= low:
        finite = source[np.isfinite(source)] if source.dtype.kind == "f" else source
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if high <= low:  # constant, or nothing finite
        return np.zeros(np.shape(values), dtype=np.float32)
    return to_unit_range(values, low, high - low)


def reduction_factor(height: int, width: int, target_size: int | None) -> int:
    """The largest integer ``k`` that keeps the longer side of an ``height x width`` image, divided by ``k``,
    at least ``target_size``; 1 when ``target_size`` is None or not smaller than the longer side."""
    if target_size is None:
        return 1
    return max(1, max(height, width) // target_size)


def box_reduce(values: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks of an ``(H, W)`` or ``(H, W, C)`` array (any real dtype).

    Blocks on the bottom and right edges average the pixels they hold, as Pillow's ``Image.reduce`` does,
    so nothing is cropped. A box filter before the final antialiased resize keeps the result close to
    resizing the full image while touching each full-resolution pixel once, in its stored dtype.

    Returns:
        ``values`` itself when ``factor`` is 1, else float32 ``(ceil(H / factor), ceil(W / factor)[, C])``.
    """
    if factor <= 1:
        return values
    # Pillow's float ("F") reduce is C code: several times faster than a NumPy reshape-mean and exact
    # for integers up to 2**24, which covers every 8- to 16-bit medical image.
    planes = values[..., None] if values.ndim == 2 else values
    reduced = [
        np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c], dtype=np.float32)).reduce(factor))
        for c in range(planes.shape[-1])
    ]
    return reduced[0] if values.ndim == 2 else np.stack(reduced, axis=-1)


def range_sample(full: np.ndarray, factor: int, max_pixels: int = 2**18) -> np.ndarray | None:
    """A strided subsample of a full-resolution image, for the percentile range of its reduced copy.

    Averaging ``factor x factor`` blocks also averages away pixel noise, which narrows the percentile
    range and so stretches the contrast of a reduced image more than that of the full one. Percentiles of
    a subsample of the full image (at most ``max_pixels``, plenty for 0.5% tails) keep the two alike.

    Returns:
        None when ``factor`` is 1 (the image is its own sample), else a view of about ``max_pixels`` pixels.
    """
    if factor <= 1:
        return None
    stride = max(1, round(float(np.sqrt(full.shape[0] * full.shape[1] / max_pixels))))
    return full[::stride, ::stride]
