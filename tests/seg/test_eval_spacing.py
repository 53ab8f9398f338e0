"""Metrics at a fixed evaluation spacing (the Universal Model's Dice at 1.5 mm) beside the native ones."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from testkit.seg import BandModel

from medmoe.data.volumes import Volume
from medmoe.errors import InvalidInputError
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.evaluate import (
    evaluate,
    image_at_spacing,
    metrics_at_spacing,
    parse_eval_spacing,
    spacing_label,
)
from medmoe.seg.metrics import case_metrics


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _slab_case(shape=(30, 12, 12), gt_x=(6, 18), pred_x=(6, 19)):
    """A 0.5 mm RAS volume whose label (id 1 = liver) and prediction are slabs along x."""
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    label = np.zeros(shape, np.uint8)
    label[gt_x[0]:gt_x[1], 2:10, 2:10] = 1
    pred = np.zeros((1, *shape), bool)
    pred[0, pred_x[0]:pred_x[1], 2:10, 2:10] = True
    image = Volume(np.zeros(shape, np.float32), affine, "ct.nii.gz")
    return image, Volume(label, affine, "label.nii.gz"), pred


def test_the_two_grids_give_the_dice_each_grid_predicts():
    template = ClassTemplate.default()
    template.register_label_map("slab-test", {1: "liver"})
    image, label, pred = _slab_case()
    gt = label.array.astype(bool)
    grid = image_at_spacing(image, (1.5, 1.5, 1.5))
    # The 1.5 mm grid keeps the first voxel centre, so it holds every third 0.5 mm voxel (and a last
    # plane past the native ones when the footprint reaches into it).
    np.testing.assert_allclose(grid.affine, np.diag([1.5, 1.5, 1.5, 1.0]), atol=1e-6)
    coarse_gt, coarse_pred = np.zeros(grid.shape, bool), np.zeros((1, *grid.shape), bool)
    sampled = gt[::3, ::3, ::3]
    inside = tuple(slice(0, n) for n in sampled.shape)
    coarse_gt[inside], coarse_pred[(0, *inside)] = sampled, pred[0, ::3, ::3, ::3]

    native = case_metrics(pred, gt[None], image.spacing, ["liver"])["liver"]
    coarse = metrics_at_spacing(coarse_pred, grid, label, "slab-test", ["liver"], template, (1.5, 1.5, 1.5))["liver"]

    assert native["dice"] == pytest.approx(_dice(pred[0], gt))
    assert coarse["dice"] == pytest.approx(_dice(coarse_pred[0], coarse_gt))  # the label resampled nearest
    assert coarse["gt_voxels"] == int(coarse_gt.sum())
    assert coarse["dice"] != pytest.approx(native["dice"])  # 8/9 against 24/25: the grids disagree here


def test_the_image_at_a_spacing_is_ras_and_covers_the_ct():
    flipped = np.diag([-0.8, 0.8, 2.5, 1.0])
    flipped[:3, 3] = (10.0, -20.0, 30.0)
    hu = np.random.default_rng(0).uniform(-1000, 400, (50, 40, 12)).astype(np.float32)
    grid = image_at_spacing(Volume(hu, flipped, "ct.nii.gz"), (1.5, 1.5, 2.0))
    np.testing.assert_allclose(np.diag(grid.affine)[:3], (1.5, 1.5, 2.0))
    corners = np.array([[0, 0, 0, 1], [49, 39, 11, 1]], float) @ flipped.T
    low, high = corners[:, :3].min(0), corners[:, :3].max(0)
    np.testing.assert_allclose(grid.affine[:3, 3], low, atol=1e-6)
    top = grid.affine[:3, :3] @ (np.array(grid.shape) - 1) + grid.affine[:3, 3]
    assert (top >= high - np.array([1.5, 1.5, 2.0])).all()
    assert grid.array[0, 0, 0] == pytest.approx(hu[49, 0, 0])  # first RAS voxel: the flipped x axis's last


def test_eval_spacing_is_one_or_three_positive_millimetres():
    assert parse_eval_spacing(None) is None
    assert parse_eval_spacing(1.5) == (1.5, 1.5, 1.5)
    assert parse_eval_spacing(["0.8", 0.8, 2.5]) == (0.8, 0.8, 2.5)
    assert spacing_label((1.5, 1.5, 1.5)) == "1.5mm" and spacing_label((0.8, 0.8, 2.5)) == "0.8x0.8x2.5mm"
    for bad in (0, -1.5, (1.0, 2.0), ("a", 1, 1), float("nan")):
        with pytest.raises(InvalidInputError, match="eval spacing"):
            parse_eval_spacing(bad)


def _slab_datalist(tmp_path) -> str:
    """Two 1 mm CTs with a 'liver' band (60 HU) in air and a label one voxel narrower along x than the band."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    entries = []
    for i, (lo, hi) in enumerate(((10, 25), (12, 31))):
        ct = np.full((40, 36, 36), -1000.0, np.float32)
        ct[lo:hi, 8:28, 8:28] = 60.0
        label = np.zeros(ct.shape, np.uint8)
        label[lo + 1:hi, 8:28, 8:28] = 1
        nib.save(nib.Nifti1Image(ct, affine), tmp_path / f"ct{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), tmp_path / f"label{i}.nii.gz")
        entries.append({"image": f"ct{i}.nii.gz", "label": f"label{i}.nii.gz", "dataset": "slab-eval"})
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"label_maps": {"slab-eval": {"1": "liver"}}, "test": entries}))
    return str(path)


