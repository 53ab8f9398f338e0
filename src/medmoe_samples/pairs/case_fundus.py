"""Fundus photograph cases of the modality benchmark: haemorrhages, exudates, optic disc cupping.

Tags: ``haemorrhage``, ``exudate``, ``cupping`` (any combination) or ``normal``.
"""

from __future__ import annotations

import numpy as np

from medmoe_samples.pairs.case import Pair, tags_or_normal
from medmoe_samples.pairs.render_fundus import CUP_RATIO, FundusFindings, render_fundus
from medmoe_samples.pairs.report_text import compose, negate, pick

_FILLERS = ("The macula appears flat.", "Vessel calibre is within normal range.", "The retina is attached.")


def _headers(eye: str) -> tuple[str | None, ...]:
    code = "OD" if eye == "right" else "OS"
    return (f"Colour fundus photograph of the {eye} eye.", f"Fundus photo, {code}.",
            f"Retinal photograph ({eye} eye):", None)


def _count_word(n: int) -> str:
    return "a few" if n < 6 else "several" if n < 10 else "multiple"


def make_fundus_case(rng: np.random.Generator, size: int = 224) -> Pair:
    """Draw findings, render the photograph and write its report (a :class:`~.case.PairMaker`; a
    (size, size, 3) uint8 RGB image)."""
    eye = pick(rng, ("right", "left"))
    present = [] if rng.random() < 0.25 else [k for k in ("haemorrhage", "exudate", "cupping") if rng.random() < 0.45]
    haemorrhages = int(rng.integers(4, 14)) if "haemorrhage" in present else 0
    exudates = int(rng.integers(8, 26)) if "exudate" in present else 0
    cupping = "cupping" in present
    ratio = float(rng.uniform(*CUP_RATIO["cupping" if cupping else "normal"]))

    positives, denied = [], []
    spelling = pick(rng, ("haemorrhages", "hemorrhages"))
    if haemorrhages:
        positives.append(pick(rng, (
            f"{_count_word(haemorrhages)} dot-blot {spelling} in the posterior pole.",
            f"Scattered intraretinal {spelling} ({haemorrhages}).",
            f"There are {_count_word(haemorrhages)} retinal {spelling}.",
        )))
    else:
        denied.append(pick(rng, (spelling, f"retinal {spelling}")))
    if exudates:
        positives.append(pick(rng, (
            "Clusters of yellow hard exudates near the macula.",
            "Hard exudates in the posterior pole.",
            f"{_count_word(exudates)} hard exudates are present.",
        )))
    else:
        denied.append(pick(rng, ("exudates", "hard exudates")))
    if cupping:
        positives.append(pick(rng, (
            f"Enlarged cup-to-disc ratio of {ratio:.1f}.",
            f"Optic disc cupping (C/D {ratio:.1f}), suspicious for glaucoma.",
            f"The optic cup is enlarged, cup-to-disc ratio about {ratio:.1f}.",
        )))
    else:
        denied.append(pick(rng, (f"Normal cup-to-disc ratio ({ratio:.1f}).", "optic disc cupping")))
    sentences = negate(rng, denied)
    fillers = [pick(rng, _FILLERS)] if rng.random() < 0.5 else []
    impression = "Normal fundus." if not present and rng.random() < 0.6 else None
    report = compose(rng, positives, sentences, pick(rng, _headers(eye)), fillers, impression)
    findings = FundusFindings(eye, haemorrhages, exudates, ratio)
    return Pair(image=render_fundus(findings, rng, size), report=report, labels=tags_or_normal(present))
