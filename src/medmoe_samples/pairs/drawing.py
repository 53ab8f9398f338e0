"""Vectorised drawing primitives shared by the sample-image renderers.

Every renderer works on float32 arrays in normalised coordinates so that the anatomy scales with the
image size: ``x`` runs from -1 (left edge of the image) to +1 (right edge) and ``y`` from -1 (top) to +1
(bottom). Nothing here loops over pixels.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from medmoe.errors import InvalidInputError


@functools.lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates of a square image.

    Args:
        size: image side in pixels.

    Returns:
        ``(y, x)``, each (size, size) float32 in (-1, 1); read-only (cached between calls).
    """
    if size < 16:
        raise InvalidInputError(f"image size {size} is too small; expected at least 16 pixels")
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    y.setflags(write=False)
    x.setflags(write=False)
    return y, x


def soft_step(distance: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased inside indicator: 1 where ``distance < 0``, 0 where ``distance > 0``.

    Args:
        distance: signed distance-like field (negative inside), any shape.
        width: transition half-width in the same units as ``distance``.

    Returns:
        float32 array of the same shape in [0, 1].
    """
    return np.clip(0.5 - distance * (0.5 / width), 0.0, 1.0).astype(np.float32, copy=False)


def ellipse(
    y: np.ndarray,
    x: np.ndarray,
    cy: float,
    cx: float,
    ry: float,
    rx: float,
    angle: float = 0.0,
    edge: float = 0.01,
) -> np.ndarray:
    """Soft filled ellipse.

    Args:
        y, x: coordinate grids from :func:`grid`, (H, W).
        cy, cx: centre; ry, rx: semi-axes (normalised units); angle: rotation in radians.
        edge: width of the soft edge in normalised units.

    Returns:
        (H, W) float32 coverage in [0, 1].
    """
    c, s = float(np.cos(angle)), float(np.sin(angle))
    dy, dx = y - cy, x - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    return soft_step((np.sqrt(u * u + v * v) - 1.0) * min(rx, ry), edge)


def irregular_blob(
    y: np.ndarray,
    x: np.ndarray,
    cy: float,
    cx: float,
    radius: float,
    rng: np.random.Generator,
    roughness: float = 0.25,
    lobes: int = 6,
    edge: float = 0.01,
) -> np.ndarray:
    """Soft blob whose radius is modulated by a random low-order Fourier series (lobulated margin).

    Args:
        y, x: coordinate grids, (H, W).
        cy, cx: centre; radius: mean radius (normalised units).
        rng: random generator that fixes the shape.
        roughness: relative amplitude of the margin modulation (0 gives a disc).
        lobes: highest angular frequency of the modulation.
        edge: soft edge width.

    Returns:
        (H, W) float32 coverage in [0, 1].
    """
    theta = np.arctan2(y - cy, x - cx)
    dist = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    modulation = np.zeros_like(theta)
    for k in range(2, lobes + 1):
        amp = rng.normal(0.0, roughness / k**0.7)
        modulation += amp * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return soft_step(dist - radius * np.clip(1.0 + modulation, 0.4, 1.8), edge)


def pick_pixel(mask: np.ndarray, margin_px: int, rng: np.random.Generator,
               fallback: np.ndarray | None = None) -> tuple[int, int]:
    """A random pixel of ``mask`` at least ``margin_px`` pixels inside it, where ``mask`` leaves room for one;
    else a random pixel of ``fallback`` (default ``mask``).

    Raises:
        InvalidInputError: there is no pixel to pick.
    """
    core = ndimage.binary_erosion(mask, iterations=margin_px)
    rows, cols = np.nonzero(core if core.any() else mask if fallback is None else fallback)
    if len(rows) == 0:
        raise InvalidInputError("no room to place a lesion in the rendered organ")
    pick = rng.integers(len(rows))
    return int(rows[pick]), int(cols[pick])


def smooth_noise(rng: np.random.Generator, size: int, sigma: float | tuple[float, float]) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit standard deviation.

    Args:
        rng: random generator.
        size: image side in pixels.
        sigma: smoothing in pixels (scalar or (sigma_y, sigma_x) for anisotropic texture).

    Returns:
        (size, size) float32.
    """
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (2,))
    # Low-frequency noise is drawn on a coarse grid and upsampled: a wide Gaussian kernel on the full grid
    # costs far more and gives the same texture.
    factor = max(1, int(sigmas.min() // 3))
    coarse = -(-size // factor)
    field = ndimage.gaussian_filter(
        rng.standard_normal((coarse, coarse), dtype=np.float32), tuple(sigmas / factor), mode="wrap"
    )
    if factor > 1:
        field = ndimage.zoom(field, factor, order=1, grid_mode=True, mode="grid-wrap")[:size, :size]
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


def to_uint8(image: np.ndarray, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Clip ``image`` to [low, high] and quantise to 8 bits."""
    scaled = (np.asarray(image, dtype=np.float32) - low) / (high - low)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(image: np.ndarray, path: Path) -> None:
    """Write an 8-bit grey (H, W) or RGB (H, W, 3) array as PNG.

    PIL writes no time stamp into PNGs, so the same array always gives the same bytes.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise InvalidInputError(f"cannot save {path}: expected uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    Image.fromarray(image).save(path, format="PNG", compress_level=6)
