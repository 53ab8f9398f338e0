"""`medmoe seg check`: each kind of datalist problem is reported on the case at fault, with exit status 1;
`seg train` stops on missing files before it starts."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmoe.cli.main import main
from medmoe.data.volumes import write_nifti
from medmoe.errors import InvalidInputError
from medmoe.seg.check import check_datalist, quick_check
from medmoe_samples.ct.phantoms import Grid, relabel, render_phantom

LITS = {1: "liver", 2: "liver_tumour"}  # the LiTS map of label_maps.json
BTCV = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 6: "liver"}


def _case(root: Path, name: str, seed: int, labels: dict[int, str]) -> dict[str, str]:
    phantom = render_phantom((5, seed), Grid.make((12.0, 12.0, 12.0)))
    write_nifti(phantom.image, phantom.affine, root / f"{name}_ct.nii.gz")
    write_nifti(relabel(phantom, labels), phantom.affine, root / f"{name}_label.nii.gz", dtype=np.uint8)
    return {"image": f"{name}_ct.nii.gz", "label": f"{name}_label.nii.gz"}


def _datalist(root: Path) -> Path:
    doc = {"training": [{**_case(root, "lits0", 0, LITS), "dataset": "LiTS"},
                        {**_case(root, "lits1", 1, LITS), "dataset": "LiTS"},
                        {**_case(root, "btcv0", 2, BTCV), "dataset": "BTCV"}],
           "validation": [{**_case(root, "btcv1", 3, BTCV), "dataset": "BTCV"}]}
    path = root / "datalist.json"
    path.write_text(json.dumps(doc))
    return path


def _recompressed_copy(src: Path, dst: Path) -> None:
    """The same voxels in a file with other bytes (another gzip level), as a re-saved copy would be."""
    dst.write_bytes(gzip.compress(gzip.decompress(src.read_bytes()), compresslevel=1))
    assert dst.read_bytes() != src.read_bytes()


def _other_shape(root: Path, doc: dict) -> tuple[str, str]:
    path = root / doc["training"][0]["label"]
    image = nib.load(str(path))
    write_nifti(np.asarray(image.dataobj)[:-2], image.affine, path, dtype=np.uint8)
    return "training", "label shape (22, 20, 16) differs from the image's (24, 20, 16)"


def _flipped_affine(root: Path, doc: dict) -> tuple[str, str]:
    path = root / doc["training"][1]["label"]
    image = nib.load(str(path))
    write_nifti(np.asarray(image.dataobj), image.affine @ np.diag([-1, 1, 1, 1]), path, dtype=np.uint8)
    return "training", "label affine does not agree with the image's: axis i flipped (LAS vs RAS) onto another grid"


def test_a_label_stored_with_an_axis_reversed_on_the_image_grid_is_a_warning(tmp_path, capsys):
    """TotalSegmentator's NIfTI labels of its DICOM example store the rows reversed: same voxels, read aligned."""
    path = _datalist(tmp_path)
    doc = json.loads(path.read_text())
    label = tmp_path / doc["training"][1]["label"]
    image = nib.load(str(label))
    reverse_i = np.array([[-1, 0, 0, image.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    write_nifti(np.asarray(image.dataobj)[::-1], image.affine @ reverse_i, label, dtype=np.uint8)
    assert main(["seg", "check", str(path), "--no-progress"]) == 0
    assert "label stored with axis i reversed (LAS vs RAS) on the image's grid" in capsys.readouterr().out
    report = check_datalist(path, progress=False)
    assert [c.status for c in report.cases].count("warning") == 1 and not any(c.errors for c in report.cases)


def _value_outside_map(root: Path, doc: dict) -> tuple[str, str]:
    path = root / doc["training"][0]["label"]
    image = nib.load(str(path))
    data = np.asarray(image.dataobj).copy()
    data[0, 0, 0] = 7
    write_nifti(data, image.affine, path, dtype=np.uint8)
    return "training", "label value(s) [7] are not in the LiTS label map (expected 0 or 1..2)"


def _duplicate_across_datasets(root: Path, doc: dict) -> tuple[str, str]:
    _recompressed_copy(root / doc["training"][0]["image"], root / "copy_ct.nii.gz")
    shutil.copy(root / doc["training"][2]["label"], root / "copy_label.nii.gz")
    doc["training"].append({"image": "copy_ct.nii.gz", "label": "copy_label.nii.gz", "dataset": "BTCV"})
    return "training", "lits0_ct.nii.gz of dataset LiTS (training)"


def _train_validation_overlap(root: Path, doc: dict) -> tuple[str, str]:
    _recompressed_copy(root / doc["training"][2]["image"], root / "again_ct.nii.gz")
    doc["validation"].append({"image": "again_ct.nii.gz", "label": doc["training"][2]["label"], "dataset": "BTCV"})
    return "validation", "in training (a validation/training overlap)"


def _unreadable_file(root: Path, doc: dict) -> tuple[str, str]:
    path = root / doc["validation"][0]["image"]
    path.write_bytes(path.read_bytes()[:200])
    return "validation", "unreadable image"


PROBLEMS = {"label of another shape": _other_shape, "flipped label affine": _flipped_affine,
            "label value outside the map": _value_outside_map,
            "case duplicated across datasets": _duplicate_across_datasets,
            "training/validation overlap": _train_validation_overlap, "unreadable file": _unreadable_file}


def test_a_clean_datalist_passes(tmp_path, capsys):
    path = _datalist(tmp_path)
    assert main(["seg", "check", str(path), "--no-progress", "--json", str(tmp_path / "report.json")]) == 0
    assert "4 case(s): 4 ok, 0 with warnings only, 0 with errors" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert [c["status"] for c in report["per_case"]] == ["ok"] * 4
    assert report["per_case"][0]["label_values"][0] == 0 and report["per_case"][0]["shape"] == [24, 20, 16]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_each_problem_is_an_error_on_the_case_at_fault(problem, tmp_path, capsys):
    path = _datalist(tmp_path)
    doc = json.loads(path.read_text())
    split, message = PROBLEMS[problem](tmp_path, doc)
    path.write_text(json.dumps(doc))
    assert main(["seg", "check", str(path), "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert message in printed
    report = check_datalist(path, progress=False)
    bad = [c for c in report.cases if c.errors]
    assert any(c.split == split and any(message in e for e in c.errors) for c in bad)
    duplicate = problem in ("case duplicated across datasets", "training/validation overlap")
    assert len(bad) == (2 if duplicate else 1)  # a duplicate marks both copies
    assert all(c.status == "ok" for c in report.cases if c not in bad)


def test_train_stops_on_missing_files_before_it_starts(tmp_path, capsys):
    path = _datalist(tmp_path)
    assert quick_check(path) == 4
    (tmp_path / "lits1_label.nii.gz").unlink()
    (tmp_path / "btcv1_ct.nii.gz").unlink()
    with pytest.raises(InvalidInputError, match=r"2 missing file\(s\)") as err:
        quick_check(path)
    assert "lits1_label.nii.gz does not exist" in str(err.value) and "btcv1_ct.nii.gz" in str(err.value)
    rc = main(["seg", "train", "--data", str(path), "--out", str(tmp_path / "run"), "--steps", "1",
               "--set", "text.model=tiny-bert", "--no-pretrained", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "lits1_label.nii.gz does not exist" in err and f"medmoe seg check {path}" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
