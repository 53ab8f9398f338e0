"""The adapters on tiny fake copies of the public corpora in the forms they are distributed in.

Each fake tree is built from the corpus's own description (its README, paper, release page or the loader
of the project that redistributes it), cited above the builder, and not from what the adapter assumes.
Images are tiny PNG / JPEG files.
"""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmoe.cli.main import main
from medmoe.data.adapters import SOURCES, import_source
from medmoe.errors import CorruptFileError, InvalidInputError, MissingFileError

pytestmark = pytest.mark.timeout(60)

FIVE = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
FOURTEEN = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
            "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
            "Fracture", "Support Devices")


def _image(path: Path, value: int = 100, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 10), value, np.uint8)).save(path, format=fmt)
    return path


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------ CheXpert 5x200

def _chexpert_table(path: Path, path_column: str, prefix: str, image_root: Path) -> list[str]:
    """Five rows, one per finding, with CheXpert's columns; the images are written under ``image_root``."""
    header = ["", path_column, "Sex", "Age", "Frontal/Lateral", "AP/PA", *FOURTEEN, "Report Impression"]
    rows, relatives = [], []
    for i, finding in enumerate(FIVE):
        relative = f"{prefix}/train/patient{i + 1:05d}/study1/view1_frontal.jpg"
        _image(image_root / relative, fmt="JPEG")
        flags = ["1.0" if name == finding else "0.0" for name in FOURTEEN]
        rows.append([str(i), relative, "Male", "26", "Frontal", "AP", *flags, f"\n1. {finding.lower()}.\n"])
        relatives.append(relative)
    _write_csv(path, header, rows)
    return relatives


def test_chexpert5x200_as_unimed_clip_ships_it(tmp_path):
    """UniMed-CLIP (github.com/mbzuai-oryx/UniMed-CLIP): ``local_data/chexpert-5x200.csv`` with an unnamed
    index column and ``imgpath`` values ``CheXpert-v1.0-small/train/...``; ``clipeval/datasets.py`` opens
    ``os.path.join(<chexpert folder>, imgpath)``."""
    relatives = _chexpert_table(tmp_path / "chexpert-5x200.csv", "imgpath", "CheXpert-v1.0-small", tmp_path)
    result = import_source("chexpert5x200", tmp_path)
    assert [r.labels for r in result.rows] == [[c] for c in FIVE]
    assert [r.image for r in result.rows] == [str(tmp_path / rel) for rel in relatives]
    assert result.rows[0].report == "1. atelectasis."


def test_chexpert5x200_under_gloria_file_name(tmp_path):
    """GLoRIA (github.com/marshuang80/gloria, ``gloria/constants.py``): ``CHEXPERT_5x200 = CHEXPERT_DATA_DIR /
    "chexpert_8x200.csv"`` inside ``CheXpert-v1.0``, paths in ``Path`` starting with ``CheXpert-v1.0/``."""
    folder = tmp_path / "CheXpert-v1.0"
    _chexpert_table(folder / "chexpert_8x200.csv", "Path", "CheXpert-v1.0", tmp_path)
    for root in (tmp_path, folder):
        result = import_source("chexpert5x200", root)
        assert [r.labels for r in result.rows] == [[c] for c in FIVE]
        assert result.rows[1].image == str(folder / "train/patient00002/study1/view1_frontal.jpg")


def test_chexpert5x200_layouts_it_cannot_read_fail_once_naming_what_was_looked_for(tmp_path):
    with pytest.raises(MissingFileError, match=r"chexpert-5x200\.csv.*chexpert_8x200\.csv.*CheXpert-v1\.0-small/"):
        import_source("chexpert5x200", tmp_path)
    _write_csv(tmp_path / "chexpert-5x200.csv", ["", "image", *FIVE], [["0", "a.jpg", "1.0", "0", "0", "0", "0"]])
    with pytest.raises(CorruptFileError, match=r"\['Path', 'imgpath'\]"):
        import_source("chexpert5x200", tmp_path)
    _chexpert_table(tmp_path / "chexpert-5x200.csv", "imgpath", "CheXpert-v1.0-small", tmp_path / "elsewhere")
    with pytest.raises(MissingFileError, match=r"none of the 5 images"):
        import_source("chexpert5x200", tmp_path)


