"""Colour fundus photograph renderer.

A circular field of view of the posterior pole: orange-red retina with vignetting and choroidal texture,
the optic disc with its cup (nasal side: image right for a right eye), the darker macula with a foveal
reflex, and vessel arcades that leave the disc and curve around the macula. Findings are small lesions
scattered over the posterior pole (dark-red haemorrhages, bright yellow exudates) and the size of the
optic cup (cupping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medmoe.errors import InvalidInputError
from medmoe_samples.pairs.drawing import ellipse, grid, smooth_noise, soft_step, to_uint8

EYES = ("right", "left")
CUP_RATIO = {"normal": (0.25, 0.45), "cupping": (0.72, 0.85)}
FIELD_RADIUS = 0.92


@dataclass(frozen=True)
class FundusFindings:
    """What a rendered fundus photograph shows.

    Attributes:
        eye: ``right`` or ``left``.
        haemorrhages: number of retinal haemorrhages (0 for none).
        exudates: number of hard exudates (0 for none).
        cup_ratio: cup-to-disc ratio; cupping (glaucoma suspect) when above 0.6.
    """

    eye: str = "right"
    haemorrhages: int = 0
    exudates: int = 0
    cup_ratio: float = 0.35

    def __post_init__(self) -> None:
        if self.eye not in EYES:
            raise InvalidInputError(f"eye {self.eye!r} is not one of {EYES}")
        if self.haemorrhages < 0 or self.exudates < 0:
            raise InvalidInputError(f"lesion counts must be >= 0, got {self.haemorrhages}, {self.exudates}")
        if not 0.05 <= self.cup_ratio <= 0.95:
            raise InvalidInputError(f"cup-to-disc ratio {self.cup_ratio} is outside [0.05, 0.95]")


def _curve_points(points: list[np.ndarray], size: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    for curve in points:
        idx = np.round((curve + 1.0) / 2.0 * size - 0.5).astype(int)
        keep = ((idx >= 0) & (idx < size)).all(1)
        mask[idx[keep, 0], idx[keep, 1]] = True
    return mask


def _vessel_tree(disc: tuple[float, float], macula: tuple[float, float], rng: np.random.Generator):
    """Centrelines of major and minor vessels as lists of (N, 2) arrays of (y, x) points."""
    major, minor = [], []
    t = np.linspace(0.0, 1.0, 400)[:, None]
    dy, dx = disc[0] - macula[0], disc[1] - macula[1]
    start = np.arctan2(dy, dx)
    radius = np.hypot(dy, dx)
    for direction in (-1.0, 1.0):  # superior and inferior arcades
        sweep = start + direction * t * rng.uniform(1.6, 1.9)
        ry = radius * rng.uniform(0.75, 0.9)
        arc = np.concatenate([macula[0] + ry * np.sin(sweep), macula[1] + radius * np.cos(sweep)], 1)
        for offset in (0.0, 0.014):  # artery and vein run side by side
            major.append(arc + offset * np.array([direction, 0.0]))
        for branch_at in rng.uniform(0.2, 0.9, 3):
            root = arc[int(branch_at * (len(arc) - 1))]
            heading = np.arctan2(root[0] - macula[0], root[1] - macula[1]) + rng.normal(0, 0.4)
            length = rng.uniform(0.2, 0.45)
            bend = rng.normal(0, 0.6)
            angle = heading + bend * t
            minor.append(root + np.concatenate([np.sin(angle), np.cos(angle)], 1) * t * length)
    nasal = np.sign(dx)
    for heading in (-0.9, -0.3, 0.35, 0.95):
        angle = np.pi / 2 - nasal * np.pi / 2 + nasal * heading + rng.normal(0, 0.15) * t
        length = rng.uniform(0.3, 0.5)
        minor.append(np.array(disc) + np.concatenate([np.sin(angle), np.cos(angle)], 1) * t * length)
    return major, minor


def _spots(centres: np.ndarray, radii_px: np.ndarray, size: int, rng: np.random.Generator, roughness: float):
    """Soft round spots at ``centres`` ((N, 2) normalised y, x) with radii in pixels, in one distance transform."""
    if len(centres) == 0:
        return np.zeros((size, size), np.float32)
    idx = np.clip(np.round((centres + 1.0) / 2.0 * size - 0.5).astype(int), 0, size - 1)
    seeds = np.ones((size, size), bool)
    seeds[idx[:, 0], idx[:, 1]] = False
    owner = np.full((size, size), -1, np.int64)
    owner[idx[:, 0], idx[:, 1]] = np.arange(len(idx))
    distance, (rows, cols) = ndimage.distance_transform_edt(seeds, return_indices=True)
    radius = radii_px[owner[rows, cols]] * (1.0 + roughness * smooth_noise(rng, size, 1.5))
    return soft_step(distance - radius, 0.7)


def render_fundus(findings: FundusFindings, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """Render a colour fundus photograph that shows ``findings``.

    Args:
        findings: eye, lesion counts and cup-to-disc ratio.
        rng: random generator; fixes the vessel tree, lesion positions, pigmentation and noise.
        size: output side in pixels.

    Returns:
        (size, size, 3) uint8 RGB image, black outside the circular field.
    """
    y, x = grid(size)
    r = np.sqrt(x * x + y * y)
    field = soft_step(r - FIELD_RADIUS, 0.01)
    nasal = 1.0 if findings.eye == "right" else -1.0
    disc = (float(rng.uniform(-0.08, 0.04)), nasal * float(rng.uniform(0.34, 0.42)))
    macula = (disc[0] + float(rng.uniform(0.02, 0.08)), disc[1] - nasal * float(rng.uniform(0.5, 0.58)))
    disc_r = float(rng.uniform(0.085, 0.1))

    pigment = np.array(rng.uniform([0.78, 0.3, 0.12], [0.92, 0.42, 0.2]), dtype=np.float32)
    shade = (1.0 - 0.4 * r**2) * (1.0 + 0.05 * smooth_noise(rng, size, 3.0))
    shade = shade * (1.0 - 0.25 * ellipse(y, x, macula[0], macula[1], 0.16, 0.16, edge=0.12))  # darker macula
    rgb = pigment * shade[..., None]

    major, minor = _vessel_tree(disc, macula, rng)
    vessels = np.zeros((size, size), np.float32)
    for curves, width in ((major, 1.4), (minor, 0.8)):
        distance = ndimage.distance_transform_edt(~_curve_points(curves, size))
        vessels = np.maximum(vessels, soft_step(distance - width, 0.7) * (1.0 if width > 1 else 0.8))
    vessels = vessels * soft_step(ellipse(y, x, disc[0], disc[1], disc_r * 0.3, disc_r * 0.3) - 0.5, 0.5)
    rgb = rgb * (1.0 - vessels[..., None] * np.array([0.45, 0.75, 0.7], np.float32))

    disc_mask = ellipse(y, x, disc[0], disc[1], disc_r * 1.08, disc_r, edge=0.01)
    cup_r = disc_r * findings.cup_ratio
    cup = ellipse(y, x, disc[0], disc[1] - nasal * 0.1 * disc_r, cup_r * 1.05, cup_r, edge=0.006)
    disc_colour = np.array([0.97, 0.72, 0.45], np.float32)
    rgb = rgb + disc_mask[..., None] * (disc_colour * (1.0 - 0.3 * vessels[..., None]) - rgb)
    rgb = rgb + cup[..., None] * (np.array([1.0, 0.93, 0.8], np.float32) - rgb)
    rgb = rgb + 0.15 * ellipse(y, x, macula[0], macula[1], 0.012, 0.012, edge=0.006)[..., None]

    # Lesions sit on the posterior pole, away from the disc.
    def positions(count: int) -> np.ndarray:
        pts = []
        while len(pts) < count:
            cand = np.array(macula) + rng.normal(0, 0.28, 2)
            if np.hypot(*(cand - disc)) > disc_r * 2.2 and np.hypot(*cand) < FIELD_RADIUS - 0.08:
                pts.append(cand)
        return np.array(pts).reshape(-1, 2)

    blood = _spots(positions(findings.haemorrhages), rng.uniform(4.0, 6.5, findings.haemorrhages), size, rng, 0.2)
    rgb = rgb + blood[..., None] * (np.array([0.34, 0.04, 0.04], np.float32) - rgb)
    clusters = positions(max(1, findings.exudates // 6))
    centres = clusters[np.arange(findings.exudates) % len(clusters)] + rng.normal(0, 0.05, (findings.exudates, 2))
    fat = _spots(centres, rng.uniform(1.2, 2.4, findings.exudates), size, rng, 0.0) * field * (1.0 - disc_mask)
    rgb = rgb + fat[..., None] * (np.array([0.98, 0.9, 0.42], np.float32) - rgb)

    rgb = ndimage.gaussian_filter(rgb, (0.6, 0.6, 0)) * field[..., None]
    rgb = rgb + 0.01 * rng.standard_normal(rgb.shape, dtype=np.float32) * field[..., None]
    return to_uint8(rgb)
