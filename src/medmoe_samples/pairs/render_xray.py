"""Frontal (PA) chest radiograph renderer.

The image is an attenuation map: bright = dense (bone, heart, fluid), dark = air (lungs, outside the body).
Radiological convention: the patient's right is on the image left. Findings live at the coarse scale of
the X-ray: the width of the cardiac silhouette, fluid filling a lung base, opacity over a lung zone, and a
few small focal features (nodule, plate-like atelectasis).

Both the modality benchmark and the IU chest X-ray pairs draw with :func:`render_chest_xray`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")
LESION_KINDS = ("opacity", "nodule", "granuloma", "atelectasis")
OPACITY_PATTERNS = ("patchy", "streaky", "interstitial", "round", "confluent")
NORMAL_HEART_RATIO = (0.38, 0.47)


def side_sign(side: str) -> float:
    """-1 for the patient's right (image left), +1 for the patient's left (image right)."""
    if side not in SIDES:
        raise InvalidInputError(f"side {side!r} is not one of {SIDES}")
    return -1.0 if side == "right" else 1.0


@dataclass(frozen=True)
class LungLesion:
    """One focal or regional lung finding.

    Attributes:
        kind: ``opacity``, ``nodule``, ``granuloma`` (small calcified nodule) or ``atelectasis``.
        side: ``left`` or ``right`` (patient's side).
        zone: ``upper``, ``middle``, ``lower``, or None for the whole lung (diffuse).
        severity: 0..1; extent and density for opacity, size for a nodule, length for atelectasis.
        pattern: opacity texture, one of :data:`OPACITY_PATTERNS`.
    """

    kind: str
    side: str
    zone: str | None = None
    severity: float = 0.5
    pattern: str = "patchy"

    def __post_init__(self) -> None:
        if self.kind not in LESION_KINDS:
            raise InvalidInputError(f"lesion kind {self.kind!r} is not one of {LESION_KINDS}")
        side_sign(self.side)
        if self.zone is not None and self.zone not in ZONES:
            raise InvalidInputError(f"zone {self.zone!r} is not one of {ZONES} or None")
        if self.pattern not in OPACITY_PATTERNS:
            raise InvalidInputError(f"opacity pattern {self.pattern!r} is not one of {OPACITY_PATTERNS}")


@dataclass(frozen=True)
class ChestFindings:
    """What a rendered chest radiograph shows.

    Attributes:
        heart_ratio: cardiothoracic ratio (heart width / thorax width); None draws a normal one
            from :data:`NORMAL_HEART_RATIO`. Cardiomegaly is above 0.5.
        effusions: ``(side, height)`` pairs; height is the fluid column as a fraction of lung height.
        lesions: lung findings.
        inflation: diaphragm shift in normalised units; > 0 low flat diaphragm (hyperinflation),
            < 0 high diaphragm (low lung volumes).
    """

    heart_ratio: float | None = None
    effusions: tuple[tuple[str, float], ...] = ()
    lesions: tuple[LungLesion, ...] = field(default_factory=tuple)
    inflation: float = 0.0


@dataclass(frozen=True)
class _Thorax:
    """Patient-specific anatomy drawn once per image."""

    half_width: float
    apex: float
    dome: dict[str, float]
    mediastinum: float
    heart_ratio: float


def _lung_mask(y: np.ndarray, x: np.ndarray, t: _Thorax, side: str) -> np.ndarray:
    sign = side_sign(side)
    inner, outer = t.mediastinum, t.half_width
    cx, rx = sign * (inner + outer) / 2.0, (outer - inner) / 2.0
    dome = t.dome[side]
    u = (x - cx) / rx
    # Upper half: rounded apex; lower half: full width down to a dome that drops to the costophrenic angle.
    v = np.minimum((y - dome + 0.15) / (dome - 0.15 - t.apex), 0.0)
    shape = np.abs(u) ** 2.4 + np.abs(v) ** 2.0 - 1.0
    bottom = dome + 0.2 * np.clip(sign * u + 0.1, -0.2, 1.0) ** 2
    return np.minimum(soft_step(shape * rx, 0.012), soft_step(y - bottom, 0.012))


def _zone_weight(y: np.ndarray, t: _Thorax, side: str, zone: str | None) -> np.ndarray:
    if zone is None:
        return np.ones_like(y)
    top, bottom = t.apex, t.dome[side] + 0.1
    third = (bottom - top) / 3.0
    start = top + ZONES.index(zone) * third
    return np.minimum(soft_step(start - y, 0.05), soft_step(y - (start + third), 0.05))


def _ribs(y: np.ndarray, x: np.ndarray, t: _Thorax) -> np.ndarray:
    ax = np.abs(x)
    inside = soft_step(ax - t.half_width * 1.04, 0.02) * soft_step(0.06 - ax, 0.02)
    spacing = (t.dome["right"] + 0.1 - t.apex) / 8.5
    lateral = np.clip(ax / t.half_width, 0.0, 1.0)
    # Ten evenly spaced ribs per family: one periodic band pattern instead of a loop over ribs.
    posterior = (y - t.apex - 0.03 + 0.11 * np.sin(np.pi * lateral) - 0.12 * lateral**3) / spacing
    anterior = (y - t.apex - 0.13 - 0.22 * (1.0 - lateral) ** 1.5) / spacing
    ribs = np.zeros_like(y)
    for phase, half_width, weight in ((posterior, 0.022, 1.0), (anterior, 0.016, 0.45)):
        offset = np.abs(phase - np.round(phase)) * spacing
        band = soft_step(offset - half_width, 0.008) * ((phase > -0.5) & (phase < 9.5))
        ribs = np.maximum(ribs, weight * band)
    return ribs * inside * (lateral > 0.0)


def _opacity(
    y: np.ndarray, x: np.ndarray, lung: np.ndarray, t: _Thorax, lesion: LungLesion, rng: np.random.Generator
) -> np.ndarray:
    size = y.shape[0]
    region = lung * _zone_weight(y, t, lesion.side, lesion.zone)
    density = 0.14 + 0.16 * lesion.severity
    if lesion.pattern == "interstitial":
        texture = soft_step(0.35 - np.abs(smooth_noise(rng, size, 1.8)), 0.25)
        return region * density * 0.75 * texture
    if lesion.pattern == "round":
        row, col = pick_pixel(region > 0.9, max(2, size // 25), rng, fallback=region > 0.5)
        cy, cx = y[row, col], x[row, col]
        blob = irregular_blob(y, x, cy, cx, 0.06 + 0.06 * lesion.severity, rng, roughness=0.15)
        return lung * density * 1.2 * blob
    if lesion.pattern == "streaky":
        cover = soft_step(0.5 - smooth_noise(rng, size, (1.0, 5.0)), 0.3)
    elif lesion.pattern == "confluent":
        cover = 0.7 + 0.3 * soft_step(-smooth_noise(rng, size, 6.0), 0.8)
    else:
        cover = soft_step(0.2 - smooth_noise(rng, size, size / 40.0), 0.5)
    # A faint haze under the patches keeps a small zone from showing almost nothing when the random
    # patches happen to fall outside it.
    return region * density * (0.3 + 0.7 * cover)


def _nodule(y: np.ndarray, x: np.ndarray, lung: np.ndarray, t: _Thorax, lesion: LungLesion, rng) -> np.ndarray:
    size = y.shape[0]
    region = lung * _zone_weight(y, t, lesion.side, lesion.zone)
    calcified = lesion.kind == "granuloma"
    radius_px = (1.4 + 1.2 * lesion.severity) if calcified else (2.5 + 3.5 * lesion.severity)
    row, col = pick_pixel(region > 0.95, int(np.ceil(radius_px)) + 3, rng, fallback=region > 0.5)
    radius = radius_px * 2.0 / size
    density = 0.5 if calcified else 0.3
    return density * ellipse(y, x, y[row, col], x[row, col], radius, radius, edge=2.0 / size)


def _atelectasis(y: np.ndarray, x: np.ndarray, lung: np.ndarray, t: _Thorax, lesion: LungLesion, rng):
    top, bottom = t.apex, t.dome[lesion.side] + 0.1
    third = (bottom - top) / 3.0
    level = top + (ZONES.index(lesion.zone or "lower") + rng.uniform(0.35, 0.75)) * third
    centre = side_sign(lesion.side) * (t.mediastinum + t.half_width) / 2.0
    tilt = rng.uniform(-0.25, 0.25)
    line = y - level - tilt * (x - centre)
    length = 0.16 + 0.14 * lesion.severity
    band = soft_step(np.abs(line) - 2.2 / y.shape[0], 1.5 / y.shape[0]) * soft_step(np.abs(x - centre) - length, 0.03)
    return 0.28 * band * lung


def _sample_thorax(findings: ChestFindings, rng: np.random.Generator) -> _Thorax:
    ratio = findings.heart_ratio
    if ratio is None:
        ratio = float(rng.uniform(*NORMAL_HEART_RATIO))
    if not 0.2 < ratio < 0.9:
        raise InvalidInputError(f"cardiothoracic ratio {ratio} is outside (0.2, 0.9)")
    right_dome = float(rng.uniform(0.36, 0.46)) + findings.inflation
    dome = {"right": right_dome, "left": right_dome + float(rng.uniform(0.02, 0.06))}
    for lesion in findings.lesions:
        if lesion.kind == "atelectasis" and lesion.zone in (None, "lower"):
            dome[lesion.side] -= 0.035  # volume loss pulls the hemidiaphragm up
    return _Thorax(
        half_width=float(rng.uniform(0.72, 0.82)),
        apex=float(rng.uniform(-0.74, -0.64)),
        dome=dome,
        mediastinum=float(rng.uniform(0.09, 0.12)),
        heart_ratio=ratio,
    )


def render_chest_xray(findings: ChestFindings, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """Render a PA chest radiograph that shows ``findings``.

    Args:
        findings: what the image must show.
        rng: random generator; fixes the patient's anatomy, texture and noise.
        size: output side in pixels.

    Returns:
        (size, size) uint8 image, bright = dense.

    Example:
        >>> img = render_chest_xray(ChestFindings(heart_ratio=0.62), np.random.default_rng(0), 128)
        >>> img.shape, img.dtype
        ((128, 128), dtype('uint8'))
    """
    y, x = grid(size)
    t = _sample_thorax(findings, rng)

    shoulder = 0.3 + 0.64 * soft_step(-0.62 - y, 0.2)
    body = soft_step(np.abs(x) - shoulder, 0.03)
    image = body * (0.42 + 0.16 * np.sqrt(np.clip(1.0 - (x / shoulder) ** 2, 0.0, 1.0)))

    lungs = {side: _lung_mask(y, x, t, side) for side in SIDES}
    lung = np.maximum(lungs["right"], lungs["left"])
    hilum = sum(
        ellipse(y, x, -0.05 + 0.1 * (t.dome[s] - 0.4), side_sign(s) * 0.22, 0.22, 0.14, edge=0.2) for s in SIDES
    )
    markings = np.abs(smooth_noise(rng, size, 1.6)) * (0.02 + 0.06 * hilum)
    image = image - lung * (0.36 - markings - 0.04 * smooth_noise(rng, size, size / 16.0))

    for side, height in findings.effusions:
        lateral = np.clip((side_sign(side) * x - t.mediastinum) / (t.half_width - t.mediastinum), 0.0, 1.0)
        # The meniscus: fluid climbs higher along the lateral chest wall than medially.
        level = t.dome[side] + 0.17 - height * (t.dome[side] + 0.17 - t.apex) * (0.7 + 0.5 * lateral)
        fluid = soft_step(level - y, 0.03) * lungs[side]
        image = image + fluid * 0.34 * (0.85 + 0.15 * soft_step(level + 0.08 - y, 0.08))

    for lesion in findings.lesions:
        draw = {"opacity": _opacity, "nodule": _nodule, "granuloma": _nodule, "atelectasis": _atelectasis}[lesion.kind]
        image = image + draw(y, x, lungs[lesion.side], t, lesion, rng)

    # Abdomen below the diaphragm, heart and mediastinum go on last with max(): their borders are the
    # silhouettes a reader measures, and an adjacent opacity or effusion effaces them as in real films.
    dome_y = np.where(x < 0, t.dome["right"], t.dome["left"]) + 0.17 * np.clip(np.abs(x) / t.half_width, 0, 1) ** 2
    abdomen = soft_step(dome_y + 0.03 - y, 0.015) * body * soft_step(np.abs(x) - t.half_width * 1.02, 0.03)
    image = np.maximum(image, 0.6 * abdomen)
    gastric = ellipse(y, x, t.dome["left"] + 0.12, 0.32, 0.05, 0.09, edge=0.02)
    image = image - 0.25 * gastric * abdomen

    heart_rx = t.heart_ratio * t.half_width
    heart_cx = 0.3 * heart_rx + 0.02
    heart_ry = float(np.clip(0.9 * heart_rx, 0.22, 0.36))
    heart = ellipse(y, x, t.dome["left"] - heart_ry * 0.62, heart_cx, heart_ry, heart_rx, angle=-0.25, edge=0.015)
    heart = heart * soft_step(y - dome_y - 0.02, 0.01)
    mediastinum = soft_step(np.abs(x - 0.02) - t.mediastinum, 0.012) * soft_step(-0.95 - y, 0.05)
    knob = ellipse(y, x, -0.32, 0.12, 0.06, 0.06, edge=0.015)
    shading = 0.56 + 0.08 * soft_step(x - heart_cx, 0.3 * heart_rx)
    image = np.maximum(image, shading * np.maximum.reduce([heart, mediastinum, knob]))

    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * (y - t.apex) / 0.105)
    spine = soft_step(np.abs(x - 0.01) - 0.065, 0.01) * (0.06 + 0.05 * vertebrae) * body
    clavicle_y = t.apex + 0.04 - 0.2 * (np.abs(x) - 0.12)
    clavicles = soft_step(np.abs(y - clavicle_y) - 0.028, 0.01) * ((np.abs(x) > 0.1) & (np.abs(x) < 0.68))
    image = image + spine + 0.08 * _ribs(y, x, t) * body + 0.12 * clavicles * body

    image = ndimage.gaussian_filter(image, 0.7)
    image = image + 0.012 * rng.standard_normal(image.shape, dtype=np.float32)
    image = image * float(rng.uniform(0.92, 1.08)) + float(rng.uniform(-0.03, 0.03))
    return to_uint8(np.clip(image, 0.0, 1.0) ** 0.9)