# ------------------------------------------------------------------ ROCO

def _roco_kaggle(root: Path) -> None:
    """The Kaggle redistribution of ROCO: ``all_data/<split>/radiology<split>data.csv`` (``id,name,caption``)
    next to ``all_data/<split>/radiology/images/`` (the split folders of the ROCO README: train, validation,
    test). The validation CSV's exact name differs between copies (``radiologyvaldata.csv`` here); the
    adapter accepts any ``radiology*.csv`` of the split folder."""
    entries = {"train": ("radiologytraindata.csv", "ROCO_00002", "PMC4083729_AMJCR-07-0000-g001.jpg",
                         "Axial CT of the abdomen shows a mass."),
               "validation": ("radiologyvaldata.csv", "ROCO_81834", "PMC3498864_jovr-04-256f2.jpg",
                              "T2-weighted MRI of the knee."),
               "test": ("radiologytestdata.csv", "ROCO_00001", "PMC4608653_cro-0008-0385-g01.jpg",
                        "Postoperative decreased size of the cyst")}
    for split, (csv_name, roco_id, name, caption) in entries.items():
        folder = root / "all_data" / split
        _write_csv(folder / csv_name, ["id", "name", "caption"], [[roco_id, name, caption]])
        _image(folder / "radiology" / "images" / name, fmt="JPEG")
        (folder / "non-radiology" / "images").mkdir(parents=True)


def test_roco_in_its_kaggle_form(tmp_path):
    _roco_kaggle(tmp_path)
    for root in (tmp_path, tmp_path / "all_data"):
        result = import_source("roco", root)
        rows = {r.extra["roco_id"]: r for r in result.rows}
        assert sorted(rows) == ["ROCO_00001", "ROCO_00002", "ROCO_81834"]
        assert rows["ROCO_00002"].split == "train" and rows["ROCO_00002"].modality == "ct"
        assert rows["ROCO_81834"].split == "val" and rows["ROCO_81834"].modality == "mri"
        assert rows["ROCO_00002"].image == str(
            tmp_path / "all_data/train/radiology/images/PMC4083729_AMJCR-07-0000-g001.jpg")


def test_roco_without_captions_names_every_place_looked(tmp_path):
    (tmp_path / "all_data" / "train" / "radiology" / "images").mkdir(parents=True)
    with pytest.raises(CorruptFileError, match=r"captions\.txt.*radiology\*\.csv"):
        import_source("roco", tmp_path)
    with pytest.raises(CorruptFileError, match=r"all_data/\}\{train,validation,test\}"):
        import_source("roco", tmp_path / "all_data" / "train")


# ------------------------------------------------------------------ MIMIC-CXR reports zip

def _mimic_with_reports_zip(root: Path) -> Path:
    """MIMIC-CXR-JPG's CSVs and JPGs under ``root/jpg``; the reports as MIMIC-CXR's PhysioNet page lists
    them: ``mimic-cxr-reports.zip`` holding ``files/pXX/pXXXXXXXX/sXXXXXXXX.txt``, kept in ``root/reports``."""
    jpg = root / "jpg"
    study = "files/p10/p10000032/s50414267"
    dicom = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
    _write_csv(jpg / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition"],
               [[dicom, "10000032", "50414267", "PA"]])
    _write_csv(jpg / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
               [[dicom, "50414267", "10000032", "train"]])
    _image(jpg / study / f"{dicom}.jpg", fmt="JPEG")
    (root / "reports").mkdir()
    archive = root / "reports" / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{study}.txt", "FINAL REPORT\n FINDINGS: Clear lungs.\n IMPRESSION: Normal.\n")
    return archive


