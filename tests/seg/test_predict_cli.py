"""`medmoe seg predict` as a CT user runs it: folders of cases, per-class masks, DICOM-SEG, output checks
before any inference, thin slabs, `--prompt all`, `seg classes`, unknown prompts, --fast and --device auto.

Content checks use the stand-in BandModel (class = HU band, deterministic) loaded in place of the saved
model; one saved mome-nano (random text weights) runs the real loading path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from testkit.seg import BandModel, write_dicom_series

import medmoe.saved_model
from medmoe.cli.main import main
from medmoe.data.volumes import Volume, read_ct, write_nifti
from medmoe.errors import InvalidInputError
from medmoe.seg.cases import find_cases
from medmoe.seg.predict import (
    pad_to_window,
    predict_volume,
    preprocess_volume,
    save_prediction,
    sliding_window_probabilities,
)

pytestmark = pytest.mark.timeout(180)

SPACING = (4.0, 4.0, 5.0)
BANDS = {"liver": (60.0, 200.0), "liver_tumour": (125.0, 200.0)}  # the tumour band lies inside the liver band


def body_ct(shape=(40, 36, 20), seed=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU volume: air, a soft-tissue body (20 HU), a 100 HU "liver" box holding a 150 HU "tumour" box."""
    ijk = np.indices(shape).astype(float)
    body = ((ijk[0] - shape[0] / 2) / (shape[0] / 2 - 2)) ** 2 + ((ijk[1] - shape[1] / 2) / (shape[1] / 2 - 2)) ** 2 < 1
    hu = np.where(body, 20.0, -1000.0)
    liver = np.zeros(shape, bool)
    liver[8:26, 8:24, 3:17] = True
    tumour = np.zeros(shape, bool)
    tumour[13:19, 12:18, 7:12] = True
    hu[liver] = 100.0
    hu[tumour] = 150.0
    hu += np.random.default_rng(seed).normal(0, 2, shape)
    return np.rint(hu), liver, tumour


def nifti_case(path: Path, seed=0) -> Path:
    hu, _, _ = body_ct(seed=seed)
    affine = np.diag([*SPACING, 1.0])
    return write_nifti(hu.astype(np.int16), affine, path)


def fake_model_dir(tmp_path: Path, classes=("liver", "liver_tumour")) -> Path:
    """A model folder whose config the checks read; ``load_model`` is patched to return a BandModel."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mome", "classes": list(classes)}))
    return folder


@pytest.fixture
def band_model(monkeypatch):
    """``medmoe.saved_model.load_model`` returns one BandModel (3 mm, 32^3 windows); the list records the loads."""
    loads = []
    model = BandModel(spacing=(3.0, 3.0, 3.0), smooth=False, bands_hu=BANDS)

    def load(directory, device=None):
        loads.append(str(directory))
        return model

    monkeypatch.setattr(medmoe.saved_model, "load_model", load)
    return model, loads


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the model is loaded."""
    def load(directory, device=None):
        raise AssertionError("the model was loaded: the check did not run before inference")

    monkeypatch.setattr(medmoe.saved_model, "load_model", load)


@pytest.fixture(scope="module")
def saved_nano(tmp_path_factory):
    """A saved mome-nano (random text weights, 8 mm: a case is one or two 32^3 windows)."""
    import medmoe

    torch.manual_seed(0)
    model = medmoe.create_model("mome-nano", spacing=(8.0, 8.0, 8.0), pretrained=False,
                                classes=["liver", "spleen", "kidney_right", "liver_tumour"])
    return model.save_pretrained(tmp_path_factory.mktemp("nano") / "mome-nano")


def predict(*args: str) -> int:
    return main(["seg", "predict", *args, "--no-progress"])