def test_evaluate_predicts_again_at_the_spacing_and_reports_both_grids(tmp_path):
    datalist = _slab_datalist(tmp_path)
    model = BandModel(roi_size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), smooth=False)
    plain = evaluate(model, datalist, progress=False)
    report = evaluate(model, datalist, progress=False, eval_spacing=2.0, out=tmp_path / "report.json")

    assert "at_eval_spacing" not in plain and "metrics_at_eval_spacing" not in plain["cases"][0]
    assert [c["metrics"] for c in report["cases"]] == [c["metrics"] for c in plain["cases"]]  # native unchanged
    at = report["at_eval_spacing"]
    assert at["spacing_mm"] == [2.0, 2.0, 2.0] and report["settings"]["eval_spacing_mm"] == [2.0, 2.0, 2.0]
    # On the 2 mm grid (every other 1 mm voxel) the model sees the band exactly: Dice of the sampled arrays.
    expected = []
    for i in range(2):
        ct = nib.load(tmp_path / f"ct{i}.nii.gz").get_fdata()[::2, ::2, ::2] > 0
        label = nib.load(tmp_path / f"label{i}.nii.gz").get_fdata()[::2, ::2, ::2] > 0
        expected.append(_dice(ct, label))
    coarse = [c["metrics_at_eval_spacing"]["liver"]["dice"] for c in report["cases"]]
    assert coarse == pytest.approx(expected, abs=1e-6)
    assert coarse != pytest.approx([c["metrics"]["liver"]["dice"] for c in report["cases"]], abs=1e-3)
    assert at["per_class"]["liver"]["dice"] == pytest.approx(np.mean(expected), abs=1e-6)
    assert at["per_dataset"]["slab-eval"]["liver"]["n"] == 2
    assert at["mean"]["dice"] == pytest.approx(at["per_class"]["liver"]["dice"])
    assert json.loads((tmp_path / "report.json").read_text())["at_eval_spacing"]["spacing_mm"] == [2.0, 2.0, 2.0]


def test_a_ct_already_at_the_spacing_is_predicted_once(tmp_path):
    datalist = _slab_datalist(tmp_path)
    model = BandModel(roi_size=(16, 16, 16), spacing=(1.0, 1.0, 1.0), smooth=False)
    evaluate(model, datalist, progress=False)
    once = model.windows_seen
    report = evaluate(model, datalist, progress=False, eval_spacing=1.0)
    assert model.windows_seen == 2 * once
    assert [c["metrics_at_eval_spacing"] for c in report["cases"]] == [c["metrics"] for c in report["cases"]]