def test_mimic_cxr_reports_root_may_be_the_zip_itself(tmp_path):
    archive = _mimic_with_reports_zip(tmp_path)
    for reports_root in (archive, archive.parent):
        (row,) = import_source("mimic-cxr", tmp_path / "jpg", reports_root=reports_root).rows
        assert "Clear lungs." in row.report


def test_mimic_cxr_cli_reads_the_reports_zip(tmp_path, capsys):
    archive = _mimic_with_reports_zip(tmp_path)
    out = tmp_path / "mimic.csv"
    assert main(["data", "import", "mimic-cxr", str(tmp_path / "jpg"), "--reports-root", str(archive),
                 "--out", str(out), "--no-progress"]) == 0
    assert "wrote 1 rows" in capsys.readouterr().out


def test_mimic_cxr_reports_root_that_holds_no_reports_fails(tmp_path):
    archive = _mimic_with_reports_zip(tmp_path)
    with pytest.raises(MissingFileError, match="does not exist"):
        import_source("mimic-cxr", tmp_path / "jpg", reports_root=tmp_path / "nowhere.zip")
    with pytest.raises(MissingFileError, match="neither files/ nor mimic-cxr-reports.zip"):
        import_source("mimic-cxr", tmp_path / "jpg", reports_root=tmp_path / "jpg" / "files" / "p10")
    archive.write_bytes(b"not a zip")
    with pytest.raises(CorruptFileError, match="not a readable zip"):
        import_source("mimic-cxr", tmp_path / "jpg", reports_root=archive)


# ------------------------------------------------------------------ RadImageNet's downstream dataframes

RADIMAGENET_TASKS = [
    # source, CSV name pattern, header, the two label values, the two classes
    ("thyroid-us", "thyroid_{split}_fold1.csv", ["filename", "label"], ("benign", "malignant"),
     ["benign", "malignant"]),
    ("unimed-breast-us", "breast_{split}_fold1.csv", ["filename", "label"], ("benign", "malignant"),
     ["benign", "malignant"]),
    ("unimed-acl-mri", "{split}_fold1.csv", ["filename", "acl_label"], ("no", "yes"), ["normal", "acl tear"]),
    ("unimed-meniscus-mri", "meniscus_{split}_fold1.csv", ["filename", "label"], ("n", "p"),
     ["normal", "meniscal tear"]),
]


def _radimagenet_task(task: Path, pattern: str, header: list[str], values: tuple[str, str]) -> None:
    """A RadImageNet downstream task as its repository publishes it (github.com/BMEII-AI/RadImageNet, e.g.
    ``acl/dataframe/test_fold1.csv`` = ``filename,acl_label`` / ``images/1054_sagittal_19.000000.png,yes``):
    ``<task>/dataframe/<CSV per split and fold>`` beside ``<task>/images/``, paths relative to the task
    folder. The label values are the ones UniMed-CLIP's ``clipeval/datasets.py`` maps (benign/malignant,
    yes/no, p/n)."""
    for split in ("train", "val", "test"):
        rows = []
        for i in range(2):
            name = f"images/{split}_{i}.png"
            _image(task / name, value=10 * i)
            rows.append([name, values[i]])
        _write_csv(task / "dataframe" / pattern.format(split=split), header, rows)


@pytest.mark.parametrize("source, pattern, header, values, classes", RADIMAGENET_TASKS)
def test_radimagenet_dataframes_with_the_val_fold(tmp_path, source, pattern, header, values, classes):
    task = tmp_path / "task"
    _radimagenet_task(task, pattern, header, values)
    for root in (task, task / "dataframe"):
        result = import_source(source, root)
        by_split = {s: [r.labels[0] for r in result.rows if r.split == s] for s in ("train", "val", "test")}
        assert by_split == {"train": classes, "val": classes, "test": classes}
        assert result.rows[0].image == str(task / "images" / "train_0.png")


