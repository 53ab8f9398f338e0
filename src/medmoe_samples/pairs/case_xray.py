"""Chest X-ray cases of the modality benchmark: cardiomegaly, pleural effusion, lung opacity, normal.

Tags: ``cardiomegaly``; ``effusion_left`` / ``effusion_right`` (both for bilateral);
``opacity_<side>`` (whole lung) or ``opacity_<side>_<zone>`` with zone ``upper`` / ``lower``.
"""

from __future__ import annotations

import numpy as np

from medmoe_samples.pairs.case import Pair, tags_or_normal
from medmoe_samples.pairs.render_xray import ChestFindings, LungLesion, render_chest_xray
from medmoe_samples.pairs.report_text import compose, negate, pick

_HEADERS = ("PA chest radiograph.", "Frontal chest X-ray.", "Chest radiograph, PA view.", "CXR:", None, None)
_FILLERS = ("The trachea is midline.", "Osseous structures are intact.", "No pneumothorax.",
            "Mediastinal contours are within expected limits.", "Visualised bones show no acute fracture.")
_NORMAL_IMPRESSIONS = ("No acute cardiopulmonary abnormality.", "Normal chest.", "Normal study.")
_PATTERN_WORDS = {"patchy": ("patchy", "ill-defined"), "confluent": ("dense", "confluent"),
                  "streaky": ("streaky", "linear"), "interstitial": ("reticular", "interstitial")}
_ZONE_WORDS = {"upper": ("upper zone", "upper lobe", "upper lung"), "lower": ("lower zone", "lower lobe", "base")}


def _cardiomegaly_sentence(rng: np.random.Generator, ratio: float) -> str:
    severity = "mild" if ratio < 0.6 else "moderate" if ratio < 0.65 else "marked"
    return pick(rng, (
        f"The heart is {severity}ly enlarged.",
        f"{severity} cardiomegaly.",
        f"There is {severity} enlargement of the cardiac silhouette.",
        f"Cardiothoracic ratio is increased at {ratio:.2f}.",
    ))


def _effusion_sentence(rng: np.random.Generator, sides: list[str], height: float) -> str:
    size = "small" if height < 0.2 else "moderate" if height < 0.3 else "large"
    if len(sides) == 2:
        return pick(rng, (
            f"Bilateral {size} pleural effusions.",
            f"{size} pleural effusions on both sides.",
            f"Blunting of both costophrenic angles from {size} bilateral effusions.",
        ))
    side = sides[0]
    return pick(rng, (
        f"{size} {side}-sided pleural effusion.",
        f"There is a {size} {side} pleural effusion.",
        f"{size} pleural effusion on the {side}.",
        f"Blunting of the {side} costophrenic angle due to a {size} effusion.",
        f"Layering fluid in the {side} pleural space, {size} in volume.",
    ))


def _opacity_sentence(rng: np.random.Generator, lesion: LungLesion) -> str:
    word = pick(rng, _PATTERN_WORDS[lesion.pattern])
    side = lesion.side
    if lesion.zone is None:
        return pick(rng, (
            f"Diffuse {word} opacity throughout the {side} lung.",
            f"{word} opacification of the entire {side} lung.",
            f"The {side} lung shows diffuse {word} airspace opacity.",
        ))
    zone = pick(rng, _ZONE_WORDS[lesion.zone])
    return pick(rng, (
        f"{word} opacity in the {side} {zone}.",
        f"Airspace consolidation of the {side} {zone}.",
        f"{side} {zone} {word} opacification.",
        f"There is {word} opacity at the {side} {zone}.",
    ))


def make_xray_case(rng: np.random.Generator, size: int = 224) -> Pair:
    """Draw findings, render the radiograph and write its report (a :class:`~.case.PairMaker`; a
    (size, size) uint8 image)."""
    kinds = [] if rng.random() < 0.28 else list(rng.permutation(["cardiomegaly", "effusion", "opacity"]))
    kinds = kinds[: 1 if rng.random() < 0.6 else 2]
    tags: list[str] = []
    positives: list[str] = []
    negatives: list[str] = []
    ratio, effusions, lesions = None, (), ()

    if "cardiomegaly" in kinds:
        ratio = float(rng.uniform(0.56, 0.7))
        tags.append("cardiomegaly")
        positives.append(_cardiomegaly_sentence(rng, ratio))
    elif rng.random() < 0.5:
        negatives.append(pick(rng, ("Heart size is normal.", "The cardiac silhouette is not enlarged.",
                                    "Normal cardiothoracic ratio.")))
    else:
        negatives.append("cardiomegaly")

    if "effusion" in kinds:
        choice = rng.random()
        sides = ["left", "right"] if choice < 0.2 else ["left"] if choice < 0.6 else ["right"]
        height = float(rng.uniform(0.15, 0.4))
        effusions = tuple((side, height * float(rng.uniform(0.85, 1.0))) for side in sides)
        tags.extend(f"effusion_{side}" for side in sides)
        positives.append(_effusion_sentence(rng, sides, height))
    elif rng.random() < 0.3:
        negatives.append("The costophrenic angles are sharp.")
    else:
        negatives.append(pick(rng, ("pleural effusion", "effusion", "pleural fluid")))

    if "opacity" in kinds:
        side = pick(rng, ("left", "right"))
        zone = [None, "upper", "lower"][int(rng.integers(3))]
        patterns = ("patchy", "confluent", "streaky", "interstitial") if zone is None else ("patchy", "confluent", "streaky")
        lesion = LungLesion("opacity", side, zone, float(rng.uniform(0.55, 1.0)), pick(rng, patterns))
        lesions = (lesion,)
        tags.append(f"opacity_{side}" + (f"_{zone}" if zone else ""))
        positives.append(_opacity_sentence(rng, lesion))
    elif rng.random() < 0.3:
        negatives.append("The lungs are clear.")
    else:
        negatives.append(pick(rng, ("focal consolidation", "airspace opacity", "infiltrate")))

    sentences = negate(rng, negatives)
    fillers = [pick(rng, _FILLERS)] if rng.random() < 0.5 else []
    impression = pick(rng, _NORMAL_IMPRESSIONS) if not tags and rng.random() < 0.7 else None
    report = compose(rng, positives, sentences, pick(rng, _HEADERS), fillers, impression)
    image = render_chest_xray(ChestFindings(heart_ratio=ratio, effusions=effusions, lesions=lesions), rng, size)
    return Pair(image=image, report=report, labels=tags_or_normal(tags))
