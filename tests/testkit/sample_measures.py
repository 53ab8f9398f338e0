"""Simple image measurements that tell whether a generated image shows what its labels say.

Each measures what a reader would look at (heart width, basal density, a bright blob inside a lung, a dark
hole inside the liver, left-right asymmetry of a brain slice, dark area inside an ultrasound fan, nuclear
density, yellow and dark-red spots on a fundus) with plain thresholds: no knowledge of the renderers.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage


def heart_width_ratio(image: np.ndarray) -> float:
    """Cardiothoracic ratio: widest bright run through the centre over the span of the dark lungs, per row."""
    img = ndimage.uniform_filter(image.astype(np.float32), 3)
    h, w = img.shape
    centre = w // 2 + w // 20  # the heart sits a little to the patient's left
    best = 0.0
    for row in range(int(0.45 * h), int(0.66 * h)):
        line = img[row]
        lung = np.flatnonzero((line < 115) & (line > 20))
        bright = line > 140
        if len(lung) < 2 or not bright[centre]:
            continue
        left = centre - int(np.argmin(bright[centre::-1]))
        right = centre + int(np.argmin(bright[centre:]))
        thorax = lung[-1] - lung[0]
        if thorax > 0 and (right - left) < 0.9 * thorax:
            best = max(best, (right - left) / thorax)
    return best


def band_mean(image: np.ndarray, rows: tuple[float, float], cols: tuple[float, float], side: str) -> float:
    """Mean over a band of one lung. ``cols`` are fractions of the width for the patient's right lung
    (image left); the left lung's band is their mirror image."""
    h, w = image.shape
    c0, c1 = (cols if side == "right" else (1.0 - cols[1], 1.0 - cols[0]))
    return float(image[int(rows[0] * h) : int(rows[1] * h), int(c0 * w) : int(c1 * w)].astype(np.float32).mean())


UPPER_BAND = ((0.17, 0.36), (0.12, 0.42))
LOWER_BAND = ((0.68, 0.77), (0.12, 0.28))


def is_chest_slice(image: np.ndarray) -> bool:
    """A lung-window chest slice has a large dark lung area inside a bright body outline."""
    body = ndimage.binary_fill_holes(image > 150)
    return bool(((image < 110) & body).sum() > 0.1 * image.size)


def lung_blobs(image: np.ndarray) -> list[tuple[int, float]]:
    """Small dense blobs surrounded by dark lung on a lung-window CT: (area, centroid column)."""
    labels, n = ndimage.label(image > 150)
    out = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        blob = labels[region] == index
        area = int(blob.sum())
        if area > 200 or image[region][blob].max() < 200:  # vessels seen end-on stay fainter
            continue
        mask = labels == index
        ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
        if (image[ring] < 150).mean() > 0.8:  # enclosed by lung, not a bump on the chest wall or heart
            out.append((area, float(ndimage.center_of_mass(mask)[1])))
    return out


def liver_holes(image: np.ndarray) -> list[tuple[int, float, float]]:
    """Dark holes inside bright parenchyma on a soft-tissue CT: (area, centroid row, centroid column)."""
    organ = ndimage.gaussian_filter(image.astype(np.float32), 1.0) > 150
    holes = ndimage.binary_fill_holes(organ) & ~organ
    labels, n = ndimage.label(holes)
    sizes = ndimage.sum(holes, labels, range(1, n + 1))
    centres = ndimage.center_of_mass(holes, labels, range(1, n + 1))
    return [(int(a), float(c[0]), float(c[1])) for a, c in zip(sizes, centres) if a >= 8]


