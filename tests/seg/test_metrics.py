"""Segmentation metrics against hand-computed cases, NaN-aware aggregation, tumour detection, overlays."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from medmoe.errors import InvalidInputError
from medmoe.seg.metrics import aggregate, case_metrics, detection_counts, nanmean, tumour_detection
from medmoe.seg.overlay import save_overlay

pytestmark = pytest.mark.timeout(60)


def _empty(k=1, shape=(12, 12, 12)):
    return np.zeros((k, *shape), bool)


def test_single_voxels_give_hand_computable_distances_in_millimetres():
    gt, pred = _empty(), _empty()
    gt[0, 5, 5, 5] = True
    pred[0, 5, 5, 8] = True  # 3 voxels along z at 2 mm: 6 mm apart
    m = case_metrics(pred, gt, (1.0, 1.0, 2.0), ["x"], nsd_tolerance_mm=7.0)["x"]
    assert m["dice"] == 0.0 and m["hd95"] == pytest.approx(6.0) and m["nsd"] == pytest.approx(1.0)
    m = case_metrics(pred, gt, (1.0, 1.0, 2.0), ["x"], nsd_tolerance_mm=5.0)["x"]
    assert m["nsd"] == pytest.approx(0.0)
    # the same voxels along x at 1 mm are 3 mm apart: spacing really is per axis
    pred2 = _empty()
    pred2[0, 8, 5, 5] = True
    assert case_metrics(pred2, gt, (1.0, 1.0, 2.0), ["x"])["x"]["hd95"] == pytest.approx(3.0)


def test_shifted_cube_dice_and_boundary_distance():
    gt, pred = _empty(), _empty()
    gt[0, 2:6, 2:6, 2:6] = True  # 64 voxels
    pred[0, 3:7, 2:6, 2:6] = True  # shifted by one voxel: 48 shared
    m = case_metrics(pred, gt, (1.5, 1.5, 1.5), ["cube"], nsd_tolerance_mm=2.0)["cube"]
    assert m["dice"] == pytest.approx(2 * 48 / 128)
    assert m["hd95"] == pytest.approx(1.5)  # no boundary voxel is further than one voxel from the other boundary
    assert m["nsd"] == pytest.approx(1.0)  # ... which is within 2 mm
    assert m["gt_voxels"] == 64 and m["pred_voxels"] == 64
    same = case_metrics(gt, gt, (1.5, 1.5, 1.5), ["cube"])["cube"]
    assert same["dice"] == 1.0 and same["hd95"] == 0.0 and same["nsd"] == 1.0


def test_empty_mask_conventions():
    gt, pred = _empty(3, (10, 8, 6)), _empty(3, (10, 8, 6))
    gt[0, 1, 1, 1] = True  # missed entirely
    pred[1, 2, 2, 2] = True  # false alarm
    # channel 2: nothing anywhere
    m = case_metrics(pred, gt, (1.0, 2.0, 3.0), ["missed", "false_alarm", "absent"])
    diagonal = math.sqrt(10**2 + 16**2 + 18**2)
    for name in ("missed", "false_alarm"):
        assert m[name]["dice"] == 0.0 and m[name]["nsd"] == 0.0 and m[name]["hd95"] == pytest.approx(diagonal)
    assert all(math.isnan(m["absent"][k]) for k in ("dice", "hd95", "nsd"))


def test_aggregation_is_nan_aware_and_per_dataset():
    cases = [
        {"dataset": "A", "metrics": {"liver": {"dice": 0.8, "hd95": 4.0, "nsd": 0.9},
                                     "liver_tumour": {"dice": math.nan, "hd95": math.nan, "nsd": math.nan}}},
        {"dataset": "A", "metrics": {"liver": {"dice": 0.6, "hd95": 8.0, "nsd": 0.7},
                                     "liver_tumour": {"dice": 0.5, "hd95": 10.0, "nsd": 0.4}}},
        {"dataset": "B", "metrics": {"liver": {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}}},
    ]
    out = aggregate(cases)
    assert out["per_dataset"]["A"]["liver"]["dice"] == pytest.approx(0.7)
    assert out["per_dataset"]["A"]["liver_tumour"] == {"dice": 0.5, "hd95": 10.0, "nsd": 0.4, "n": 1}
    assert "liver_tumour" not in out["per_dataset"]["B"]  # B does not label tumours: nothing is counted for it
    assert out["per_class"]["liver"]["dice"] == pytest.approx(0.8) and out["per_class"]["liver"]["n"] == 3
    assert out["mean"]["dice"] == pytest.approx((0.8 + 0.5) / 2)
    assert math.isnan(nanmean([math.nan, math.nan])) and nanmean([]) != nanmean([])


def test_patient_level_tumour_detection():
    counts = detection_counts([True, False, True, False, False], [True, True, False, False, False])
    assert (counts["tp"], counts["fn"], counts["fp"], counts["tn"]) == (1, 1, 1, 2)
    assert counts["sensitivity"] == pytest.approx(0.5) and counts["specificity"] == pytest.approx(2 / 3)
    cases = [
        {"metrics": {"kidney_tumour": {"gt_voxels": 30, "pred_voxels": 12}}},
        {"metrics": {"kidney_tumour": {"gt_voxels": 0, "pred_voxels": 3}}},
        {"metrics": {"kidney_tumour": {"gt_voxels": 0, "pred_voxels": 0}}},
        {"metrics": {"liver": {"gt_voxels": 10, "pred_voxels": 10}}},  # does not label kidney tumours
    ]
    det = tumour_detection(cases, ["kidney_tumour"], min_pred_voxels=5)["kidney_tumour"]
    assert (det["tp"], det["fn"], det["fp"], det["tn"]) == (1, 0, 0, 2)
    assert math.isnan(detection_counts([False], [False])["sensitivity"])
    with pytest.raises(InvalidInputError):
        detection_counts([True], [True, False])


def test_metric_inputs_are_validated():
    with pytest.raises(InvalidInputError, match="expected equal"):
        case_metrics(_empty(2), _empty(1), (1, 1, 1), ["a", "b"])
    with pytest.raises(InvalidInputError, match="spacing"):
        case_metrics(_empty(), _empty(), (1, 0, 1), ["a"])


def test_overlay_png_shows_contours_in_radiological_view(tmp_path):
    hu = np.full((40, 30, 20), -1000.0)
    hu[5:35, 5:25, :] = 40.0
    masks = np.zeros((2, 40, 30, 20), bool)
    masks[0, 25:33, 10:20, 5:15] = True  # on the patient's right (+x in RAS) ...
    masks[1, 8:12, 10:14, 8:12] = True
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    reference = masks.copy()
    reference[1] = np.roll(masks[1], 3, axis=1)  # a reference spleen a little more anterior, drawn dashed
    path = save_overlay(hu, affine, masks, ["liver", "spleen"], tmp_path / "o.png", reference=reference)
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert image.shape[0] > 200 and image.shape[1] > 600
    # coloured (non-grey) pixels exist: the contours were drawn
    colour = np.abs(image[..., 0] - image[..., 1]) + np.abs(image[..., 1] - image[..., 2])
    assert (colour > 60).sum() > 50
    # ... and in the first axial panel the right-sided "liver" (tab10 blue) is drawn on the viewer's left half
    first = image[: int(image.shape[0] * 0.8), : image.shape[1] // 4]  # first panel, above the legend
    blue = (first[..., 2] > 150) & (first[..., 0] < 80)
    cols = np.nonzero(blue.any(axis=0))[0]
    assert cols.size and cols.mean() < first.shape[1] / 2
    with pytest.raises(InvalidInputError):
        save_overlay(hu, affine, masks[:, :10], ["liver", "spleen"], tmp_path / "bad.png")
