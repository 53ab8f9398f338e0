"""Mapping raw intensities onto [0, 1]."""

from __future__ import annotations

import numpy as np

from medmoe.errors import InvalidInputError


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window: ``center - width/2`` -> 0, ``center + width/2`` -> 1, clipped.

    Raises:
        InvalidInputError: ``width`` is not positive.
    """
    if not width > 0:
        raise InvalidInputError(f"window width must be > 0, got {width}")
    low = center - width / 2.0
    return np.clip((values.astype(np.float64) - low) / width, 0.0, 1.0)


def robust_rescale(values: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Map the ``low_pct``..``high_pct`` percentile range onto [0, 1] (clipped).

    Percentiles rather than min/max so that a few saturated pixels (burned-in text, metal) do not flatten
    the contrast of the rest. A constant image maps to zeros. The caller checks for non-finite values.
    """
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values)
    # Percentiles of a subsample: exact enough for a display range and much faster on large images.
    step = max(1, finite.size // 1_000_000)
    low, high = np.percentile(finite[::step], [low_pct, high_pct])
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)
