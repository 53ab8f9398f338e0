"""Axial brain MRI slice renderer (T1- or T2-weighted) at the level of the lateral ventricles.

Anatomy: scalp, skull, CSF, a folded cortical ribbon over white matter, interhemispheric fissure, lateral
ventricles and deep grey nuclei. Findings are mid-scale: one hyper- or hypointense mass in the left or
right hemisphere, small or large, with surrounding oedema. Display convention:
the patient's right on the image left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medmoe.errors import InvalidInputError
from medmoe_samples.pairs.drawing import ellipse, grid, irregular_blob, smooth_noise, soft_step, to_uint8

SEQUENCES = ("t1", "t2")
SIGNALS = ("hyperintense", "hypointense")
FIELD_OF_VIEW_MM = 240.0
# Mass diameters of each size class; a gap between them keeps "small" and "large" unambiguous.
MASS_DIAMETER_MM = {"small": (14.0, 20.0), "large": (30.0, 42.0)}


def mass_size_word(diameter_mm: float) -> str:
    """``small`` or ``large`` for a mass diameter in mm."""
    return "small" if diameter_mm < 24.0 else "large"

# Tissue intensities per sequence, before bias field and noise.
_TISSUE = {
    "t1": {"fat": 0.9, "bone": 0.05, "csf": 0.1, "gm": 0.42, "wm": 0.62, "oedema": 0.36,
           "hyperintense": 0.97, "hypointense": 0.16},
    "t2": {"fat": 0.62, "bone": 0.05, "csf": 0.95, "gm": 0.58, "wm": 0.38, "oedema": 0.72,
           "hyperintense": 0.92, "hypointense": 0.1},
}


@dataclass(frozen=True)
class BrainFindings:
    """What a rendered brain MRI slice shows.

    Attributes:
        sequence: ``t1`` or ``t2``.
        mass: None for a normal brain, else ``(signal, side, diameter_mm)`` with signal in
            :data:`SIGNALS` and side ``left``/``right`` (patient's).
    """

    sequence: str = "t1"
    mass: tuple[str, str, float] | None = None

    def __post_init__(self) -> None:
        if self.sequence not in SEQUENCES:
            raise InvalidInputError(f"MRI sequence {self.sequence!r} is not one of {SEQUENCES}")
        if self.mass is not None:
            signal, side, diameter = self.mass
            if signal not in SIGNALS or side not in ("left", "right") or not 2.0 <= diameter <= 80.0:
                raise InvalidInputError(
                    f"mass {self.mass!r} must be (signal in {SIGNALS}, 'left'|'right', diameter 2..80 mm)"
                )


def render_brain_mri(findings: BrainFindings, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """Render an axial brain MRI slice that shows ``findings``.

    Args:
        findings: sequence and optional mass.
        rng: random generator; fixes anatomy, folding, bias field and noise.
        size: output side in pixels.

    Returns:
        (size, size) uint8 magnitude image.
    """
    y, x = grid(size)
    tissue = _TISSUE[findings.sequence]
    rx, ry = float(rng.uniform(0.66, 0.74)), float(rng.uniform(0.82, 0.9))
    cy = float(rng.uniform(-0.02, 0.04))

    brain_r = (ry - 0.12, rx - 0.12)
    rho = np.sqrt(((y - cy) / brain_r[0]) ** 2 + (x / brain_r[1]) ** 2)

    # Gyral folding: sulci are the zero lines of a smooth random field inside the cortical band, so they
    # wander like real sulci; gyral cores far from a zero line carry white matter out into the cortex.
    # The hemispheres fold nearly as mirror images (the shared part), with some individual variation.
    shared = smooth_noise(rng, size, size / 45.0)
    folding_field = np.where(x < 0, shared[:, ::-1], shared) + 0.2 * smooth_noise(rng, size, size / 45.0)
    brain = soft_step(rho - 1.0, 0.015)
    cortex_band = soft_step(0.72 - rho, 0.04)
    white = np.maximum(soft_step(rho - 0.76, 0.03), soft_step(0.9 - np.abs(folding_field), 0.3) * soft_step(rho - 0.9, 0.03))
    sulci = soft_step(np.abs(folding_field) - 0.12, 0.06) * cortex_band
    fissure = soft_step(np.abs(x) - 0.012, 0.006) * soft_step(0.25 - np.abs(y - cy) * 1.0 / brain_r[0] * 0.9, 0.05)

    ventricles = np.zeros_like(y)
    nuclei = np.zeros_like(y)
    for sign in (-1.0, 1.0):
        ventricles = np.maximum(ventricles, ellipse(y, x, cy - 0.05, sign * 0.1, 0.24, 0.065, angle=-sign * 0.25,
                                                    edge=0.01))
        nuclei = np.maximum(nuclei, ellipse(y, x, cy + 0.1, sign * 0.2, 0.12, 0.08, angle=sign * 0.3, edge=0.03))

    # Scalp, skull, the CSF inside it, then the brain.
    image = ellipse(y, x, cy, 0.0, ry, rx, edge=0.01) * tissue["fat"]
    image = image + ellipse(y, x, cy, 0.0, ry - 0.05, rx - 0.05, edge=0.008) * (tissue["bone"] - image)
    image = image + ellipse(y, x, cy, 0.0, ry - 0.1, rx - 0.1, edge=0.008) * (tissue["csf"] - image)
    parenchyma = tissue["gm"] + (tissue["wm"] - tissue["gm"]) * white * (1.0 - 0.8 * nuclei)
    parenchyma = parenchyma + (tissue["csf"] - parenchyma) * np.maximum.reduce([sulci, fissure, ventricles])
    image = image + brain * (parenchyma - image)

    if findings.mass is not None:
        signal, side, diameter = findings.mass
        sign = -1.0 if side == "right" else 1.0
        radius = diameter / FIELD_OF_VIEW_MM
        # In the hemisphere's white matter, lateral to the ventricles (|x| < 0.17) and clear of the cortex.
        my = cy + float(rng.uniform(-0.35, 0.3)) * brain_r[0]
        low = 0.19 + 0.5 * radius
        high = max(low, 0.7 * brain_r[1] * np.sqrt(max(0.0, 1.0 - ((my - cy) / brain_r[0]) ** 2 / 0.49)))
        mx = sign * float(rng.uniform(low, high))
        core = irregular_blob(y, x, my, mx, radius, rng, roughness=0.2, edge=0.01)
        oedema = irregular_blob(y, x, my, mx, radius * 1.6 + 0.03, rng, roughness=0.3, edge=0.04) * brain
        image = image + oedema * (1.0 - core) * 0.3 * (tissue["oedema"] - image)
        texture = 0.05 * smooth_noise(rng, size, 2.0)
        image = image + core * (tissue[signal] + texture - image)

    bias = 1.0 + 0.08 * smooth_noise(rng, size, size / 6.0)
    image = ndimage.gaussian_filter(image * bias, 0.6)
    sigma = 0.03
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return to_uint8(np.sqrt(real * real + imag * imag))