@pytest.mark.parametrize("source, pattern, header, values, classes", RADIMAGENET_TASKS[:1])
def test_radimagenet_other_folds_and_missing_folds(tmp_path, source, pattern, header, values, classes):
    task = tmp_path / "task"
    _radimagenet_task(task, pattern.replace("fold1", "fold2"), header, values)
    assert len(import_source(source, task, fold=2).rows) == 6
    with pytest.raises(MissingFileError, match=r"thyroid_test_fold1\.csv in .*task and .*task/dataframe"):
        import_source(source, task)
    (task / "images" / "test_0.png").unlink()
    (task / "images" / "test_1.png").unlink()
    with pytest.raises(MissingFileError, match=r"thyroid_test_fold2\.csv: none of the 2 images"):
        import_source(source, task, fold=2)


# ------------------------------------------------------------------ WebDataset shards of UniMed-CLIP

def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _jpeg_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


UNIMED_TEXTS = {
    # UniMed-CLIP's data_prepration_scripts (github.com/mbzuai-oryx/UniMed-CLIP): MIMIC-CXR writes each
    # template + "._mimiccxr_", then "_mimiccxr_" + the report ("noreportpresent" when there is none);
    # Openi writes the caption then its templates, each + "._openi_"; RadImageNet's templates are joined by
    # "_radimagenet_" (split again by src/training/data.py, preprocess_txt_rad).
    "000000": ("Chest x-ray showing cardiomegaly._mimiccxr_Enlarged heart on the radiograph._mimiccxr_"
               "_mimiccxr_FINDINGS: Mild cardiomegaly. IMPRESSION: Enlarged heart.",
               "FINDINGS: Mild cardiomegaly. IMPRESSION: Enlarged heart."),
    "000001": ("Chest x-ray showing edema._mimiccxr_Pulmonary edema is seen._mimiccxr__mimiccxr_noreportpresent",
               "Chest x-ray showing edema."),
    "000002": ("The heart is normal in size._openi_Normal chest radiograph._openi_No acute disease._openi_",
               "The heart is normal in size."),
    "000003": ("An MRI of the knee showing an ACL tear._radimagenet_Knee MRI with a torn ACL._radimagenet_",
               "An MRI of the knee showing an ACL tear."),
    "000004": ("Plain caption without a marker.", "Plain caption without a marker."),
}


def test_wds_shards_of_unimed_clip_keep_the_caption_it_trains_on(tmp_path):
    shard = tmp_path / "shards" / "dataset-000001.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for key, (text, _) in UNIMED_TEXTS.items():
            _tar_member(tar, f"{key}.jpg", _jpeg_bytes(40))
            _tar_member(tar, f"{key}.txt", text.encode())
    result = import_source("wds", shard, extract_dir=tmp_path / "out", split="train")
    assert {r.extra["key"]: r.report for r in result.rows} == {k: want for k, (_, want) in UNIMED_TEXTS.items()}
    assert not any("_mimiccxr_" in r.report or "_openi_" in r.report for r in result.rows)


# ------------------------------------------------------------------ MedMNIST organ sets

ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
          "lung-right", "pancreas", "spleen")


def _organ_npz(path: Path, count: int = 3) -> None:
    """A MedMNIST file as medmnist.com documents it: ``{train,val,test}_images`` (N, H, W) uint8 and
    ``{train,val,test}_labels`` (N, 1)."""
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.full((count, 28, 28), 7, np.uint8)
        arrays[f"{split}_labels"] = np.arange(count).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def test_medmnist_file_given_directly(tmp_path):
    npz = tmp_path / "downloads" / "organcmnist_64.npz"
    _organ_npz(npz)
    result = import_source("organcmnist", npz, splits=("val", "test"))
    assert [r.labels[0] for r in result.rows if r.split == "test"] == list(ORGANS[:3])
    assert {r.split for r in result.rows} == {"val", "test"}
    assert Path(result.rows[0].image).is_relative_to(tmp_path / "downloads" / ".medmoe-png" / "organcmnist_64")
    with pytest.raises(InvalidInputError, match=r"organcmnist_64\.npz: expected the axial organ set's MedMNIST file"):
        import_source("organamnist", npz)


