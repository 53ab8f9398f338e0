"""Axial CT slice renderer (chest at the heart level, or upper abdomen through the liver).

The slice is built in Hounsfield units and then windowed (lung window for the chest, soft-tissue window
for the abdomen), as a CT reader would view it. Display convention: anterior at the top, the patient's
right on the image left. Findings are small and focal: lung nodules a few pixels wide and hypodense
liver lesions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medmoe.errors import InvalidInputError
from medmoe_samples.pairs.drawing import (
    ellipse,
    grid,
    irregular_blob,
    pick_pixel,
    smooth_noise,
    soft_step,
    to_uint8,
)

REGIONS = ("chest", "abdomen")
FIELD_OF_VIEW_MM = 360.0
WINDOWS = {"chest": (-550.0, 1400.0), "abdomen": (40.0, 400.0)}


@dataclass(frozen=True)
class CTFindings:
    """What a rendered CT slice shows.

    Attributes:
        region: ``chest`` or ``abdomen``.
        nodules: ``(side, diameter_mm)`` lung nodules (chest only); side is the patient's.
        liver_lesions: diameters in mm of hypodense liver lesions (abdomen only).
    """

    region: str = "chest"
    nodules: tuple[tuple[str, float], ...] = ()
    liver_lesions: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise InvalidInputError(f"CT region {self.region!r} is not one of {REGIONS}")
        if self.nodules and self.region != "chest":
            raise InvalidInputError("lung nodules need region='chest'")
        if self.liver_lesions and self.region != "abdomen":
            raise InvalidInputError("liver lesions need region='abdomen'")
        for side, _ in self.nodules:
            if side not in ("left", "right"):
                raise InvalidInputError(f"nodule side {side!r} is not 'left' or 'right'")


def _focal(hu: np.ndarray, y, x, mask: np.ndarray, diameter: float, margin_px: int, rng: np.random.Generator,
           roughness: float, edge_px: float, value: float) -> np.ndarray:
    """``hu`` with a lobulated lesion of ``diameter`` mm and ``value`` HU placed in ``mask`` (a margin of
    ``margin_px`` pixels beyond its radius from the mask's border where there is room)."""
    size = y.shape[0]
    radius_px = diameter / (FIELD_OF_VIEW_MM / size) / 2.0
    row, col = pick_pixel(mask, int(np.ceil(radius_px)) + margin_px, rng)
    lesion = irregular_blob(y, x, float(y[row, col]), float(x[row, col]), radius_px * 2.0 / size, rng,
                            roughness=roughness, edge=edge_px / size)
    return hu + lesion * (value - hu)


def _body(y: np.ndarray, x: np.ndarray, rng: np.random.Generator, ry: float) -> tuple[np.ndarray, np.ndarray]:
    rx = float(rng.uniform(0.8, 0.9))
    fat = float(rng.uniform(0.04, 0.09))
    body = ellipse(y, x, 0.05, 0.0, ry, rx, edge=0.01)
    inner = ellipse(y, x, 0.05, 0.0, ry - fat, rx - fat * 1.3, edge=0.015)
    hu = -1000.0 * (1.0 - body) + body * (-100.0 + 150.0 * inner)
    table = soft_step(np.abs(y - 0.05 - ry - 0.06) - 0.012, 0.005) * (np.abs(x) < 0.85)
    return hu + 1250.0 * table, inner


def _bones(y: np.ndarray, x: np.ndarray, ry: float, rng: np.random.Generator) -> np.ndarray:
    vertebra = ellipse(y, x, 0.05 + ry - 0.32, 0.0, 0.1, 0.11, edge=0.01)
    canal = ellipse(y, x, 0.05 + ry - 0.17, 0.0, 0.045, 0.05, edge=0.01)
    lamina = ellipse(y, x, 0.05 + ry - 0.12, 0.0, 0.035, 0.13, edge=0.01)
    hu = 500.0 * vertebra + 600.0 * lamina * (1.0 - canal)
    angles = np.linspace(0.35, np.pi - 0.35, 6)
    for angle in np.concatenate([angles, -angles]):
        a = float(angle) + float(rng.normal(0, 0.04))
        cy, cx = 0.05 + 0.88 * ry * np.sin(a), 0.8 * np.cos(a)
        if cy < 0.05 - 0.75 * ry:  # the anterior midline holds the sternum, not ribs
            continue
        hu += 650.0 * ellipse(y, x, float(cy), float(cx), 0.025, 0.04, angle=a, edge=0.008)
    sternum = ellipse(y, x, 0.05 - ry + 0.1, 0.0, 0.03, 0.07, edge=0.008)
    return hu + 450.0 * sternum


def _chest(y, x, findings: CTFindings, rng: np.random.Generator, size: int) -> np.ndarray:
    ry = float(rng.uniform(0.52, 0.62))
    hu, inner = _body(y, x, rng, ry)
    heart = ellipse(y, x, -0.1, 0.12, 0.19, 0.26, angle=0.45, edge=0.01)
    aorta = ellipse(y, x, 0.05 + ry - 0.42, 0.1, 0.055, 0.055, edge=0.008)
    lungs = {}
    for side, sign in (("right", -1.0), ("left", 1.0)):
        lung = ellipse(y, x, 0.02, sign * 0.38, ry * 0.78, 0.3, angle=sign * 0.12, edge=0.01)
        notch = ellipse(y, x, -0.12, sign * 0.05, 0.22, 0.2, edge=0.015)  # mediastinum indents the lung
        lungs[side] = lung * (1.0 - notch) * (1.0 - np.maximum(heart, aorta)) * inner
    lung = np.maximum(lungs["right"], lungs["left"])
    hu = hu * (1.0 - lung) + lung * (-880.0 + 25.0 * smooth_noise(rng, size, 3.0))
    hu = hu + (40.0 - hu) * np.maximum(heart, aorta) * inner

    # Vessels seen end-on: dots around one pixel wide, denser near the hila.
    spots = (rng.random((size, size)) < 0.012).astype(np.float32)
    hilar = np.exp(-((np.abs(x) - 0.25) ** 2 + (y + 0.02) ** 2) / 0.08)
    vessels = ndimage.gaussian_filter(spots * (0.3 + hilar), 0.7) * 2.2
    hu = hu + lung * np.clip(vessels, 0.0, 1.0) * 700.0

    for side, diameter in findings.nodules:
        hu = _focal(hu, y, x, lungs[side] > 0.99, diameter, 7, rng, roughness=0.12, edge_px=1.2, value=30.0)
    return hu + _bones(y, x, ry, rng)


def _abdomen(y, x, findings: CTFindings, rng: np.random.Generator, size: int) -> np.ndarray:
    ry = float(rng.uniform(0.58, 0.68))
    hu, inner = _body(y, x, rng, ry)
    liver = irregular_blob(y, x, -0.05, -0.33, float(rng.uniform(0.38, 0.45)), rng, roughness=0.08, edge=0.01)
    liver = liver * inner * soft_step(x - 0.12, 0.02)
    spleen = ellipse(y, x, 0.22, 0.55, 0.2, 0.12, angle=-0.6, edge=0.01) * inner
    stomach = ellipse(y, x, -0.2, 0.32, 0.2, 0.2, edge=0.01) * inner * (1.0 - liver)
    gas = stomach * soft_step(y + 0.27, 0.01)
    kidney = ellipse(y, x, 0.05 + ry - 0.38, 0.3, 0.1, 0.08, angle=0.4, edge=0.01) * inner
    aorta = ellipse(y, x, 0.05 + ry - 0.45, 0.06, 0.05, 0.05, edge=0.008)
    ivc = ellipse(y, x, 0.05 + ry - 0.5, -0.12, 0.05, 0.07, edge=0.008)
    parenchyma = 8.0 * smooth_noise(rng, size, 1.5)
    hu = hu + liver * (105.0 + parenchyma - hu)
    hu = hu + 60.0 * (np.clip(smooth_noise(rng, size, (1.5, 4.0)) - 1.6, 0.0, 1.0) * liver)  # portal veins
    hu = hu + spleen * (115.0 + parenchyma - hu)
    hu = hu + stomach * (15.0 - hu) + gas * (-1000.0 - 15.0)
    hu = hu + kidney * (160.0 - hu) + aorta * (180.0 - hu) + ivc * (130.0 - hu)

    for diameter in findings.liver_lesions:
        # The lateral liver only: medially the liver meets the vessels and the spine.
        hu = _focal(hu, y, x, (liver > 0.99) & (x < -0.1), diameter, 3, rng, roughness=0.1, edge_px=1.5,
                    value=25.0)
    return hu + _bones(y, x, ry, rng)


def render_ct_slice(findings: CTFindings, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """Render a windowed axial CT slice that shows ``findings``.

    Args:
        findings: what the slice must show.
        rng: random generator; fixes anatomy, texture and noise.
        size: output side in pixels (the field of view is :data:`FIELD_OF_VIEW_MM`).

    Returns:
        (size, size) uint8 image after the region's window (:data:`WINDOWS`).
    """
    y, x = grid(size)
    draw = _chest if findings.region == "chest" else _abdomen
    hu = draw(y, x, findings, rng, size)
    hu = ndimage.gaussian_filter(hu, 0.5) + 12.0 * rng.standard_normal(hu.shape, dtype=np.float32)
    level, width = WINDOWS[findings.region]
    return to_uint8(hu, level - width / 2.0, level + width / 2.0)