# ----------------------------------------------------------------------------------------------- cases
def test_a_folder_of_mixed_cases_writes_one_output_per_case_and_reports_a_corrupt_one(saved_nano, tmp_path, capsys):
    cases = tmp_path / "cases"
    nifti_case(cases / "ct_a.nii.gz")
    nifti_case(cases / "ct_b.nii", seed=1)
    write_dicom_series(cases / "ct_c", body_ct(seed=2)[0], spacing=SPACING)
    (cases / "broken.nii.gz").write_bytes(b"\x1f\x8b not a NIfTI")
    (cases / "README.txt").write_text("not a case")
    assert [c.name for c in find_cases(cases).cases] == ["broken", "ct_a", "ct_b", "ct_c"]

    out = tmp_path / "pred"
    code = predict("--model", str(saved_nano), "--input", str(cases), "--prompt", "liver", "--prompt", "livr tumor",
                   "--out", str(out), "--per-class")
    captured = capsys.readouterr()
    assert code == 1  # one case failed; the three others are written
    assert "1 case(s) failed" in captured.err and "broken" in captured.err
    for name, source in (("ct_a", cases / "ct_a.nii.gz"), ("ct_b", cases / "ct_b.nii"), ("ct_c", None)):
        written = nib.load(out / f"{name}.nii.gz")
        ct = read_ct(source or cases / "ct_c")
        assert written.shape == ct.shape
        np.testing.assert_allclose(written.affine, ct.affine, atol=1e-4)
        assert sorted(p.name for p in (out / name).iterdir()) == ["liver.nii.gz", "liver_tumour.nii.gz"]
        summary = json.loads((out / f"{name}.json").read_text())
        assert [r["class"] for r in summary["classes"]] == ["liver", "liver_tumour"]
        assert {"voxels", "volume_ml", "mean_hu", "std_hu"} <= set(summary["classes"][0])
    index = json.loads((out / "index.json").read_text())
    assert [c["case"] for c in index["cases"]] == ["ct_a", "ct_b", "ct_c"]
    assert [f["case"] for f in index["failed"]] == ["broken"]
    assert index["ignored"] == [str(cases / "README.txt")]
    assert not (out / "broken.nii.gz").exists()


