"""The labelled evaluation sets' adapters, each on a tiny fake copy of its public layout in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmoe.data.adapters import SOURCES, import_source
from medmoe.data.adapters.busi import import_busi
from medmoe.data.adapters.chexpert5x200 import CLASSES as CHEXPERT
from medmoe.data.adapters.medmnist_organ import CLASSES as ORGANS
from medmoe.data.adapters.mrnet import middle_slice
from medmoe.data.readers import read_image
from medmoe.errors import CorruptFileError, InvalidInputError, MissingFileError

pytestmark = pytest.mark.timeout(60)


def _png(path, value: int = 100, size: tuple[int, int] = (12, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path, format="PNG")
    return path


def _labels(result) -> dict[str, list[str]]:
    """split -> the rows' labels."""
    out: dict[str, list[str]] = {}
    for row in result.rows:
        out.setdefault(row.split, []).append(row.labels[0])
    return out


def test_every_eval_set_is_registered():
    for name in ("rsna-pneumonia", "thyroid-us", "busi", "mrnet-acl", "mrnet-meniscus", "organamnist",
                 "organcmnist", "organsmnist", "chexpert5x200"):
        assert name in SOURCES


# ------------------------------------------------------------------ RSNA Pneumonia

def _rsna(root, n: int = 60):
    (root / "stage_2_train_images").mkdir(parents=True)
    lines = ["patientId,x,y,width,height,Target"]
    for i in range(n):
        pid = f"p{i:03d}"
        (root / "stage_2_train_images" / f"{pid}.dcm").write_bytes(b"not read by the adapter")
        if i % 3 == 0:  # pneumonia: two boxes, two rows
            lines += [f"{pid},10,10,5,5,1", f"{pid},30,30,5,5,1"]
        else:
            lines.append(f"{pid},,,,,0")
    (root / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")


def test_rsna_one_row_per_patient_and_a_balanced_test_split(tmp_path):
    _rsna(tmp_path, n=200)
    result = import_source("rsna-pneumonia", tmp_path)
    labels = _labels(result)
    assert len({r.image for r in result.rows}) == len(result.rows)
    assert set(labels) <= {"train", "val", "test"} and labels["test"]
    assert labels["test"].count("pneumonia") == labels["test"].count("normal")
    assert all(r.modality == "xray" and r.image.endswith(".dcm") for r in result.rows)
    unbalanced = import_source("rsna-pneumonia", tmp_path, balanced_test=False)
    assert len(unbalanced.rows) == 200 > len(result.rows)
    pid0 = [r for r in unbalanced.rows if r.image.endswith("p000.dcm")]
    assert pid0[0].labels == ["pneumonia"]


def test_rsna_broken_layouts_say_what_is_missing(tmp_path):
    with pytest.raises(MissingFileError, match="labels CSV"):
        import_source("rsna-pneumonia", tmp_path)
    (tmp_path / "stage_2_train_labels.csv").write_text("patientId,Target\np1,0\n")
    with pytest.raises(MissingFileError, match="stage_2_train_images"):
        import_source("rsna-pneumonia", tmp_path)
    (tmp_path / "stage_2_train_images").mkdir()
    (tmp_path / "stage_2_train_labels.csv").write_text("patientId,Target\np1,maybe\n")
    with pytest.raises(CorruptFileError, match="'maybe'"):
        import_source("rsna-pneumonia", tmp_path)


# ------------------------------------------------------------------ BUSI

def _busi(root, n: int = 10, fold: bool = True):
    """BUSI as its paper describes it (benign / malignant / normal folders, ``<name>_mask.png`` masks) and,
    with ``fold``, RadImageNet's breast fold CSVs (``dataframe/breast_{train,val,test}_fold1.csv``, header
    ``filename,label``, ``images/<name>`` paths, normal images labelled ``benign``)."""
    base = root / "Dataset_BUSI_with_GT"
    rows: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label in ("benign", "malignant", "normal"):
        for i in range(1, n + 1):
            _png(base / label / f"{label} ({i}).png")
            _png(base / label / f"{label} ({i})_mask.png", 255)
            split = ("train", "val", "test")[i % 3]
            rows[split].append(f"images/{label} ({i}).png,{'malignant' if label == 'malignant' else 'benign'}")
        _png(base / label / f"{label} (1)_mask_1.png", 255)
    if fold:
        (root / "dataframe").mkdir(parents=True, exist_ok=True)
        for split, lines in rows.items():
            (root / "dataframe" / f"breast_{split}_fold1.csv").write_text("filename,label\n" + "\n".join(lines) + "\n")
    return base


def test_busi_follows_radimagenets_fold_with_normal_as_benign(tmp_path):
    _busi(tmp_path, n=9)
    result = import_source("busi", tmp_path)
    assert len(result.rows) == 27 and {r.split for r in result.rows} == {"train", "val", "test"}
    assert not any("_mask" in Path(r.image).name for r in result.rows)
    by_name = {Path(r.image).name: (r.labels[0], r.split) for r in result.rows}
    assert by_name["normal (3).png"] == ("benign", "train") and by_name["malignant (1).png"] == ("malignant", "val")
    assert by_name["benign (2).png"] == ("benign", "test")


def test_busi_normal_images_are_a_named_choice(tmp_path):
    _busi(tmp_path, n=6)
    excluded = import_busi(tmp_path, normal="exclude")
    assert len(excluded.rows) == 12 and {r.labels[0] for r in excluded.rows} == {"benign", "malignant"}
    assert len(excluded.skipped["normal image left out (normal='exclude')"]) == 6
    three = import_busi(tmp_path, normal="class")
    assert sorted({r.labels[0] for r in three.rows}) == ["benign", "malignant", "normal"]
    with pytest.raises(InvalidInputError, match="'cyst'"):
        import_busi(tmp_path, normal="cyst")


def test_busi_without_the_fold_fails_unless_the_hash_split_is_chosen(tmp_path):
    _busi(tmp_path, n=30, fold=False)
    with pytest.raises(MissingFileError, match=r"breast_test_fold1\.csv.*dataframe.*split='hash'"):
        import_source("busi", tmp_path)
    hashed = import_busi(tmp_path, split="hash")
    assert len(hashed.rows) == 90 and {r.split for r in hashed.rows} == {"train", "test"}
    assert {r.labels[0] for r in hashed.rows} == {"benign", "malignant"}


def test_busi_broken_layout(tmp_path):
    base = _busi(tmp_path, n=2)
    for mask_or_image in (base / "malignant").iterdir():
        if "_mask" not in mask_or_image.name:
            mask_or_image.unlink()
    with pytest.raises(MissingFileError, match="malignant.*only masks"):
        import_source("busi", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="no benign/ folder"):
        import_source("busi", tmp_path / "empty")


# ------------------------------------------------------------------ thyroid US

def _thyroid(root, n: int = 4):
    for split in ("train", "test"):
        lines = ["image_path,label"]
        for i in range(n):
            label = "malignant" if i % 2 else "benign"
            _png(root / "images" / f"{split}_{i}.png")
            lines.append(f"images/{split}_{i}.png,{label}")
        (root / f"thyroid_{split}_fold1.csv").write_text("\n".join(lines) + "\n")


def test_thyroid_reads_the_fold_csvs(tmp_path):
    _thyroid(tmp_path)
    labels = _labels(import_source("thyroid-us", tmp_path))
    assert labels == {"train": ["benign", "malignant"] * 2, "test": ["benign", "malignant"] * 2}


def test_thyroid_broken_layout(tmp_path):
    with pytest.raises(MissingFileError, match="thyroid_test_fold1.csv"):
        import_source("thyroid-us", tmp_path)
    (tmp_path / "thyroid_test_fold1.csv").write_text("image,label\na.png,suspicious\n")
    with pytest.raises(CorruptFileError, match="line 2.*'suspicious'"):
        import_source("thyroid-us", tmp_path)


# ------------------------------------------------------------------ MRNet

def _mrnet(root, cases: dict[str, list[tuple[int, int, int]]]):
    """cases: folder -> [(case id, acl label, meniscus label)]; volumes of 5 slices whose slice k is 40 k + case % 7."""
    for folder, items in cases.items():
        for case, _, _ in items:
            for plane in ("axial", "coronal", "sagittal"):
                path = root / folder / plane / f"{case:04d}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                volume = np.stack([np.full((8, 8), 40 * k + case % 7, np.uint8) for k in range(5)])
                np.save(path, volume)
        (root / f"{folder}-acl.csv").write_text("".join(f"{c:04d},{a}\n" for c, a, _ in items))
        (root / f"{folder}-meniscus.csv").write_text("".join(f"{c:04d},{m}\n" for c, _, m in items))


def test_mrnet_middle_slice_as_png_for_both_tasks(tmp_path):
    root = tmp_path / "MRNet-v1.0"
    _mrnet(root, {"train": [(0, 0, 1), (1, 1, 0)], "valid": [(1130, 1, 1), (1131, 0, 0)]})
    acl = import_source("mrnet-acl", root, cache_dir=tmp_path / "cache")
    assert _labels(acl) == {"train": ["normal", "acl tear"], "test": ["acl tear", "normal"]}
    assert acl.rows[2].image.endswith("valid/sagittal/1130.png")
    picture, _ = read_image(acl.rows[2].image)
    assert picture.shape == (8, 8)
    assert middle_slice(root / "valid" / "sagittal" / "1130.npy")[0, 0] == 80 + 1130 % 7
    meniscus = import_source("mrnet-meniscus", root, cache_dir=tmp_path / "cache")
    assert _labels(meniscus)["train"] == ["meniscal tear", "normal"]
    assert "/coronal/" in meniscus.rows[0].image
    assert import_source("mrnet-acl", root, plane="axial").rows[0].image.endswith("train/axial/0000.png")


def test_mrnet_broken_layouts(tmp_path):
    with pytest.raises(MissingFileError, match="valid-acl.csv"):
        import_source("mrnet-acl", tmp_path)
    _mrnet(tmp_path, {"valid": [(1130, 1, 1)]})
    with pytest.raises(InvalidInputError, match="plane 'oblique'"):
        import_source("mrnet-acl", tmp_path, plane="oblique")
    (tmp_path / "valid-acl.csv").write_text("1130,1\n1131,1\n")
    result = import_source("mrnet-acl", tmp_path)
    assert len(result.rows) == 1 and result.skipped["missing volume"][0].endswith("1131.npy")
    np.save(tmp_path / "valid" / "sagittal" / "1130.npy", np.zeros((4, 4)))
    (tmp_path / ".medmoe-png" / "mrnet" / "valid" / "sagittal" / "1130.png").unlink()
    with pytest.raises(CorruptFileError, match="1130.npy.*shape"):
        import_source("mrnet-acl", tmp_path)
    (tmp_path / "valid-acl.csv").write_text("1130;yes\n")
    with pytest.raises(CorruptFileError, match="line 1"):
        import_source("mrnet-acl", tmp_path)


# ------------------------------------------------------------------ MedMNIST organ sets

def _organ_npz(path, n: dict[str, int]):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in n.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % len(ORGANS)).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("source, stem", [("organamnist", "organamnist"), ("organcmnist", "organcmnist"),
                                          ("organsmnist", "organsmnist_64")])
