"""Every generated image shows what its labels say, checked by simple measurements of the pixels."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import testkit.sample_measures as measure
from PIL import Image
from testkit.sample_measures import read_rows

pytestmark = pytest.mark.timeout(240)

OTHER = {"left": "right", "right": "left"}


def _load(quick_pack, modality: str) -> list[tuple[set[str], np.ndarray, str]]:
    root, _ = quick_pack
    folder = root / "modality-bench"
    rows = [r for r in read_rows(folder / "manifest.csv") if r["modality"] == modality]
    return [(set(r["labels"].split("|")), np.asarray(Image.open(folder / r["image"])), r["report"]) for r in rows]


def test_images_are_png_of_the_right_kind(quick_pack):
    root, _ = quick_pack
    folder = root / "modality-bench"
    for row in read_rows(folder / "manifest.csv"):
        with Image.open(folder / row["image"]) as image:
            assert image.format == "PNG" and image.size == (224, 224)
            assert image.mode == ("RGB" if row["modality"] in ("pathology", "fundus") else "L"), row["image"]


def test_xray_heart_effusion_and_opacity(quick_pack):
    cases = _load(quick_pack, "xray")
    checked = defaultdict(int)
    for labels, image, report in cases:
        lower = {s: measure.band_mean(image, *measure.LOWER_BAND, s) for s in OTHER}
        upper = {s: measure.band_mean(image, *measure.UPPER_BAND, s) for s in OTHER}
        basal_or_diffuse = any(t.startswith("opacity") and not t.endswith("upper") for t in labels)
        if not basal_or_diffuse and not any(t.startswith("effusion") for t in labels):
            ratio = measure.heart_width_ratio(image)
            assert (ratio > 0.4) == ("cardiomegaly" in labels), (labels, ratio, report)
            checked["heart"] += 1
        for side, other in OTHER.items():
            if f"effusion_{side}" in labels and f"effusion_{other}" not in labels and not (
                {f"opacity_{other}", f"opacity_{other}_lower"} & labels
            ):
                assert lower[side] > lower[other] + 10, (labels, lower)
                checked["effusion"] += 1
            if f"opacity_{side}_upper" in labels and not ({f"opacity_{other}", f"opacity_{other}_upper"} & labels):
                assert upper[side] > upper[other] + 5, (labels, upper)
                checked["opacity"] += 1
    assert checked["heart"] >= 8 and checked["effusion"] >= 2 and checked["opacity"] >= 1, checked


def test_ct_nodules_and_liver_lesions(quick_pack):
    cases = _load(quick_pack, "ct")
    regions = defaultdict(int)
    for labels, image, report in cases:
        width = image.shape[1]
        if measure.is_chest_slice(image):
            regions["chest"] += 1
            sides = {"right" if col < width / 2 else "left" for _, col in measure.lung_blobs(image)}
            assert sides == {t.split("_")[1] for t in labels if t.startswith("nodule")}, (labels, report)
            assert "liver_lesion" not in labels
        else:
            regions["abdomen"] += 1
            holes = [h for h in measure.liver_holes(image) if h[2] < 0.45 * width and h[1] < 0.7 * image.shape[0]]
            assert bool(holes) == ("liver_lesion" in labels), (labels, holes, report)
            assert not any(t.startswith("nodule") for t in labels)
    assert regions["chest"] >= 5 and regions["abdomen"] >= 5, regions


def test_mri_mass_side_signal_and_size(quick_pack):
    cases = _load(quick_pack, "mri")
    agree, areas, normal_max = [], defaultdict(list), []
    for labels, image, _ in cases:
        asymmetry = measure.brain_asymmetry(image)
        (tag,) = labels
        if tag == "normal":
            normal_max.append(max(asymmetry.values()))
            continue
        signal, _, side, size = tag.split("_")
        here, there = asymmetry[(signal, side)], asymmetry[(signal, OTHER[side])]
        agree.append(here > there and here >= 50)
        areas[size].append(here)
    # Mirror comparison of a heuristic kind: nearly all, not necessarily every, mass stands out.
    assert np.mean(agree) >= 0.85, agree
    assert np.median(areas["large"]) > 2.0 * np.median(areas["small"]), areas
    assert np.mean(np.array(normal_max) < 200) >= 0.85, normal_max


def test_ultrasound_cysts_masses_and_shadows(quick_pack):
    cases = _load(quick_pack, "ultrasound")
    anechoic, shadows = defaultdict(list), defaultdict(list)
    for labels, image, report in cases:
        (tag,) = labels
        dark, hypo = measure.ultrasound_dark_areas(image)
        anechoic[tag].append(dark)
        shadows[tag].append(measure.ultrasound_shadow(image))
        if tag.startswith("cyst"):
            assert dark >= 60, (tag, dark, report)
        if tag == "normal":
            assert dark < 40 and hypo < 300, (tag, dark, hypo)
        if tag.startswith("solid_mass"):
            assert hypo >= 300, (tag, hypo, report)
    if anechoic["cyst_large"] and anechoic["cyst_small"]:
        assert min(anechoic["cyst_large"]) > max(anechoic["cyst_small"]), anechoic
    assert np.mean(np.array(shadows["calcification"]) < 0.5) >= 0.75, shadows["calcification"]
    others = [v for tag, values in shadows.items() if tag != "calcification" for v in values]
    assert min(others) > 0.5, shadows


def test_pathology_nuclear_density(quick_pack):
    for labels, image, _ in _load(quick_pack, "pathology"):
        fraction, _ = measure.nuclear_stats(image)
        (tag,) = labels
        expected = {"normal": (0.0, 0.25), "inflammation": (0.25, 0.52), "tumour": (0.5, 1.0)}[tag]
        assert expected[0] <= fraction < expected[1], (tag, fraction)


def test_fundus_haemorrhages_exudates_cupping(quick_pack):
    seen = set()
    for labels, image, report in _load(quick_pack, "fundus"):
        exudates, blots, cup = measure.fundus_spots(image)
        assert (exudates >= 3) == ("exudate" in labels), (labels, exudates, report)
        assert (blots >= 1) == ("haemorrhage" in labels), (labels, blots, report)
        assert (cup > 100) == ("cupping" in labels), (labels, cup, report)
        seen |= labels
    assert {"exudate", "haemorrhage", "cupping", "normal"} <= seen


def test_every_row_points_at_an_existing_file(quick_pack):
    root, _ = quick_pack
    for name in ("modality-bench", "iu-cxr", "real-samples"):
        for row in read_rows(root / name / "manifest.csv"):
            assert (root / name / Path(row["image"])).is_file(), (name, row["image"])
