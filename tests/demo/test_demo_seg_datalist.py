import json

import pytest

from medmoe.demo.pipeline import REAL_CT_DATASET, seg_training_datalist
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


def _inputs(tmp_path, ct_map):
    phantoms = _write(tmp_path / "ph" / "datalist.json", {
        "label_maps": {"phantom-A": {"1": "liver", "2": "spleen"}},
        "training": [{"image": "a/i0.nii.gz", "label": "a/l0.nii.gz", "dataset": "phantom-A"}],
        "test": [{"image": "t/i0.nii.gz", "label": "t/l0.nii.gz", "dataset": "phantom-A"}]})
    real = _write(tmp_path / "ct" / "datalist.json", {
        "label_maps": {"TotalSegmentator": ct_map},
        "training": [{"image": "example_ct.nii.gz", "label": "example_seg.nii.gz", "dataset": "TotalSegmentator"}]})
    return phantoms, real


def test_real_ct_joins_training_as_its_own_partially_labelled_dataset(tmp_path):
    ct_map = {"1": "spleen", "2": "kidney_right", "3": "kidney_left", "5": "liver", "6": "stomach", "90": "brain"}
    phantoms, real = _inputs(tmp_path, ct_map)
    out = seg_training_datalist(phantoms, real, tmp_path / "runs" / "seg-train.json")
    doc = json.loads(out.read_text())
    assert doc["label_maps"][REAL_CT_DATASET] == {"1": "spleen", "2": "kidney_right", "3": "kidney_left", "5": "liver"}
    assert [e["dataset"] for e in doc["training"]] == ["phantom-A", REAL_CT_DATASET]
    assert doc["training"][1]["image"] == str((real.parent / "example_ct.nii.gz").resolve())
    assert [e["dataset"] for e in doc["test"]] == ["phantom-A"]
    datalist = load_datalist(out)
    assert set(datalist.datasets) >= {"phantom-A", REAL_CT_DATASET}
    assert set(datalist.class_names([REAL_CT_DATASET])) == {"liver", "spleen", "kidney_left", "kidney_right",
                                                                  "kidney"}  # the union of both kidneys


def test_real_ct_without_the_demo_organs_is_a_clear_error(tmp_path):
    phantoms, real = _inputs(tmp_path, {"1": "spleen", "5": "liver"})
    with pytest.raises(MedMoEError, match="kidney_left"):
        seg_training_datalist(phantoms, real, tmp_path / "out.json")
