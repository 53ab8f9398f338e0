"""B-mode ultrasound renderer: a sector (fan) image with speckle.

A curvilinear probe at the top centre insonates layered soft tissue (skin, subcutaneous fat, fascia,
muscle, parenchyma). Findings are shaped echo regions with the acoustic behaviour that identifies them:
an anechoic round cyst with a bright back wall and posterior enhancement, a hypoechoic irregular solid
mass with mild posterior shadowing, or a bright calcification with a dense acoustic shadow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medmoe.errors import InvalidInputError
from medmoe_samples.pairs.drawing import ellipse, grid, irregular_blob, smooth_noise, soft_step, to_uint8

LESION_KINDS = ("cyst", "solid_mass", "calcification")
MM_PER_UNIT = 40.0  # the image is 2 normalised units (80 mm) deep
LESION_DIAMETER_MM = {"small": (6.0, 8.0), "large": (11.0, 15.0), "calcification": (2.0, 3.0)}
APEX_Y = -1.08


def lesion_size_word(diameter_mm: float) -> str:
    """``small`` or ``large`` for a cyst or solid mass diameter in mm."""
    return "small" if diameter_mm < 9.0 else "large"


@dataclass(frozen=True)
class UltrasoundFindings:
    """What a rendered ultrasound image shows.

    Attributes:
        lesion: None (normal), or ``(kind, diameter_mm)`` with kind in :data:`LESION_KINDS`.
    """

    lesion: tuple[str, float] | None = None

    def __post_init__(self) -> None:
        if self.lesion is not None and (self.lesion[0] not in LESION_KINDS or not 1.0 <= self.lesion[1] <= 30.0):
            raise InvalidInputError(f"lesion {self.lesion!r} must be (kind in {LESION_KINDS}, diameter 1..30 mm)")


def render_ultrasound(findings: UltrasoundFindings, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """Render a sector B-mode ultrasound image that shows ``findings``.

    Args:
        findings: optional lesion.
        rng: random generator; fixes tissue layers, speckle, lesion shape and position.
        size: output side in pixels.

    Returns:
        (size, size) uint8 image, black outside the fan.
    """
    y, x = grid(size)
    # Polar coordinates of each pixel about the probe apex.
    depth = np.sqrt((y - APEX_Y) ** 2 + x**2)
    angle = np.arctan2(x, y - APEX_Y)
    half_angle = float(rng.uniform(0.5, 0.62))
    max_depth = float(rng.uniform(1.85, 1.98))
    fan = soft_step(np.abs(angle) - half_angle, 0.006) * soft_step(depth - max_depth, 0.01) * (depth > 0.12)

    wave = 0.025 * smooth_noise(rng, size, (size / 6.0, size / 3.0))
    skin_end = 0.2 + wave
    fat_end = float(rng.uniform(0.38, 0.48)) + 1.5 * wave
    muscle_end = fat_end + float(rng.uniform(0.25, 0.35)) + wave
    echo = np.where(depth < skin_end, 0.5 + 0.5 * soft_step(np.abs(depth - 0.16) - 0.015, 0.01), 0.0)
    fat = (depth >= skin_end) & (depth < fat_end)
    septa = soft_step(np.abs(smooth_noise(rng, size, (1.0, 6.0))) - 0.15, 0.1)
    echo = echo + fat * (0.18 + 0.5 * septa)
    fascia = soft_step(np.abs(depth - fat_end) - 0.012, 0.006)
    muscle = (depth >= fat_end) & (depth < muscle_end)
    striation = 0.5 + 0.5 * np.sin((depth - fat_end) * 60.0 + 2.0 * smooth_noise(rng, size, size / 10.0))
    echo = echo + muscle * (0.32 + 0.3 * striation)
    echo = echo + (depth >= muscle_end) * (0.55 + 0.06 * smooth_noise(rng, size, 4.0))
    echo = np.maximum(echo, 1.3 * fascia + 1.1 * soft_step(np.abs(depth - muscle_end) - 0.012, 0.006))

    # Shadows and enhancement act along the beam: every pixel deeper than the lesion on its scan line.
    beam_gain = np.ones_like(echo)
    if findings.lesion is not None:
        kind, diameter = findings.lesion
        radius = diameter / MM_PER_UNIT / 2.0
        lesion_depth = float(rng.uniform(muscle_end.mean() + radius + 0.05, max_depth - radius - 0.42))
        lesion_angle = float(rng.uniform(-0.55, 0.55)) * (half_angle - radius / lesion_depth)
        cy = APEX_Y + lesion_depth * np.cos(lesion_angle)
        cx = lesion_depth * np.sin(lesion_angle)
        on_beam = soft_step(np.abs(angle - lesion_angle) - radius / lesion_depth * 0.85, 0.01)
        behind = on_beam * soft_step(lesion_depth - depth, 0.03)
        if kind == "cyst":
            body = ellipse(y, x, float(cy), float(cx), radius * float(rng.uniform(0.8, 1.0)), radius, edge=0.006)
            wall = ellipse(y, x, float(cy) + 0.012, float(cx), radius * 0.95 + 0.012, radius + 0.012, edge=0.006)
            echo = echo + (wall - body).clip(0, 1) * 0.5 * (y > cy) - body * (echo - 0.02)
            beam_gain = beam_gain + 0.6 * behind
        elif kind == "solid_mass":
            body = irregular_blob(y, x, float(cy), float(cx), radius, rng, roughness=0.35, lobes=9, edge=0.01)
            inner = 0.13 + 0.05 * smooth_noise(rng, size, 2.0)
            echo = echo + body * (inner - echo)
            beam_gain = beam_gain - 0.35 * behind
        else:
            body = irregular_blob(y, x, float(cy), float(cx), radius, rng, roughness=0.2, edge=0.006)
            echo = echo + body * (2.2 - echo)
            beam_gain = beam_gain - 0.85 * behind * (1.0 - body)

    field = rng.standard_normal((2, size, size), dtype=np.float32)
    field = ndimage.gaussian_filter(field, (0, 0.9, 2.2))
    speckle = np.sqrt(field[0] ** 2 + field[1] ** 2)
    speckle /= float(speckle.mean())
    attenuation = np.exp(-0.45 * depth) * (1.0 + 0.35 * depth)  # tissue loss, partly undone by the TGC
    amplitude = echo * beam_gain * speckle * attenuation * fan
    image = np.log1p(4.0 * amplitude) / np.log1p(4.0 * 2.2)
    return to_uint8(image)
