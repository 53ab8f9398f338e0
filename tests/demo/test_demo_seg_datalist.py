import json

import pytest

from medmoe.demo.pipeline import AORTA_CT_DATASET, REAL_CT_DATASET, real_test_datalist, seg_training_datalist
from medmoe.errors import MedMoEError
from medmoe.seg.data import load_datalist


def _write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    for split in ("training", "validation", "test"):
        for e in doc.get(split, []):
            for key in ("image", "label"):
                (path.parent / e[key]).parent.mkdir(parents=True, exist_ok=True)
                (path.parent / e[key]).touch()
    return path


CT_MAP = {"1": "spleen", "2": "kidney_right", "3": "kidney_left", "4": "gallbladder", "5": "liver", "6": "stomach",
          "7": "pancreas", "52": "aorta", "90": "brain"}
AORTA_MAP = {"1": "aorta", "2": "heart", "3": "brachiocephalic_trunk"}


def _inputs(tmp_path, ct_map, aorta_map=AORTA_MAP):
    phantoms = _write(tmp_path / "ph" / "datalist.json", {
        "label_maps": {"phantom-A": {"1": "liver", "2": "spleen"}},
        "training": [{"image": "a/i0.nii.gz", "label": "a/l0.nii.gz", "dataset": "phantom-A"}],
        "test": [{"image": "t/i0.nii.gz", "label": "t/l0.nii.gz", "dataset": "phantom-A"}]})
    real = _write(tmp_path / "ct" / "datalist.json", {
        "label_maps": {"TotalSegmentator": ct_map, "aorta-report": aorta_map},
        "training": [{"image": "example_ct.nii.gz", "label": "example_seg.nii.gz", "dataset": "TotalSegmentator"},
                     {"image": "aorta/ct.nii.gz", "label": "aorta/label.nii.gz", "dataset": "aorta-report"}],
        "test": [{"image": "dicom/ct.nii.gz", "label": "dicom/seg.nii.gz", "dataset": "TotalSegmentator"}]})
    return phantoms, real


def test_both_real_cts_join_training_as_partially_labelled_datasets(tmp_path):
    phantoms, real = _inputs(tmp_path, CT_MAP)
    out = seg_training_datalist(phantoms, real, tmp_path / "runs" / "seg-train.json")
    doc = json.loads(out.read_text())
    assert doc["label_maps"][REAL_CT_DATASET] == {k: v for k, v in CT_MAP.items() if v != "brain"}
    assert doc["label_maps"][AORTA_CT_DATASET] == {"1": "aorta", "2": "heart"}  # the trunks are not trained
    assert [e["dataset"] for e in doc["training"]] == ["phantom-A", REAL_CT_DATASET, AORTA_CT_DATASET]
    assert doc["training"][1]["image"] == str((real.parent / "example_ct.nii.gz").resolve())
    assert [e["dataset"] for e in doc["test"]] == ["phantom-A"]  # the real test CT is never in this datalist
    assert "dicom" not in out.read_text()
    datalist = load_datalist(out)
    assert set(datalist.datasets) >= {"phantom-A", REAL_CT_DATASET, AORTA_CT_DATASET}
    assert set(datalist.class_names([REAL_CT_DATASET])) == {"liver", "spleen", "kidney_left", "kidney_right", "stomach",
                                                             "gallbladder", "pancreas", "aorta", "kidney"}
    assert set(datalist.class_names([AORTA_CT_DATASET])) == {"aorta", "heart"}


def test_real_ct_without_the_demo_organs_is_a_clear_error(tmp_path):
    phantoms, real = _inputs(tmp_path, {"1": "spleen", "5": "liver"})
    with pytest.raises(MedMoEError, match="kidney_left"):
        seg_training_datalist(phantoms, real, tmp_path / "out.json")
    phantoms, real = _inputs(tmp_path, CT_MAP, {"1": "aorta"})
    with pytest.raises(MedMoEError, match="heart"):
        seg_training_datalist(phantoms, real, tmp_path / "out.json")


def test_the_real_test_ct_is_scored_on_the_classes_trained_and_present_there(tmp_path):
    import nibabel as nib
    import numpy as np

    phantoms, real = _inputs(tmp_path, CT_MAP)
    seg = np.zeros((4, 4, 4), np.uint8)
    seg[0, 0, :3] = [5, 52, 90]  # liver, aorta and brain present; spleen, stomach ... absent
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(real.parent / "dicom" / "seg.nii.gz"))
    training = seg_training_datalist(phantoms, real, tmp_path / "runs" / "seg-train.json")
    path, classes = real_test_datalist(real, training, tmp_path / "runs" / "real-test.json")
    assert classes == ["liver", "aorta"]  # trained and present (brain: present, never trained)
    assert load_datalist(path).entries("test")[0]["image"] == str((real.parent / "dicom" / "ct.nii.gz").resolve())
