"""Whole-CT prediction: native grid round trip, DICOM input, sliding window vs direct pass, post-processing,
clear errors, and the `medmoe seg predict / eval` commands on a saved mome-nano."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from testkit.seg import TOTALSEG_SKIP, BandModel, phantom_datalist, totalseg_datalist

from medmoe.cli.main import main
from medmoe.data.volumes import read_ct, read_label, write_nifti
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.data import load_datalist
from medmoe.seg.evaluate import label_on_image_grid
from medmoe.seg.metrics import case_metrics
from medmoe.seg.postprocess import postprocess_masks
from medmoe.seg.predict import SegPrediction, predict_volume, save_prediction, sliding_window_probabilities

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory):
    """A phantom-B training case: stored LPS at 3.2 x 3.2 x 2.5 mm, labels aorta among others."""
    datalist = load_datalist(phantom_datalist(tmp_path_factory))
    entry = next(e for e in datalist.entries("training") if e["dataset"] == "phantom-B")
    return entry, datalist.template


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    """mome-nano at a coarse 8 mm spacing (a whole phantom is a couple of 32^3 windows), caching only the
    prompt embeddings of the classes these tests use; saved once for the CLI."""
    import medmoe

    torch.manual_seed(0)
    model = medmoe.create_model("mome-nano", spacing=(8.0, 8.0, 8.0),
                                classes=["liver", "spleen", "kidney_right", "kidney_tumour"])
    return model, model.save_pretrained(tmp_path_factory.mktemp("nano") / "mome-nano")


def _blob_ct(tmp_path):
    """An LPS-stored, anisotropic CT: soft tissue with a bright off-centre ellipsoid (the only "bone")."""
    shape, spacing = (60, 44, 26), (2.2, 1.7, 3.1)
    ijk = np.indices(shape).astype(float)
    body = ((ijk[0] - 30) / 27) ** 2 + ((ijk[1] - 22) / 20) ** 2 < 1
    blob = ((ijk[0] - 16) / 6) ** 2 + ((ijk[1] - 30) / 7) ** 2 + ((ijk[2] - 8) / 4) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0)
    hu[blob] = 600.0
    hu += np.random.default_rng(0).normal(0, 5, shape)
    affine = np.array([[-spacing[0], 0, 0, 60.0], [0, -spacing[1], 0, 25.0], [0, 0, spacing[2], -40.0], [0, 0, 0, 1]])
    path = write_nifti(np.rint(hu).astype(np.int16), affine, tmp_path / "blob_ct.nii.gz")
    return path, blob


def test_prediction_is_on_the_input_grid_and_lands_on_the_structure(tmp_path):
    path, blob = _blob_ct(tmp_path)
    model = BandModel(spacing=(3.0, 3.0, 3.0), smooth=False)
    # "fat" is no template class: free text, which the stand-in model segments by its HU band
    pred = predict_volume(model, path, ["bone", "fat"], return_probabilities=True, allow_free_text=True)
    source = nib.load(path)
    assert nib.aff2axcodes(source.affine) == ("L", "P", "S")  # the model runs in RAS at 3 mm, the file is LPS
    assert pred.masks.shape == (2, *source.shape) and pred.masks.dtype == bool
    assert pred.probabilities.shape == (2, *source.shape)
    assert 0 <= pred.probabilities.min() <= pred.probabilities.max() <= 1
    out = tmp_path / "pred.nii.gz"
    info = save_prediction(pred, out, probabilities=True, summary=tmp_path / "summary.json")
    written = nib.load(out)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    labels = np.asarray(written.dataobj)
    # the bright blob comes back where it is in the file (the round trip through RAS and 3 mm is exact enough)
    spacing = read_ct(path).spacing
    dice = case_metrics(pred.masks[:1], blob[None], spacing, ["bone"])["bone"]["dice"]
    assert dice > 0.85
    assert case_metrics(pred.masks[:1], blob[None, ::-1, ::-1], spacing, ["bone"])["bone"]["dice"] < 0.2
    # at the file's own spacing only the reorientation to RAS and back remains: voxel-exact
    same = predict_volume(BandModel(spacing=spacing, smooth=False), path, ["bone"])
    np.testing.assert_array_equal(same.masks[0], blob)
    # value i = prompt i; "fat" (prompt 2) finds nothing in this volume
    np.testing.assert_array_equal(labels == 1, pred.masks[0] & ~pred.masks[1])
    prob = nib.load(info["classes"][0]["probability_map"])
    assert prob.shape == source.shape and np.asarray(prob.dataobj).dtype == np.float32
    assert np.asarray(prob.dataobj)[blob].mean() > 0.9 and np.asarray(prob.dataobj)[~blob].mean() < 0.05
    summary = json.loads((tmp_path / "summary.json").read_text())
    voxel_ml = abs(np.linalg.det(source.affine[:3, :3])) / 1000
    assert summary["classes"][0]["volume_ml"] == pytest.approx(pred.masks[0].sum() * voxel_ml, rel=1e-4)
    assert summary["classes"][0]["volume_ml"] == pytest.approx(blob.sum() * voxel_ml, rel=0.3)
    assert [r["label_value"] for r in summary["classes"]] == [1, 2]


def test_dicom_series_input_on_the_real_ct(tmp_path_factory, tmp_path):
    datalist = totalseg_datalist(tmp_path_factory)
    if datalist is None:
        pytest.skip(TOTALSEG_SKIP)
    root = datalist.parent
    model = BandModel(spacing=(3.0, 3.0, 3.0), bands_hu={"liver": (70.0, 130.0)})
    pred = predict_volume(model, root / "example_ct_dicom", ["liver"])
    ct = read_ct(root / "example_ct_dicom")
    assert pred.masks.shape == (1, 512, 512, 20)
    np.testing.assert_allclose(pred.affine, ct.affine)
    out = save_prediction(pred, tmp_path / "liver.nii.gz")["output"]
    np.testing.assert_allclose(nib.load(out).affine, ct.affine, atol=1e-6)
    # TotalSegmentator's liver (stored with flipped rows) agrees with the band prediction once on the CT grid
    template = ClassTemplate.default()
    ids = label_on_image_grid(read_label(root / "example_seg_dicom.nii.gz"), ct)
    reference = template.multi_hot(ids, "TotalSegmentator", ["liver"])
    assert case_metrics(pred.masks, reference, ct.spacing, ["liver"])["liver"]["dice"] > 0.7


def _volume(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, 1, *shape), generator=g)


def test_sliding_window_equals_a_direct_pass_on_a_volume_that_fits():
    model = BandModel(roi_size=(32, 32, 32)).eval()
    x = _volume((32, 32, 32))
    emb = model.embed_prompts(["liver", "aorta", "fat"])
    stitched = sliding_window_probabilities(model, x[0], emb, (32, 32, 32), overlap=0.5)
    direct = torch.sigmoid(model(x, text_emb=emb))[0]
    assert model.windows_seen == 2 and stitched.shape == direct.shape == (3, 32, 32, 32)
    torch.testing.assert_close(stitched, direct, atol=1e-6, rtol=0)


def test_overlapping_windows_stitch_to_the_direct_pass_of_a_voxelwise_model():
    model = BandModel(roi_size=(32, 32, 32), smooth=False, sharpness=10.0).eval()
    x = _volume((70, 45, 40), seed=1)
    emb = model.embed_prompts(["liver", "bone"])
    stitched = sliding_window_probabilities(model, x[0], emb, (32, 32, 32), overlap=0.5, sw_batch_size=3)
    assert model.windows_seen == 4 * 2 * 2  # overlapping windows along every axis
    torch.testing.assert_close(stitched, torch.sigmoid(model(x, text_emb=emb))[0], atol=1e-5, rtol=0)


def test_windows_blended_in_slabs_on_their_device_equal_windows_copied_one_by_one(monkeypatch):
    """Windows running on another device than the stitched volume (a GPU and the CPU) are blended there in
    slabs that fit the memory budget, then copied once per slab; here the CPU is made to count as both."""
    import medmoe.seg.predict as predict

    model = BandModel(roi_size=(32, 32, 32)).eval()  # smoothed: a voxel's windows disagree near their edges
    x = _volume((70, 45, 40), seed=1)
    emb = model.embed_prompts(["liver", "bone", "fat"])
    one_by_one = sliding_window_probabilities(model, x[0], emb, (32, 32, 32), overlap=0.5)
    plans = []
    plan = predict.stitch_buffer
    monkeypatch.setattr(predict, "stitch_buffer", lambda *args: plans.append(plan(*args)) or plans[-1])
    monkeypatch.setattr(predict, "_same_device", lambda a, b: False)
    two_rows = 4 * 3 * 45 * 40 * (32 + 16)  # float32, K = 3, across the longest axis, 2 rows of windows deep
    slabs = sliding_window_probabilities(model, x[0], emb, (32, 32, 32), overlap=0.5, buffer_bytes=two_rows)
    assert plans == [(2, 0)]
    torch.testing.assert_close(slabs, one_by_one, atol=1e-6, rtol=0)


def test_stitch_buffer_fits_the_budget_or_is_not_used():
    from medmoe.seg.predict import stitch_buffer

    row = 4 * 3 * 45 * 40 * 32  # one row of windows across the 70-voxel axis, K = 3
    assert stitch_buffer((70, 45, 40), (32, 32, 32), 0.5, 3, row - 1) is None
    assert stitch_buffer((70, 45, 40), (32, 32, 32), 0.5, 3, row) == (1, 0)
    assert stitch_buffer((70, 45, 40), (32, 32, 32), 0.5, 3, 10 * row) == (4, 0)  # the whole volume: 4 rows
    assert stitch_buffer((20, 20, 50), (32, 32, 32), 0.25, 1, 4 * 32 * 32 * 32) == (1, 2)  # padded to the window


def test_mome_nano_sliding_window_equals_its_direct_pass(nano):
    model = nano[0].eval()
    x = _volume((32, 32, 32), seed=2)
    emb = model.embed_prompts(["liver", "right kidny"])
    with torch.no_grad():
        direct = torch.sigmoid(model(x, text_emb=emb))[0]
    stitched = sliding_window_probabilities(model, x[0], emb, model.config.roi_size, overlap=0.5)
    torch.testing.assert_close(stitched, direct, atol=1e-5, rtol=1e-5)


def test_postprocessing_keeps_the_largest_organ_piece_and_lesions_inside_organs():
    template = ClassTemplate.default()
    masks = np.zeros((4, 20, 20, 20), bool)
    masks[0, 2:10, 2:10, 2:10] = True  # liver
    masks[0, 15:17, 15:17, 15:17] = True  # a stray liver blob
    masks[1, 4:6, 4:6, 4:6] = True  # liver tumour inside
    masks[1, 12:14, 12:14, 12:14] = True  # liver tumour outside the liver
    masks[2, 12:18, 2:8, 2:8] = True  # kidney_left
    masks[3, 13:15, 3:5, 3:5] = True  # kidney tumour inside the left kidney
    masks[3, 2:4, 15:17, 15:17] = True  # and one outside
    out = postprocess_masks(masks, ["liver", "liver_tumour", "kidney_left", "kidney_tumour"], template)
    assert out[0].sum() == 512 and not out[0, 15:17, 15:17, 15:17].any()
    assert out[1].sum() == 8 and out[1, 4:6, 4:6, 4:6].all()
    assert out[2].sum() == masks[2].sum()
    assert out[3].sum() == 8 and out[3, 13:15, 3:5, 3:5].all()
    # without the parent organ among the prompts a lesion is left as predicted
    alone = postprocess_masks(masks[1:2], ["liver_tumour"], template)
    np.testing.assert_array_equal(alone, masks[1:2])
    # the label map: value i = prompt i, later prompts win
    pred = SegPrediction(masks=out, affine=np.eye(4), prompts=["a", "b", "c", "d"], classes=[None] * 4)
    labels = pred.label_map()
    assert labels[5, 5, 5] == 2 and labels[3, 3, 3] == 1 and labels[14, 4, 4] == 4 and labels[13, 7, 7] == 3


def test_clear_errors_for_bad_inputs(tmp_path, phantom_case):
    entry, _ = phantom_case
    model = BandModel()
    with pytest.raises(InvalidInputError, match="prompt list is empty"):
        predict_volume(model, entry["image"], [])
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(png)
    with pytest.raises(InvalidInputError, match="not a CT volume format"):
        predict_volume(model, png, ["liver"])
    mr = tmp_path / "mr"
    mr.mkdir()
    for k in range(2):
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.save_as(mr / f"{k}.dcm")
    with pytest.raises(InvalidInputError, match="Modality is 'MR'"):
        predict_volume(model, mr, ["liver"])
    flat = write_nifti(np.full((40, 40), -100, np.int16), np.eye(4), tmp_path / "flat.nii.gz")
    with pytest.raises(InvalidInputError, match="2-D image"):
        predict_volume(model, flat, ["liver"])
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(CorruptFileError, match="broken.nii.gz"):
        predict_volume(model, broken, ["liver"])
    with pytest.raises(InvalidInputError, match="threshold"):
        predict_volume(model, entry["image"], ["liver"], threshold=1.5)


def test_cli_predict_and_eval_with_a_saved_mome_nano(nano, phantom_case, tmp_path, tmp_path_factory, capsys):
    entry, _ = phantom_case
    nano_dir = nano[1]
    out = tmp_path / "mask.nii.gz"
    code = main(["seg", "predict", "--model", str(nano_dir), "--input", entry["image"], "--prompt", "liver",
                 "--prompt", "spleen", "--out", str(out), "--probabilities", "--summary", str(tmp_path / "s.json"),
                 "--overlay", str(tmp_path / "o.png"), "--overlap", "0.25", "--no-progress"])
    assert code == 0
    source = nib.load(entry["image"])
    written = nib.load(out)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [r["class"] for r in summary["classes"]] == ["liver", "spleen"]
    assert summary["model_spacing_mm"] == [8.0, 8.0, 8.0]
    assert (tmp_path / "o.png").stat().st_size > 1000
    assert len(list(tmp_path.glob("mask_prob_*.nii.gz"))) == 2
    assert "wrote" in capsys.readouterr().out

    metrics = tmp_path / "metrics.json"
    code = main(["seg", "eval", "--model", str(nano_dir), "--data", str(phantom_datalist(tmp_path_factory)),
                 "--out", str(metrics), "--split", "test", "--class", "liver", "--class", "kidney tumor",
                 "--overlays", str(tmp_path / "overlays"), "--overlap", "0", "--max-cases", "1", "--no-progress"])
    assert code == 0
    report = json.loads(metrics.read_text())
    assert set(report["per_class"]) == {"liver", "kidney_tumour"}
    assert len(report["cases"]) == 1 and report["cases"][0]["dataset"] == "synthetic-phantom"
    assert set(report["cases"][0]["metrics"]["liver"]) >= {"dice", "hd95", "nsd", "gt_voxels", "pred_voxels"}
    assert set(report["tumour_detection"]) == {"kidney_tumour"}
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 1

    # errors reach the user as one clear line and exit code 1
    code = main(["seg", "predict", "--model", str(nano_dir), "--input", entry["image"], "--out", str(out)])
    assert code == 1 and "prompt list is empty" in capsys.readouterr().err
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(png)
    code = main(["seg", "predict", "--model", str(nano_dir), "--input", str(png), "--prompt", "liver", "--out", str(out)])
    assert code == 1 and "not a CT volume" in capsys.readouterr().err



def test_separable_resampling_equals_monai_and_handles_oblique_grids():
    from medmoe.seg.resample import _monai_resample, resample_to_grid

    rng = np.random.default_rng(0)
    x = rng.random((2, 20, 18, 12)).astype(np.float32)
    src = np.array([[3.0, 0, 0, -30], [0, 3.0, 0, -20], [0, 0, 3.0, -10], [0, 0, 0, 1]])
    # flips, other spacings, an origin that leaves part of the destination outside the source
    dst = np.array([[-1.1, 0, 0, 40], [0, -0.9, 0, 35], [0, 0, 2.3, -12], [0, 0, 0, 1]])
    for mode in ("nearest", "linear"):
        ours = resample_to_grid(x, src, dst, (60, 70, 18), mode)
        np.testing.assert_allclose(ours, _monai_resample(x, src, dst, (60, 70, 18), mode), atol=1e-5)
    assert (ours == 0).any() and ours.max() > 0.9  # zeros outside, values inside
    labels = (x > 0.5).astype(np.uint8)
    assert resample_to_grid(labels, src, dst, (60, 70, 18), "nearest").dtype == np.uint8
    # a rotated (oblique) destination falls back to MONAI and still lands the values
    c, s = np.cos(0.3), np.sin(0.3)
    oblique = np.array([[3 * c, -3 * s, 0, -25], [3 * s, 3 * c, 0, -22], [0, 0, 3.0, -10], [0, 0, 0, 1]])
    out = resample_to_grid(x, src, oblique, (20, 18, 12), "linear")
    assert out.shape == (2, 20, 18, 12) and 0.2 < out[out > 0].mean() < 0.8


def test_masks_are_thresholded_after_resampling_the_probabilities_to_the_input_grid():
    """A sphere predicted as a one-voxel probability ramp on a 6 mm grid comes back on a 2 mm (LPS) input grid
    with its true boundary; thresholding on the 6 mm grid and copying nearest voxels back made a staircase."""
    from medmoe.data.volumes import Volume
    from medmoe.seg.predict import probabilities_to_native
    from medmoe.seg.resample import resample_to_grid

    radius = 13.0

    def grid(spacing, n, signs=(1, 1, 1)):
        affine = np.diag([*(np.array(signs) * spacing), 1.0])
        affine[:3, 3] = -affine[:3, :3] @ np.full(3, (n - 1) / 2)
        centres = np.einsum("ij,j...->i...", affine[:3, :3], np.indices((n, n, n))) + affine[:3, 3, None, None, None]
        return affine, np.linalg.norm(centres, axis=0)

    coarse, r_coarse = grid(6.0, 16)
    fine, r_fine = grid(2.0, 48, signs=(-1, -1, 1))
    probs = torch.from_numpy(np.clip(0.5 + (radius - r_coarse) / 6.0, 0, 1)[None].astype(np.float32))
    volume = Volume(array=np.zeros((48, 48, 48), np.int16), affine=fine, path="sphere")
    masks, kept = probabilities_to_native(probs, coarse, volume, 0.5, keep_probabilities=True)
    truth = r_fine < radius
    assert masks.shape == (1, 48, 48, 48) and masks.dtype == bool and kept.shape == (1, 48, 48, 48)

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    staircase = resample_to_grid((probs.numpy() > 0.5).astype(np.uint8), coarse, fine, truth.shape, "nearest")[0] > 0
    assert dice(masks[0], truth) > 0.95 and dice(staircase, truth) < 0.9
    np.testing.assert_array_equal(masks, kept > 0.5)


def test_a_constant_probability_stays_constant_at_every_native_voxel_including_the_far_edges():
    """The model grid ends at the last native voxel centre rounded to its spacing, so the input's outermost
    voxels lie up to half a model voxel beyond it. Their coordinates are clamped inside the model grid's
    footprint, so a constant 1 reads 1 there too; linear resampling with zero padding reads 0.67 on the last
    native slice."""
    from medmoe.data.volumes import Volume
    from medmoe.seg.predict import preprocess_volume, probabilities_to_native
    from medmoe.seg.resample import resample_to_grid

    spacing = (1.1, 0.7, 2.5)  # extents 39.6 x 15.4 x 25 mm: 13.2 x 5.1 x 8.3 model voxels, rounded down
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS, like a DICOM series
    affine[:3, 3] = (40.0, 25.0, -60.0)
    volume = Volume(array=np.zeros((37, 23, 11), np.float32), affine=affine, path="grid")
    image = preprocess_volume(volume, (3.0, 3.0, 3.0))
    processed = image.affine.numpy()
    ones = torch.ones((2, *image.shape[1:]))
    masks, kept = probabilities_to_native(ones, processed, volume, 0.5, keep_probabilities=True)
    assert masks.all()
    np.testing.assert_allclose(kept, 1.0, atol=1e-6)
    # zero padding (the default) loses the far edges; points beyond the footprint read 0 even with the border
    zero_padded = resample_to_grid(ones[:1], processed, affine, volume.shape, "linear")[0]
    assert zero_padded[:, :, -1].max() < 0.7 and zero_padded.min() < 0.5  # 0.67 on the last native slice
    shifted = affine.copy()
    shifted[2, 3] += 10 * spacing[2]  # starts 10 slices up: its last slices lie beyond the model grid
    beyond = resample_to_grid(ones[:1], processed, shifted, volume.shape, "linear", padding="border")[0]
    assert (beyond[:, :, -1] == 0).all() and (beyond[:, :, 0] == 1).all()
    with pytest.raises(InvalidInputError, match="padding"):
        resample_to_grid(ones[:1], processed, affine, volume.shape, "linear", padding="reflect")
    # the oblique (MONAI) path clamps the same way
    c, s = np.cos(0.2), np.sin(0.2)
    oblique = affine.copy()
    oblique[:2, :2] = np.array([[c, -s], [s, c]]) @ affine[:2, :2]
    inside = resample_to_grid(ones[:1], processed, oblique, volume.shape, "linear", padding="border")[0]
    assert set(np.unique(inside)) <= {0.0, 1.0} and inside.mean() > 0.5
