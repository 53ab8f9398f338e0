"""Brain MRI cases of the modality benchmark: one hyper- or hypointense mass, left or right, small or large.

Tags: ``<signal>_mass_<side>_<size>`` (e.g. ``hyperintense_mass_left_large``) or ``normal``.
"""

from __future__ import annotations

import numpy as np

from medmoe_samples.pairs.case import Pair, tags_or_normal
from medmoe_samples.pairs.render_mri import MASS_DIAMETER_MM, BrainFindings, mass_size_word, render_brain_mri
from medmoe_samples.pairs.report_text import compose, negate, pick

_HEADERS = {
    "t1": ("Axial T1-weighted MRI of the brain.", "MR brain, axial T1.", "T1-weighted image:", None),
    "t2": ("Axial T2-weighted MRI of the brain.", "MR brain, axial T2.", "T2-weighted image:", None),
}
_SIGNAL_WORDS = {"hyperintense": ("hyperintense", "high-signal", "bright"),
                 "hypointense": ("hypointense", "low-signal", "dark")}
_FILLERS = ("The midline structures are preserved.", "Grey-white matter differentiation is maintained.",
            "The calvarium appears intact.")


def _mass_sentences(rng: np.random.Generator, signal: str, side: str, diameter: float) -> list[str]:
    word, size, d = pick(rng, _SIGNAL_WORDS[signal]), mass_size_word(diameter), round(diameter)
    main = pick(rng, (
        f"A {size} {word} mass in the {side} cerebral hemisphere, measuring {d} mm.",
        f"{size} {word} lesion in the {side} hemisphere with surrounding oedema.",
        f"There is a {word} {size} mass ({d} mm) in the {side} hemisphere.",
        f"{side} hemispheric {word} mass, {size}, about {d} mm across.",
    ))
    sentences = [main]
    if rng.random() < 0.4:
        sentences.append(pick(rng, ("The ventricles are symmetric.", "No midline shift.")))
    return sentences


def make_mri_case(rng: np.random.Generator, size: int = 224) -> Pair:
    """Draw findings, render the brain slice and write its report (a :class:`~.case.PairMaker`; a
    (size, size) uint8 image)."""
    sequence = pick(rng, ("t1", "t2"))
    tags, positives, negatives = [], [], []
    mass = None
    if rng.random() < 0.75:
        signal = pick(rng, ("hyperintense", "hypointense"))
        side = pick(rng, ("left", "right"))
        diameter = float(rng.uniform(*MASS_DIAMETER_MM[pick(rng, ("small", "large"))]))
        mass = (signal, side, diameter)
        tags.append(f"{signal}_mass_{side}_{mass_size_word(diameter)}")
        positives = _mass_sentences(rng, signal, side, diameter)
    else:
        negatives = negate(rng, [pick(rng, ("intracranial mass", "focal lesion", "mass lesion"))])
        if rng.random() < 0.5:
            negatives.append("The ventricles are normal in size.")
    fillers = [pick(rng, _FILLERS)] if rng.random() < 0.5 else []
    impression = pick(rng, ("Normal MRI of the brain.", "Normal study.")) if not tags and rng.random() < 0.6 else None
    report = compose(rng, positives, negatives, pick(rng, _HEADERS[sequence]), fillers, impression)
    image = render_brain_mri(BrainFindings(sequence, mass), rng, size)
    return Pair(image=image, report=report, labels=tags_or_normal(tags))
