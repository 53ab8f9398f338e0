"""H&E histopathology patch renderer (colorectal-mucosa-like tissue).

Tissue is painted as haematoxylin and eosin stain densities and turned into colour by Beer-Lambert
absorption, as a slide scanner records it. Nuclei are ellipses stamped all at once (no loop over
nuclei). Findings live in nuclear density, size and
arrangement: regular glands (normal), crowded sheets of large pleomorphic hyperchromatic nuclei
(tumour), or dense small round lymphocytes in the stroma (inflammation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medmoe.errors import InvalidInputError
from medmoe_samples.pairs.drawing import ellipse, grid, smooth_noise, soft_step, to_uint8

TISSUE_KINDS = ("normal", "tumour", "inflammation")
# Optical density of each stain in R, G, B (the usual H&E colour-deconvolution vectors).
_HAEMATOXYLIN = np.array([0.65, 0.70, 0.29], dtype=np.float32)
_EOSIN = np.array([0.07, 0.99, 0.11], dtype=np.float32)


@dataclass(frozen=True)
class PathologyFindings:
    """What a rendered H&E patch shows: ``tissue`` is one of :data:`TISSUE_KINDS`."""

    tissue: str = "normal"

    def __post_init__(self) -> None:
        if self.tissue not in TISSUE_KINDS:
            raise InvalidInputError(f"tissue {self.tissue!r} is not one of {TISSUE_KINDS}")


@dataclass
class _Nuclei:
    """Nuclei as arrays: centres (N, 2) in pixels, semi-axes (N, 2) in pixels, angles (N,), density (N,)."""

    centres: np.ndarray
    axes: np.ndarray
    angles: np.ndarray
    density: np.ndarray

    @staticmethod
    def concat(parts: list[_Nuclei]) -> _Nuclei:
        return _Nuclei(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("centres", "axes", "angles", "density")))


def _jittered(rng: np.random.Generator, size: int, spacing: float, jitter: float) -> np.ndarray:
    ticks = np.arange(spacing / 2, size, spacing)
    rows, cols = np.meshgrid(ticks, ticks, indexing="ij")
    points = np.stack([rows.ravel(), cols.ravel()], 1)
    return points + rng.uniform(-jitter, jitter, points.shape) * spacing


def _glands(rng: np.random.Generator, size: int, count: int, irregular: bool):
    centres = _jittered(rng, size, size / np.sqrt(count), 0.25)
    radii = rng.uniform(0.09, 0.13, len(centres)) * size * (rng.uniform(0.5, 0.9, len(centres)) if irregular else 1.0)
    parts, lumen, epithelium = [], np.zeros((size, size), np.float32), np.zeros((size, size), np.float32)
    y, x = grid(size)
    for (row, col), radius in zip(centres, radii):
        ratio = float(rng.uniform(0.7, 1.0))
        angle = float(rng.uniform(0, np.pi))
        cy, cx = row / size * 2 - 1, col / size * 2 - 1
        outer_r = radius / size * 2
        lumen = np.maximum(lumen, ellipse(y, x, cy, cx, outer_r * 0.55 * ratio, outer_r * 0.55, angle, edge=0.01))
        epithelium = np.maximum(epithelium, ellipse(y, x, cy, cx, outer_r * ratio, outer_r, angle, edge=0.01))
        # Nuclei sit in a ring along the basal side of the epithelium, long axis pointing to the lumen.
        n = int(2 * np.pi * radius / 5.0)
        phi = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 0.3)
        ring = 0.8 * radius
        local = np.stack([ring * ratio * np.sin(phi), ring * np.cos(phi)], 1)
        c, s = np.cos(angle), np.sin(angle)
        rotated = np.stack([local[:, 1] * s + local[:, 0] * c, local[:, 1] * c - local[:, 0] * s], 1)
        scale = 1.6 if irregular else 1.0
        axes = np.stack([rng.uniform(1.6, 2.2, n), rng.uniform(3.0, 3.8, n)], 1) * scale
        parts.append(_Nuclei(rotated + [row, col], axes, phi + angle, rng.uniform(0.9, 1.1, n)))
    return parts, lumen, epithelium * (1.0 - lumen)


def _paint_nuclei(nuclei: _Nuclei, size: int) -> np.ndarray:
    # Every nucleus stamps a small window around its centre; all windows are evaluated in one array.
    half = int(np.ceil(nuclei.axes.max())) + 1 if len(nuclei.centres) else 1
    span = np.arange(-half, half + 1)
    window = np.stack(np.meshgrid(span, span, indexing="ij"), -1).reshape(-1, 2)
    base = np.round(nuclei.centres).astype(np.int64)
    pixels = base[:, None, :] + window[None, :, :]
    offset = (pixels - nuclei.centres[:, None, :]).astype(np.float32)
    c, s = np.cos(nuclei.angles)[:, None], np.sin(nuclei.angles)[:, None]
    u = (offset[..., 0] * c + offset[..., 1] * s) / nuclei.axes[:, None, 0]
    v = (-offset[..., 0] * s + offset[..., 1] * c) / nuclei.axes[:, None, 1]
    cover = np.clip((1.0 - np.sqrt(u * u + v * v)) * 2.5 + 0.5, 0.0, 1.0) * nuclei.density[:, None]
    valid = (pixels >= 0).all(-1) & (pixels < size).all(-1) & (cover > 0)
    flat = pixels[valid, 0] * size + pixels[valid, 1]
    image = np.zeros(size * size, np.float32)
    np.maximum.at(image, flat, cover[valid].astype(np.float32))
    return image.reshape(size, size)


def render_pathology(findings: PathologyFindings, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """Render an H&E-stained tissue patch that shows ``findings``.

    Args:
        findings: tissue kind.
        rng: random generator; fixes architecture, nuclei and stain variation.
        size: output side in pixels (about 0.5 micrometre per pixel).

    Returns:
        (size, size, 3) uint8 RGB image.
    """
    tissue = findings.tissue
    fibres = 0.5 + 0.25 * smooth_noise(rng, size, (1.0, 5.0)) + 0.15 * smooth_noise(rng, size, 8.0)
    eosin = 0.45 * np.clip(fibres, 0.1, 1.2)
    haem = np.full((size, size), 0.05, np.float32)

    if tissue == "tumour":
        parts, lumen, epithelium = _glands(rng, size, int(rng.integers(2, 5)), irregular=True)
        centres = _jittered(rng, size, float(rng.uniform(8.5, 10.0)), 0.3)
        n = len(centres)
        axes = np.stack([rng.uniform(3.0, 5.5, n), rng.uniform(4.0, 7.0, n)], 1)
        parts.append(_Nuclei(centres, axes, rng.uniform(0, np.pi, n), rng.uniform(1.1, 1.5, n)))
        cytoplasm = soft_step(-0.6 - smooth_noise(rng, size, size / 12.0), 0.4)  # the tumour's cell sheets
        keep = cytoplasm[tuple(centres.clip(0, size - 1).astype(int).T)] > 0.5
        parts[-1] = _Nuclei(centres[keep], axes[keep], parts[-1].angles[keep], parts[-1].density[keep])
    else:
        parts, lumen, epithelium = _glands(rng, size, int(rng.integers(5, 9)), irregular=False)
        cytoplasm = epithelium
        stromal = _jittered(rng, size, 22.0, 0.45)
        m = len(stromal)
        parts.append(_Nuclei(stromal, np.stack([rng.uniform(1.2, 1.6, m), rng.uniform(3.5, 5.0, m)], 1),
                             rng.uniform(0, np.pi, m), rng.uniform(0.7, 0.9, m)))
        if tissue == "inflammation":
            lymphocytes = _jittered(rng, size, float(rng.uniform(6.5, 7.5)), 0.35)
            k = len(lymphocytes)
            r = rng.uniform(2.0, 2.6, k)
            parts.append(_Nuclei(lymphocytes, np.stack([r, r], 1), np.zeros(k), rng.uniform(1.3, 1.6, k)))

    if tissue == "inflammation":
        # Lymphocytes crowd the stroma, not the gland lumens and epithelium.
        stroma = 1.0 - np.maximum(lumen, ndimage.gaussian_filter(epithelium, 1.0))
        cover = np.maximum(_paint_nuclei(_Nuclei.concat(parts[:-1]), size), _paint_nuclei(parts[-1], size) * stroma)
    else:
        cover = _paint_nuclei(_Nuclei.concat(parts), size)
    chromatin = 1.0 + 0.2 * smooth_noise(rng, size, 0.8)
    haem = haem + cover * 1.1 * chromatin + 0.12 * cytoplasm
    eosin = eosin * (1.0 - 0.6 * cover) + 0.15 * cytoplasm
    haem = haem * (1.0 - lumen)
    eosin = eosin * (1.0 - 0.9 * lumen)

    stain_scale = rng.uniform(0.85, 1.15, 2).astype(np.float32)
    density = haem[..., None] * _HAEMATOXYLIN * stain_scale[0] + eosin[..., None] * _EOSIN * stain_scale[1]
    rgb = np.exp(-density * 1.6) * 0.97
    rgb = ndimage.gaussian_filter(rgb, (0.6, 0.6, 0)) + 0.012 * rng.standard_normal(rgb.shape, dtype=np.float32)
    return to_uint8(rgb)
