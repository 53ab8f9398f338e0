"""Ultrasound cases of the modality benchmark: cyst, solid mass (each small or large), calcification.

Tags: ``cyst_<size>``, ``solid_mass_<size>``, ``calcification`` or ``normal``.
"""

from __future__ import annotations

import numpy as np

from medmoe_samples.pairs.case import Pair, tags_or_normal
from medmoe_samples.pairs.render_ultrasound import (
    LESION_DIAMETER_MM,
    UltrasoundFindings,
    lesion_size_word,
    render_ultrasound,
)
from medmoe_samples.pairs.report_text import compose, negate, pick

_HEADERS = ("Ultrasound of the palpable area.", "Targeted soft-tissue sonography:", "B-mode ultrasound image.",
            "US:", None, None)
_NORMAL = "Normal echotexture without focal lesion."
_FILLERS = ("The skin and subcutaneous fat are unremarkable.", "Surrounding echotexture is homogeneous.")


def _sentence(rng: np.random.Generator, kind: str, diameter: float) -> str:
    d = round(diameter)
    if kind == "calcification":
        return pick(rng, (
            "Echogenic focus with dense posterior acoustic shadowing, consistent with a calcification.",
            f"A {d} mm bright calcified focus casting an acoustic shadow.",
            "Shadowing hyperechoic calcification.",
        ))
    size = lesion_size_word(diameter)
    if kind == "cyst":
        return pick(rng, (
            f"{size} anechoic cyst measuring {d} mm with posterior acoustic enhancement.",
            f"Well-circumscribed round anechoic lesion, {d} mm, consistent with a {size} simple cyst.",
            f"There is a {size} cyst ({d} mm) with a thin wall and through-transmission.",
        ))
    return pick(rng, (
        f"Irregular hypoechoic solid mass measuring {d} mm with posterior shadowing.",
        f"{size} solid hypoechoic lesion with lobulated margins, {d} mm.",
        f"There is a {size} irregular solid mass ({d} mm) of low echogenicity.",
    ))


def make_ultrasound_case(rng: np.random.Generator, size: int = 224) -> Pair:
    """Draw findings, render the sector image and write its report (a :class:`~.case.PairMaker`; a
    (size, size) uint8 image)."""
    kinds = ("cyst", "solid_mass", "calcification")
    kind = None if rng.random() < 0.22 else kinds[int(rng.integers(3))]
    lesion, tags, positives = None, [], []
    if kind is not None:
        size_class = "calcification" if kind == "calcification" else pick(rng, ("small", "large"))
        diameter = float(rng.uniform(*LESION_DIAMETER_MM[size_class]))
        lesion = (kind, diameter)
        tags.append(kind if kind == "calcification" else f"{kind}_{lesion_size_word(diameter)}")
        positives.append(_sentence(rng, kind, diameter))
    absent = [k for k in kinds if k != kind]
    phrases = {"cyst": ("cyst", "cystic lesion"), "solid_mass": ("solid mass", "solid lesion"),
               "calcification": ("calcification", "calcifications")}
    denied = [pick(rng, phrases[k]) for k in absent if rng.random() < 0.6]
    negatives = negate(rng, denied)
    if kind is None and rng.random() < 0.5:
        negatives.append(_NORMAL)
    fillers = [pick(rng, _FILLERS)] if rng.random() < 0.4 else []
    if not (positives or negatives or fillers):
        # A normal study whose draws left nothing to say still gets a statement, not a bare header.
        negatives.append(_NORMAL)
    report = compose(rng, positives, negatives, pick(rng, _HEADERS), fillers)
    image = render_ultrasound(UltrasoundFindings(lesion), rng, size)
    return Pair(image=image, report=report, labels=tags_or_normal(tags))
