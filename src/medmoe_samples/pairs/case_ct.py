"""CT cases of the modality benchmark: lung nodules (chest slices) and liver lesions (abdominal slices).

Tags: ``nodule_left`` / ``nodule_right``; ``liver_lesion``; ``normal``.
"""

from __future__ import annotations

import numpy as np

from medmoe_samples.pairs.case import Pair, tags_or_normal
from medmoe_samples.pairs.render_ct import CTFindings, render_ct_slice
from medmoe_samples.pairs.report_text import compose, negate, pick

_CHEST_HEADERS = ("Axial CT of the chest, lung window.", "CT thorax:", "Non-contrast chest CT, axial slice.", None)
_ABDOMEN_HEADERS = ("Contrast-enhanced CT of the abdomen, portal venous phase.", "CT abdomen:", "Axial abdominal CT.", None)
_CHEST_FILLERS = ("The airways are patent.", "Heart size within normal limits.", "The mediastinum is unremarkable.")
_ABDOMEN_FILLERS = ("The spleen is of normal size.", "The kidneys enhance symmetrically.", "The aorta is of normal calibre.")


def _nodule_sentence(rng: np.random.Generator, side: str, diameter: float) -> str:
    size, d = "tiny" if diameter < 6 else "small" if diameter < 10 else "sizeable", round(diameter)
    return pick(rng, (
        f"A {d} mm solid nodule in the {side} lung.",
        f"{side} pulmonary nodule measuring {d} mm.",
        f"There is a {size} {d}-mm nodule in the {side} lung.",
        f"{size} nodule ({d} mm) is seen in the {side} lung.",
    ))


def _liver_sentence(rng: np.random.Generator, diameter: float) -> str:
    d = round(diameter)
    return pick(rng, (
        f"A {d} mm hypodense lesion in the liver.",
        f"Hypoattenuating hepatic lesion measuring {d} mm.",
        f"Focal low-density liver lesion of {d} mm, cyst or metastasis.",
        f"The liver contains a {d}-mm hypodense focal lesion.",
    ))


def make_ct_case(rng: np.random.Generator, size: int = 224) -> Pair:
    """Draw findings, render the CT slice and write its report (a :class:`~.case.PairMaker`; a
    (size, size) uint8 windowed slice)."""
    region = "chest" if rng.random() < 0.6 else "abdomen"
    tags: list[str] = []
    positives: list[str] = []
    negatives: list[str] = []
    if region == "chest":
        nodules = []
        if rng.random() < 0.7:
            sides = ["left", "right"] if rng.random() < 0.15 else [pick(rng, ("left", "right"))]
            for side in sides:
                diameter = float(rng.uniform(5.0, 13.0))
                nodules.append((side, diameter))
                tags.append(f"nodule_{side}")
                positives.append(_nodule_sentence(rng, side, diameter))
        else:
            negatives += negate(rng, [pick(rng, ("pulmonary nodules", "suspicious pulmonary nodule", "lung nodule"))])
        findings = CTFindings("chest", nodules=tuple(nodules))
        header, fillers = pick(rng, _CHEST_HEADERS), _CHEST_FILLERS
    else:
        lesions = ()
        if rng.random() < 0.6:
            diameter = float(rng.uniform(8.0, 30.0))
            lesions = (diameter,)
            tags.append("liver_lesion")
            positives.append(_liver_sentence(rng, diameter))
        else:
            negatives.append(pick(rng, ("No focal liver lesion.", "The liver is unremarkable without focal lesion.",
                                        "Homogeneous liver, no hepatic lesion.")))
        findings = CTFindings("abdomen", liver_lesions=lesions)
        header, fillers = pick(rng, _ABDOMEN_HEADERS), _ABDOMEN_FILLERS
    chosen = [pick(rng, fillers)] if rng.random() < 0.6 else []
    impression = pick(rng, ("No abnormality.", "Normal study.")) if not tags and rng.random() < 0.5 else None
    report = compose(rng, positives, negatives, header, chosen, impression)
    return Pair(image=render_ct_slice(findings, rng, size), report=report, labels=tags_or_normal(tags))