def test_case_discovery_rules(tmp_path):
    series = write_dicom_series(tmp_path / "series", body_ct()[0][:, :, :4], spacing=SPACING)
    one = find_cases(series)
    assert not one.folder and one.cases[0].kind == "dicom" and one.cases[0].name == "series"
    assert find_cases(nifti_case(tmp_path / "x.nii.gz")).cases[0].name == "x"
    mixed = tmp_path / "mixed"
    write_dicom_series(mixed, body_ct()[0][:, :, :3], spacing=SPACING)
    nifti_case(mixed / "y.nii.gz")
    with pytest.raises(InvalidInputError, match="both DICOM slices"):
        find_cases(mixed)
    clash = tmp_path / "clash"
    nifti_case(clash / "a.nii.gz")
    write_dicom_series(clash / "a", body_ct()[0][:, :, :3], spacing=SPACING)
    assert [c.name for c in find_cases(clash).cases] == ["a", "a-2"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no CT found"):
        find_cases(tmp_path / "empty")


# ----------------------------------------------------------------------------------------------- outputs
def test_per_class_masks_keep_a_tumour_inside_its_organ(band_model, tmp_path):
    ct = nifti_case(tmp_path / "ct.nii.gz")
    code = predict("--model", str(fake_model_dir(tmp_path)), "--input", str(ct), "--prompt", "liver",
                   "--prompt", "liver tumor", "--out", str(tmp_path / "mask.nii.gz"), "--per-class",
                   "--summary", str(tmp_path / "s.json"))
    assert code == 0
    liver = np.asarray(nib.load(tmp_path / "mask" / "liver.nii.gz").dataobj)
    tumour = np.asarray(nib.load(tmp_path / "mask" / "liver_tumour.nii.gz").dataobj)
    labels = np.asarray(nib.load(tmp_path / "mask.nii.gz").dataobj)
    assert liver.dtype == np.uint8 and tumour.sum() > 50
    assert np.all(liver[tumour > 0] == 1)  # both present where they overlap
    assert np.all(labels[tumour > 0] == 2)  # the label map can hold only one: the later prompt
    _, true_liver, true_tumour = body_ct()
    assert (liver.astype(bool) & true_liver).sum() / true_liver.sum() > 0.9
    summary = json.loads((tmp_path / "s.json").read_text())
    rows = {r["class"]: r for r in summary["classes"]}
    assert rows["liver"]["voxels"] == int(liver.sum())
    assert rows["liver"]["volume_ml"] == pytest.approx(liver.sum() * np.prod(SPACING) / 1000, rel=1e-3)
    assert 140 < rows["liver_tumour"]["mean_hu"] < 155 and 95 < rows["liver"]["mean_hu"] < 115
    assert summary["files"]["per_class"]["liver"] == str(tmp_path / "mask" / "liver.nii.gz")


def test_dicom_seg_round_trips_through_pydicom(band_model, tmp_path):
    hu, _, _ = body_ct()
    series = write_dicom_series(tmp_path / "series", hu, spacing=SPACING, origin=(-80.0, -70.0, 300.0))
    out = tmp_path / "seg.dcm"
    code = predict("--model", str(fake_model_dir(tmp_path)), "--input", str(series), "--prompt", "liver",
                   "--prompt", "liver_tumour", "--format", "dicom-seg", "--out", str(out), "--per-class")
    assert code == 0
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.Modality == "SEG"
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["liver", "liver_tumour"]
    assert ds.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Neoplasm"
    sources = {}
    for f in series.iterdir():
        src = pydicom.dcmread(f)
        sources[src.SOPInstanceUID] = src
    masks = {k: np.asarray(nib.load(out.with_suffix("") / f"{k}.nii.gz").dataobj) for k in ("liver", "liver_tumour")}
    # one frame per (segment, slice holding it): empty frames are omitted
    expected = sum(int(m.any(axis=(0, 1)).sum()) for m in masks.values())
    assert int(ds.NumberOfFrames) == expected
    shared = ds.SharedFunctionalGroupsSequence[0]
    first = next(iter(sources.values()))
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [float(v) for v in first.PixelSpacing]
    pixels = ds.pixel_array
    z_of = {uid: None for uid in sources}
    ct = read_ct(series)
    for uid, src in sources.items():
        z_of[uid] = int(round((float(src.ImagePositionPatient[2]) - ct.affine[2, 3]) / SPACING[2]))
    for frame, group in zip(pixels, ds.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        src = sources[uid]
        np.testing.assert_allclose([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in src.ImagePositionPatient], atol=1e-4)
        segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        name = ("liver", "liver_tumour")[segment - 1]
        np.testing.assert_array_equal(frame.astype(bool), masks[name][:, :, z_of[uid]].T.astype(bool))


def test_bad_outputs_and_prompts_fail_before_the_model_is_loaded(no_model, tmp_path, capsys):
    model = fake_model_dir(tmp_path)
    ct = nifti_case(tmp_path / "ct.nii.gz")
    cases = tmp_path / "cases"
    nifti_case(cases / "a.nii.gz")
    nifti_case(cases / "b.nii.gz")
    (tmp_path / "taken.nii.gz").write_bytes(b"an earlier result")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.nii.gz").mkdir()
    checks = [
        (["--input", str(ct), "--prompt", "liver", "--out", str(tmp_path / "taken.nii.gz")], "pass --overwrite"),
        (["--input", str(ct), "--prompt", "liver", "--out", str(tmp_path / "afile" / "m.nii.gz")], "afile is a file"),
        (["--input", str(ct), "--prompt", "liver", "--out", str(tmp_path / "afile")], "a folder is needed"),
        (["--input", str(ct), "--prompt", "liver", "--out", str(tmp_path / "adir.nii.gz")], "is a folder"),
        (["--input", str(cases), "--prompt", "liver", "--out", str(tmp_path / "m.nii.gz")], "--out must be a folder"),
        (["--input", str(cases), "--prompt", "liver", "--out", str(cases)], "is the input folder"),
        (["--input", str(ct), "--prompt", "liver", "--format", "dicom-seg", "--out", str(tmp_path / "s.dcm")],
         "needs DICOM series input"),
        (["--input", str(ct), "--prompt", "liver", "--out", str(tmp_path / "m.nii.gz"), "--format", "dicom-seg"],
         "writes a .dcm file"),
        (["--input", str(ct), "--prompt", "nosuchorgan", "--out", str(tmp_path / "m.nii.gz")], "unknown class"),
        (["--input", str(ct), "--prompt", "livr tumour", "--prompt", "spinal", "--prompt", "ribs",
          "--out", str(tmp_path / "m.nii.gz")], "unknown classes: 'spinal' (did you mean spinal_cord?); 'ribs'"),
        (["--input", str(ct), "--prompt", "liver", "--out", str(tmp_path / "m.nii.gz"), "--overlap", "1.5"], "--overlap"),
        (["--input", str(ct), "--prompt", "liver", "--out", str(tmp_path / "m.nii.gz"), "--amp", "fp16"], "needs a CUDA"),
    ]
    for args, message in checks:
        assert predict("--model", str(model), *args) == 1, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1 or "INFO" in err, err
    assert (tmp_path / "taken.nii.gz").read_bytes() == b"an earlier result"
    assert not (tmp_path / "m.nii.gz").exists()


def test_overwrite_replaces_an_existing_output(band_model, tmp_path):
    ct = nifti_case(tmp_path / "ct.nii.gz")
    out = tmp_path / "pred"
    args = ["--model", str(fake_model_dir(tmp_path)), "--input", str(ct), "--prompt", "liver", "--out", str(out)]
    assert predict(*args) == 0 and (out / "ct.nii.gz").is_file() and (out / "ct.json").is_file()
    assert predict(*args) == 1
    assert predict(*args, "--overwrite") == 0
    assert len(band_model[1]) == 2  # loaded for the first and the last run only


# ----------------------------------------------------------------------------------------------- classes
def test_prompt_all_and_the_classes_command(saved_nano, tmp_path, capsys, caplog):
    ct = nifti_case(tmp_path / "ct.nii.gz")
    with caplog.at_level(logging.INFO):
        assert predict("--model", str(saved_nano), "--input", str(ct), "--prompt", "all", "--prompt", "liver",
                       "--out", str(tmp_path / "pred"), "--per-class") == 0
    assert "--prompt all: 4 classes, the model's class set" in caplog.text
    summary = json.loads((tmp_path / "pred" / "ct.json").read_text())
    names = ["liver", "spleen", "kidney_right", "liver_tumour"]
    assert [r["class"] for r in summary["classes"]] == names  # "liver" again is not segmented twice
    assert sorted(p.stem.split(".")[0] for p in (tmp_path / "pred" / "ct").iterdir()) == sorted(names)
    capsys.readouterr()

    assert main(["seg", "classes"]) == 0
    table = capsys.readouterr().out
    liver_row = next(line for line in table.splitlines() if line.startswith("liver "))
    assert "hepar, hepatic parenchyma; labelled by BTCV, AMOS22" in liver_row and "LiTS" in liver_row
    assert main(["seg", "classes", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["classes"]}
    assert len(rows) == 135 and rows["kidney_right"]["prompt"] == "A computerized tomography of a right kidney"
    assert "KiTS" in rows["kidney_tumour"]["datasets"] and rows["kidney_tumour"]["parent"] == "kidney"
    assert main(["seg", "classes", "--dataset", "task09", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == {"1": "spleen"}
    assert main(["seg", "classes", "--dataset", "KiTS"]) == 0
    assert "    2  kidney_tumour" in capsys.readouterr().out
    assert main(["seg", "classes", "--model", str(saved_nano), "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)["classes"]] == names
    assert main(["seg", "classes", "--dataset", "nosuchdataset"]) == 1
    assert "no label map for dataset" in capsys.readouterr().err


def test_unknown_prompts_are_refused_before_inference_unless_free_text_is_allowed(tmp_path):
    model = BandModel(spacing=(3.0, 3.0, 3.0), bands_hu={"fat": (-150.0, -50.0)})
    ct = nifti_case(tmp_path / "ct.nii.gz")
    with pytest.raises(InvalidInputError, match=r"unknown class: 'spinal' \(did you mean spinal_cord\?\)"):
        predict_volume(model, ct, ["liver", "spinal"])
    with pytest.raises(InvalidInputError, match="'fat'"):
        predict_volume(model, ct, ["fat"])
    assert model.windows_seen == 0
    pred = predict_volume(model, ct, ["fat"], allow_free_text=True)
    assert pred.classes == [None] and pred.names == ["fat"] and model.windows_seen > 0


# ----------------------------------------------------------------------------------------------- geometry
def test_a_thin_slab_is_padded_with_its_edge_slices_and_warns(tmp_path, caplog):
    hu, liver, _ = body_ct()
    slab = Volume(array=np.full((40, 36, 4), 100.0, np.float32), affine=np.diag([*SPACING, 1.0]), path="slab")
    slab.array[:, :, :] = np.where(liver[:, :, 8:12], 100.0, -60.0)  # 4 slices of 5 mm: 20 mm, liver throughout
    model = BandModel(spacing=(3.0, 3.0, 3.0), smooth=True, bands_hu={"liver": (80.0, 120.0)})
    with caplog.at_level(logging.WARNING):
        pred = predict_volume(model, slab, ["liver"], check_ct=False)
    assert "thinner than the model's 32 x 32 x 32-voxel window" in caplog.text and "repeated edge slices" in caplog.text
    assert pred.meta["padded_to_window"] == "edge"
    assert predict_volume(model, slab, ["liver"], check_ct=False, pad_mode="constant").meta["padded_to_window"] == "constant"
    # the liver runs through every slice: the edge slices are found as well as the middle ones
    truth = liver[:, :, 8:12]
    found = [(pred.masks[0, :, :, z] & truth[:, :, z]).sum() / truth[:, :, z].sum() for z in range(4)]
    assert min(found) > 0.95 * max(found) and min(found) > 0.7, found
    # MONAI's own constant (zero) padding darkens the edge slices through the model's 3x3x3 filter
    image = preprocess_volume(slab, (3.0, 3.0, 3.0), (-175.0, 250.0))
    emb = model.embed_prompts(["liver"])
    zero_padded = sliding_window_probabilities(model, image, emb, (32, 32, 32))[0] > 0.5
    edge_padded = sliding_window_probabilities(model, pad_to_window(image, (32, 32, 32))[0], emb, (32, 32, 32))[0]
    edge_padded = edge_padded[:, :, 13:19] > 0.5  # 6 slices padded to 32: 13 before
    assert zero_padded[:, :, 0].sum() < 0.5 * edge_padded[:, :, 0].sum()
    image = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    padded, crop = pad_to_window(image, (4, 3, 8))
    assert padded.shape == (1, 4, 3, 8)
    torch.testing.assert_close(padded[(slice(None), *crop)], image)
    torch.testing.assert_close(padded[0, :, :, 0], padded[0, :, :, 2])  # edge values repeated, not zeros
    torch.testing.assert_close(padded[0, 0], padded[0, 1])


def test_fast_mode_runs_at_twice_the_spacing_and_comes_back_on_the_input_grid(tmp_path):
    ct = nifti_case(tmp_path / "ct.nii.gz")
    model = BandModel(spacing=(2.0, 2.0, 2.5), smooth=False, bands_hu=BANDS)
    full = predict_volume(model, ct, ["liver"])
    windows_full = model.windows_seen
    fast = predict_volume(model, ct, ["liver"], fast=True)
    assert fast.meta["model_spacing_mm"] == [4.0, 4.0, 5.0] and fast.meta["overlap"] == 0.25 and fast.meta["fast"]
    assert fast.masks.shape == full.masks.shape
    assert model.windows_seen - windows_full < windows_full
    dice = 2 * (fast.masks & full.masks).sum() / (fast.masks.sum() + full.masks.sum())
    assert dice > 0.9


def test_device_auto_picks_the_cpu_here_and_runs_fp32(band_model, tmp_path):
    from medmoe.devices import autocast_dtype, cuda_autocast_dtype, resolve_device
    from medmoe.train.optim import cuda_autocast_dtype as from_optim

    assert from_optim is cuda_autocast_dtype
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    assert autocast_dtype(torch.device("cpu")) is None
    assert cuda_autocast_dtype((8, 0)) is torch.bfloat16 and cuda_autocast_dtype((7, 5)) is torch.float16
    with pytest.raises(InvalidInputError, match="expected 'auto'"):
        resolve_device("tpu:7")
    ct = nifti_case(tmp_path / "ct.nii.gz")
    assert predict("--model", str(fake_model_dir(tmp_path)), "--input", str(ct), "--prompt", "liver",
                   "--out", str(tmp_path / "m.nii.gz"), "--summary", str(tmp_path / "s.json")) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    if expected == "cpu":
        assert summary["device"] == "cpu" and summary["autocast"] == "off"


def test_save_prediction_refuses_dicom_seg_for_a_nifti_prediction(tmp_path):
    ct = nifti_case(tmp_path / "ct.nii.gz")
    pred = predict_volume(BandModel(spacing=(3.0, 3.0, 3.0), bands_hu=BANDS), ct, ["liver"])
    with pytest.raises(InvalidInputError, match="DICOM-SEG needs a DICOM series input"):
        save_prediction(pred, tmp_path / "x.dcm")


def test_dicom_seg_of_an_anonymised_series_refers_to_the_file_meta_uids(tmp_path, caplog):
    """Anonymisers blank the UIDs in the data set (the TotalSegmentator example does): SOP Instance UIDs are
    taken from the file meta, missing study/series UIDs are generated (logged)."""
    series = write_dicom_series(tmp_path / "anon", body_ct()[0][:, :, :6], spacing=SPACING)
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ds.SOPClassUID = ds.StudyInstanceUID = ds.SeriesInstanceUID = ""
        ds.save_as(f)
    pred = predict_volume(BandModel(spacing=(3.0, 3.0, 3.0), bands_hu=BANDS), series, ["liver"])
    with caplog.at_level(logging.WARNING):
        save_prediction(pred, tmp_path / "seg.dcm")
    assert "SeriesInstanceUID, StudyInstanceUID" in caplog.text
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    metas = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID for f in series.iterdir()}
    refs = {g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for g in seg.PerFrameFunctionalGroupsSequence}
    assert refs and refs <= metas and seg.StudyInstanceUID


def test_the_format_choices_of_seg_predict_are_the_mask_formats(capsys):
    # the parser spells them out (it imports no library code); this ties the two together
    from medmoe.seg.outputs import MASK_FORMATS

    with pytest.raises(SystemExit):
        main(["seg", "predict", "--help"])
    assert "--format {" + ",".join(MASK_FORMATS) + "}" in capsys.readouterr().out