def test_organ_mnist_writes_pngs_with_organ_labels(tmp_path, source, stem):
    arrays = _organ_npz(tmp_path / f"{stem}.npz", {"train": 13, "val": 2, "test": 12})
    result = import_source(source, tmp_path)
    labels = _labels(result)
    assert labels["test"] == [ORGANS[i % 11] for i in range(12)] and len(labels["train"]) == 13
    assert "val" not in labels
    first_test = next(r for r in result.rows if r.split == "test")
    picture = np.asarray(Image.open(first_test.image))
    assert np.array_equal(picture, arrays["test_images"][0])
    again = import_source(source, tmp_path)  # cached PNGs are reused
    assert [r.image for r in again.rows] == [r.image for r in result.rows]


def test_organ_mnist_broken_layouts(tmp_path):
    with pytest.raises(MissingFileError, match="coronal organ set"):
        import_source("organcmnist", tmp_path)
    np.savez(tmp_path / "organamnist.npz", test_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(CorruptFileError, match="no test_images / test_labels"):
        import_source("organamnist", tmp_path, splits=("test",))
    (tmp_path / "organsmnist.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorruptFileError, match="organsmnist.npz"):
        import_source("organsmnist", tmp_path)
    _organ_npz(tmp_path / "organamnist.npz", {"test": 3})
    with pytest.raises(InvalidInputError, match="'dev'"):
        import_source("organamnist", tmp_path, splits=("dev",))


# ------------------------------------------------------------------ the suite finds every set under one root

def _chexpert(root):
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT)
    lines = [header]
    for i, finding in enumerate(CHEXPERT):
        relative = f"train/patient{i:05d}/study1/view1_frontal.jpg"
        _png(root / relative)
        lines.append(f"CheXpert-v1.0/{relative},F,60,Frontal,AP," + ",".join(
            "1.0" if c == finding else "0.0" for c in CHEXPERT))
    (root / "chexpert_5x200.csv").write_text("\n".join(lines) + "\n")


def test_every_suite_set_is_found_under_one_root_with_its_classes(tmp_path):
    from medmoe.align.suites import EVAL_SETS, load_set

    _chexpert(tmp_path / "chexpert")
    _rsna(tmp_path / "rsna-pneumonia", n=80)
    _thyroid(tmp_path / "thyroid_us")
    _busi(tmp_path / "busi", n=12)
    _mrnet(tmp_path / "MRNet-v1.0", {"train": [(0, 0, 1), (1, 1, 0)], "valid": [(1130, 1, 1), (1131, 0, 0)]})
    for stem in ("organamnist", "organcmnist", "organsmnist"):
        _organ_npz(tmp_path / "medmnist" / f"{stem}.npz", {"train": 4, "val": 1, "test": 22})
    for name, spec in EVAL_SETS.items():
        rows = load_set(spec, tmp_path, splits=("test",))
        assert rows and {r.split for r in rows} == {"test"}, name
        assert {r.labels[0] for r in rows} <= set(spec.classes), name
    assert len(load_set(EVAL_SETS["chexpert-5x200"], tmp_path, splits=("test",))) == 5
    assert {r.labels[0] for r in load_set(EVAL_SETS["ct-axial"], tmp_path, splits=("test",))} == set(ORGANS)
    # a zero-shot run writes the PNGs of the test images only
    assert not (tmp_path / "medmnist" / ".medmoe-png" / "organamnist" / "train").exists()
    assert not (tmp_path / "MRNet-v1.0" / ".medmoe-png" / "mrnet" / "train").exists()


# ------------------------------------------------------------------ UniMed-CLIP's prepared folders

def _prepared(root, csv_name: str, rows: list[tuple[str, str]], image_column: int = 0):
    """A prepared folder: images and a CSV whose image / label columns sit at UniMed-CLIP's positions."""
    header = ["idx", "image", "label"] if image_column == 1 else ["image", "label"]
    lines = [",".join(header)]
    for i, (name, label) in enumerate(rows):
        _png(root / "images" / name)
        lines.append(",".join(([str(i)] if image_column == 1 else []) + [f"images/{name}", label]))
    (root / csv_name).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("source, csv_name, values, classes, image_column", [
    ("unimed-breast-us", "breast_test_fold1.csv", ("benign", "malignant"), ["benign", "malignant"], 0),
    ("unimed-acl-mri", "test_fold1.csv", ("no", "yes"), ["normal", "acl tear"], 0),
    ("unimed-meniscus-mri", "meniscus_test_fold1.csv", ("n", "p"), ["normal", "meniscal tear"], 0),
    ("unimed-rsna-pneumonia", "RSNA_pneumonia_balanced_testfile.csv", ("0", "1.0"), ["normal", "pneumonia"], 1),
])
def test_unimed_prepared_folders(tmp_path, source, csv_name, values, classes, image_column):
    _prepared(tmp_path, csv_name, [(f"{i}.png", values[i % 2]) for i in range(4)], image_column)
    result = import_source(source, tmp_path)
    assert _labels(result) == {"test": classes * 2}
    assert result.rows[0].image == str(tmp_path / "images" / "0.png")
    _prepared(tmp_path, csv_name.replace("test", "train"), [("t.png", values[1])], image_column)
    assert _labels(import_source(source, tmp_path))["train"] == [classes[1]]
    (tmp_path / csv_name).write_text("image,label\nimages/0.png,unknown\n" if image_column == 0 else
                                     "i,image,label\n0,images/0.png,7\n")
    with pytest.raises(CorruptFileError, match="line 2"):
        import_source(source, tmp_path)
    (tmp_path / csv_name).unlink()
    with pytest.raises(MissingFileError, match=csv_name):
        import_source(source, tmp_path)


def test_the_suite_falls_back_to_the_prepared_folders(tmp_path):
    from medmoe.align.suites import EVAL_SETS, load_set

    _prepared(tmp_path / "acl_mri", "test_fold1.csv", [("a.png", "yes"), ("b.png", "no")])
    _prepared(tmp_path / "breast_us", "breast_test_fold1.csv", [("a.png", "malignant")])
    assert [r.labels for r in load_set(EVAL_SETS["acl-mri"], tmp_path)] == [["acl tear"], ["normal"]]
    assert [r.labels for r in load_set(EVAL_SETS["breast-us"], tmp_path)] == [["malignant"]]
    with pytest.raises(MissingFileError, match="MRNet-v1.0 or mrnet or meniscal_mri"):
        load_set(EVAL_SETS["meniscus-mri"], tmp_path)