def _unimed_organs(root: Path) -> Path:
    """UniMed-CLIP's ``organs_axial`` folder as ``clipeval/datasets.py`` (``CT_dataset``) reads it:
    ``annotations.csv`` with the image path in column 0 (relative to the folder), the label in column 2 and a
    ``split`` column. The names of columns 0-2 are not documented; the loader reads them by position, and so
    does this fake (placeholder names)."""
    folder = root / "organs_axial"
    rows = []
    for i, (label, split) in enumerate([("6", "test"), ("10", "test"), ("4.0", "train"), ("liver", "test")]):
        _image(folder / "images" / f"{i}.png")
        rows.append([f"images/{i}.png", f"case{i}", label, split])
    _write_csv(folder / "annotations.csv", ["image", "case", "label", "split"], rows)
    return folder


def test_medmnist_organ_csv_of_unimed_clip(tmp_path):
    folder = _unimed_organs(tmp_path)
    for root in (tmp_path, folder):
        result = import_source("organamnist", root, splits=("test",))
        assert [r.labels[0] for r in result.rows] == ["liver", "spleen", "liver"]
        assert result.rows[0].image == str(folder / "images" / "0.png")
    (folder / "annotations.csv").write_text("image,case,label,split\nimages/0.png,c,brain,test\n")
    with pytest.raises(CorruptFileError, match="line 2: label 'brain'"):
        import_source("organamnist", tmp_path)
    with pytest.raises(MissingFileError, match=r"organs_coronal/annotations\.csv"):
        import_source("organcmnist", tmp_path)


# ------------------------------------------------------------------ medmoe data import SOURCE --help

HELP_MUST_NAME = {
    "chexpert5x200": ["chexpert-5x200.csv", "chexpert_8x200.csv", "CheXpert-v1.0-small/"],
    "roco": ["all_data/train/radiologytraindata.csv", "radiology/images/"],
    "mimic-cxr": ["mimic-cxr-reports.zip", "files/p10/p10000032/s50414267"],
    "thyroid-us": ["dataframe/thyroid_{train,val,test}_fold1.csv"],
    "unimed-acl-mri": ["dataframe/", "{split}_fold1.csv"],
    "busi": ["Dataset_BUSI_with_GT/normal/", "breast_{train,val,test}_fold1.csv"],
    "wds": ["_mimiccxr_", "ROOT/train/shard-000000.tar"],
    "organamnist": ["organamnist.npz", "organs_axial/annotations.csv"],
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_import_help_shows_the_layout_and_the_source_followed(source, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "import", source, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Source:" in text and "ROOT/" in text
    for name in HELP_MUST_NAME.get(source, []):
        assert name in text, name


def test_import_cli_passes_the_busi_and_fold_choices(tmp_path, capsys):
    base = tmp_path / "Dataset_BUSI_with_GT"
    for label in ("benign", "malignant", "normal"):
        _image(base / label / f"{label} (1).png")
    _write_csv(tmp_path / "dataframe" / "breast_test_fold2.csv", ["filename", "label"],
               [["images/benign (1).png", "benign"], ["images/malignant (1).png", "malignant"],
                ["images/normal (1).png", "benign"]])
    out = tmp_path / "busi.csv"
    assert main(["data", "import", "busi", str(tmp_path), "--out", str(out), "--fold", "2", "--normal", "exclude",
                 "--no-progress"]) == 0
    assert "wrote 2 rows" in capsys.readouterr().out
    assert main(["data", "import", "busi", str(tmp_path), "--out", str(out), "--no-progress"]) == 1
    assert "breast_test_fold1.csv" in capsys.readouterr().err


def test_mimic_cxr_without_any_report_fails_naming_where_it_looked(tmp_path):
    _mimic_with_reports_zip(tmp_path)
    with pytest.raises(MissingFileError, match=r"none of the 1 study reports.*s50414267\.txt.*mimic-cxr-reports\.zip"):
        import_source("mimic-cxr", tmp_path / "jpg")
