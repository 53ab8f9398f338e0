"""Small image helpers of the page: reader output to RGB, heat-map overlays, resizing for display."""

from __future__ import annotations

import numpy as np
from PIL import Image

GREY = 96


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) floats in [0, 1] (a reader's output), or uint8, -> (H, W, 3) uint8."""
    x = np.asarray(image)
    if x.dtype != np.uint8:
        x = (np.clip(np.nan_to_num(x.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    elif x.ndim == 3 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif x.ndim == 3 and x.shape[0] == 3 and x.shape[-1] != 3:
        x = np.moveaxis(x, 0, -1)
    return np.ascontiguousarray(x[..., :3])


def resize(rgb: np.ndarray, width: int, height: int, *, smooth: bool = True) -> np.ndarray:
    """Resize an (H, W, 3) uint8 picture (bilinear, or nearest neighbour for label colours)."""
    mode = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(rgb).resize((int(width), int(height)), mode))


def fit(rgb: np.ndarray, longest: int, *, smooth: bool = True) -> np.ndarray:
    """Scale an (H, W, 3) picture so that its longer side is ``longest`` pixels (aspect kept)."""
    h, w = rgb.shape[:2]
    scale = longest / max(h, w)
    return resize(rgb, max(1, round(w * scale)), max(1, round(h * scale)), smooth=smooth)


def heat_overlay(rgb: np.ndarray, heat: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """Blend a heat map (jet colours, scaled to its own maximum) over an (H, W, 3) uint8 picture of its size."""
    from matplotlib import colormaps

    h = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    h = h - h.min()
    h = h / max(float(h.max()), 1e-12)
    colours = colormaps["jet"](h)[..., :3] * 255.0
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def placeholder(side: int = 128) -> np.ndarray:
    """A plain grey square (a thumbnail whose image could not be read)."""
    return np.full((side, side, 3), GREY, dtype=np.uint8)