def brain_asymmetry(image: np.ndarray, threshold: float = 0.17) -> dict[tuple[str, str], int]:
    """Area where one hemisphere is brighter / darker than the mirrored other: {(signal, patient side): px}.

    A reader compares a hemisphere with the other; ``("hyperintense", "left")`` counts pixels of the
    patient's left half (image right) brighter than their mirror image by more than ``threshold``.
    """
    img = ndimage.gaussian_filter(image.astype(np.float32) / 255.0, 2.0)
    h, w = img.shape
    rows, cols = np.mgrid[0:h, 0:w]
    # Deep parenchyma only: the folded cortex differs between hemispheres in every brain.
    deep = ((rows - 0.5 * h) / (0.28 * h)) ** 2 + ((cols - 0.5 * w) / (0.23 * w)) ** 2 < 1.0
    diff = np.where(deep, img - img[:, ::-1], 0.0)
    halves = {"right": diff[:, : w // 2], "left": diff[:, w // 2 :]}
    return {(signal, side): int(np.count_nonzero(sign * half > threshold))
            for signal, sign in (("hyperintense", 1.0), ("hypointense", -1.0)) for side, half in halves.items()}


def _fan(image: np.ndarray) -> np.ndarray:
    """Interior of the ultrasound fan (dark lesions inside it included)."""
    outline = ndimage.gaussian_filter(image.astype(np.float32), 4.0) > 30
    return ndimage.binary_erosion(ndimage.binary_fill_holes(outline), iterations=8)


def ultrasound_dark_areas(image: np.ndarray) -> tuple[int, int]:
    """(anechoic area, hypoechoic area) inside the fan, below the superficial layers, from a smoothed image."""
    img = ndimage.gaussian_filter(image.astype(np.float32), 2.0)
    fan = _fan(image)
    fan[: int(0.3 * image.shape[0])] = False  # skin and fat near the probe are dark by nature
    anechoic = ndimage.binary_opening(fan & (img < 30), iterations=1)
    hypo = fan & (ndimage.gaussian_filter(image.astype(np.float32), 3.0) < 75)
    hypo = ndimage.binary_opening(hypo & ~ndimage.binary_dilation(anechoic, iterations=3), iterations=2)
    return int(anechoic.sum()), int(hypo.sum())


def ultrasound_shadow(image: np.ndarray) -> float:
    """Darkest deep scan line of the fan over the median one (an acoustic shadow is a dark ray).

    Scan lines fan out from the probe at the top centre; each is averaged over the deepest part of the
    image, where every lesion of these images lies above.
    """
    h, w = image.shape
    soft = ndimage.gaussian_filter(image.astype(np.float32), 1.0)
    fan = _fan(image)
    apex = np.array([-0.04 * h, w / 2.0])
    angles = np.linspace(-0.8, 0.8, 321)
    depths = np.linspace(0.78 * h, 0.88 * h, 20)
    rows = apex[0] + depths[:, None] * np.cos(angles)[None, :]
    cols = apex[1] + depths[:, None] * np.sin(angles)[None, :]
    coords = np.stack([rows.ravel(), cols.ravel()])
    inside = ndimage.map_coordinates(fan.astype(np.float32), coords, order=0).reshape(rows.shape).min(0) > 0
    profile = ndimage.map_coordinates(soft, coords, order=1).reshape(rows.shape).mean(0)
    profile = ndimage.uniform_filter1d(profile, 3)[inside]
    return float(profile.min() / np.median(profile)) if profile.size else 1.0


def nuclear_stats(image: np.ndarray) -> tuple[float, float]:
    """(fraction of haematoxylin-dark pixels, mean nucleus component area) of an H&E patch."""
    nuclei = (image[..., 0] < 150) & (image[..., 2] > image[..., 1])
    labels, n = ndimage.label(nuclei)
    return float(nuclei.mean()), float(nuclei.sum() / max(n, 1))


def fundus_spots(image: np.ndarray) -> tuple[int, int, int]:
    """(yellow exudate spots, dark-red blots wider than vessels, area of the brightest cup) of a fundus photo."""
    img = image.astype(np.float32)
    cup = (img[..., 0] > 235) & (img[..., 1] > 215) & (img[..., 2] > 175)
    near_disc = ndimage.binary_dilation(cup, iterations=12)
    yellow = (img[..., 0] > 200) & (img[..., 1] > 190) & (img[..., 2] < 170) & ~near_disc
    n_yellow = ndimage.label(yellow)[1]
    field = ndimage.binary_erosion(img.sum(-1) > 60, iterations=4)
    dark = field & (img[..., 0] < 0.6 * ndimage.uniform_filter(img[..., 0], 31)) & (img[..., 1] < 40)
    disk = np.hypot(*np.mgrid[-3:4, -3:4]) <= 3.0  # vessels are narrower than this disc, blots are not
    n_blots = ndimage.label(ndimage.binary_opening(dark, structure=disk))[1]
    return n_yellow, n_blots, int(cup.sum())


def read_rows(manifest: Path) -> list[dict[str, str]]:
    """The rows of a sample pack's manifest CSV, as a user's csv.DictReader sees them."""
    with open(manifest, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
