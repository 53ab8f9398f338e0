"""Each adapter on a tiny fake tree in the exact public layout of its corpus."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmoe.cli.main import main
from medmoe.data.adapters import hash_split, import_source
from medmoe.data.manifest import read_manifest
from medmoe.data.reports import clean_report
from medmoe.errors import MedMoEError

pytestmark = pytest.mark.timeout(60)


def _jpg(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 20), value, np.uint8)).save(path, format="JPEG")
    return path


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 20), value, np.uint8)).save(path, format="PNG")
    return path


def _csv_gz(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(gzip.compress(buffer.getvalue().encode()))


# ------------------------------------------------------------------ MIMIC-CXR

METADATA_HEADER = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
CHEXPERT_HEADER = [
    "subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
]
MIMIC_IMAGES = [
    # dicom_id, subject, study, view, split, image on disk
    ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "10000032", "50414267", "PA", "train", True),
    ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "10000032", "50414267", "LATERAL", "train", True),
    ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "10000032", "53189527", "AP", "validate", True),
    ("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", "11000011", "51000001", "PA", "train", True),
    ("aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee", "12000002", "52000002", "PA", "test", False),
    ("ffffffff-00000000-11111111-22222222-33333333", "13000003", "53000003", "AP", "test", True),
]
MIMIC_REPORTS = {
    ("10000032", "50414267"): "FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n INDICATION: ___F with cough\n"
    " FINDINGS: Mild cardiomegaly. No pleural effusion.\n IMPRESSION: Enlarged heart.\n",
    ("10000032", "53189527"): "FINDINGS: Lungs are clear.\n IMPRESSION: No acute process.\n",
    ("13000003", "53000003"): "IMPRESSION: Normal chest.\n",
    # 11000011/51000001 has no report file: the row must be skipped
}


def _mimic_tree(root: Path, reports_in_zip: bool = False) -> None:
    _csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_HEADER,
            [[d, s, st, "CHEST (PA AND LAT)", v, "3056", "2544", "21800506", "213014.531", "CHEST (PA AND LAT)",
              "postero-anterior", "Erect"] for d, s, st, v, _, _ in MIMIC_IMAGES])
    _csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
            [[d, st, s, sp] for d, s, st, _, sp, _ in MIMIC_IMAGES])
    labels = {name: "" for name in CHEXPERT_HEADER[2:]}
    first = dict(labels, Cardiomegaly="1.0", Edema="-1.0", **{"Pleural Effusion": "0.0"})
    second = dict(labels, **{"No Finding": "1.0"})
    _csv_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", CHEXPERT_HEADER,
            [["10000032", "50414267", *first.values()], ["10000032", "53189527", *second.values()]])
    for d, s, st, _, _, on_disk in MIMIC_IMAGES:
        if on_disk:
            _jpg(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg")
    if reports_in_zip:
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as zf:
            for (s, st), text in MIMIC_REPORTS.items():
                zf.writestr(f"files/p{s[:2]}/p{s}/s{st}.txt", text)
    else:
        for (s, st), text in MIMIC_REPORTS.items():
            path = root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{st}.txt"
            path.write_text(text)


@pytest.mark.parametrize("reports_in_zip", [False, True])
def test_mimic_cxr(tmp_path, reports_in_zip):
    _mimic_tree(tmp_path, reports_in_zip)
    result = import_source("mimic-cxr", tmp_path)
    by_study = {r.extra["study_id"]: r for r in result.rows}
    assert sorted(by_study) == ["50414267", "53000003", "53189527"]  # frontal, with image and report
    first = by_study["50414267"]
    assert first.image == str(tmp_path / "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg")
    assert first.split == "train" and first.modality == "xray" and first.dataset == "mimic-cxr"
    assert first.labels == ["Cardiomegaly"]  # -1.0 (uncertain) and 0.0 are not labels
    assert clean_report(first.report) == "Mild cardiomegaly. No pleural effusion. Enlarged heart."
    assert by_study["53189527"].split == "val" and by_study["53189527"].labels == ["No Finding"]
    assert by_study["53000003"].split == "test" and by_study["53000003"].labels == []
    assert len(result.skipped["other view"]) == 1
    assert len(result.skipped["missing report"]) == 1
    assert len(result.skipped["missing image"]) == 1


def test_mimic_cxr_all_views(tmp_path):
    _mimic_tree(tmp_path)
    result = import_source("mimic-cxr", tmp_path, views=None)
    assert sorted(r.extra["view"] for r in result.rows) == ["AP", "AP", "LATERAL", "PA"]


def test_mimic_cxr_without_split_file_fails_naming_it(tmp_path):
    _mimic_tree(tmp_path)
    (tmp_path / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(MedMoEError, match="split CSV"):
        import_source("mimic-cxr", tmp_path)


# ------------------------------------------------------------------ CheXpert 5x200

CHEXPERT_COLUMNS = [
    "", "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
    "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
]
FIVE = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def _chexpert_tree(root: Path, with_reports: bool) -> Path:
    folder = root / "CheXpert-v1.0"
    header = CHEXPERT_COLUMNS + (["Report Impression"] if with_reports else [])
    rows = []
    for i, finding in enumerate(FIVE + ("Edema",)):
        relative = f"CheXpert-v1.0/train/patient{i:05d}/study1/view1_frontal.jpg"
        if i < 5:
            _jpg(root / relative)
        record = {c: "0.0" for c in header[6:20]}
        record[finding] = "1.0"
        row = [str(i), relative, "Female", "68", "Frontal", "AP", *record.values()]
        if with_reports:
            row.append(f"1. {finding.lower()} is present.")
        rows.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "chexpert_5x200.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return folder


@pytest.mark.parametrize("with_reports", [False, True])
@pytest.mark.parametrize("from_parent", [False, True])
def test_chexpert5x200(tmp_path, with_reports, from_parent):
    folder = _chexpert_tree(tmp_path, with_reports)
    result = import_source("chexpert5x200", tmp_path if from_parent else folder)
    assert [r.labels for r in result.rows] == [[c] for c in FIVE]
    assert all(r.split == "test" and r.modality == "xray" for r in result.rows)
    assert result.rows[1].image == str(folder / "train/patient00001/study1/view1_frontal.jpg")
    assert len(result.skipped["missing image"]) == 1
    if with_reports:
        assert result.rows[0].report == "1. atelectasis is present."
    else:
        assert all(r.report == "" for r in result.rows)


# ------------------------------------------------------------------ IU X-ray / Open-i

def _open_i_xml(uid: int, sections: dict[str, str], mesh: list[str], images: list[str]) -> str:
    abstract = "\n".join(
        f'            <AbstractText Label="{label}">{text}</AbstractText>' for label, text in sections.items()
    )
    majors = "\n".join(f"      <major>{m}</major>" for m in mesh)
    parents = "\n".join(
        f'   <parentImage id="{image}">\n      <figureId>F{k + 1}</figureId>\n'
        f"      <caption>Xray Chest PA and Lateral</caption>\n      <panel type=\"single\">\n"
        f"         <url>/hadoop/storage/radiology/extract/{image}.jpg</url>\n      </panel>\n   </parentImage>"
        for k, image in enumerate(images)
    )
    return f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{uid}"/>
   <pmcId id="{uid}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{uid}"/>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
         <Abstract>
{abstract}
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>
{majors}
   </MeSH>
{parents}
</eCitation>
"""


def _iu_tree(root: Path) -> None:
    xml_dir = root / "ecgen-radiology"
    xml_dir.mkdir(parents=True)
    (xml_dir / "1.xml").write_text(_open_i_xml(
        1,
        {"COMPARISON": "None.", "INDICATION": "Positive TB test",
         "FINDINGS": "The cardiac silhouette is normal. There are no XXXX of a pleural effusion.",
         "IMPRESSION": "Normal chest x-XXXX."},
        ["normal"], ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]))
    (xml_dir / "2.xml").write_text(_open_i_xml(
        2, {"FINDINGS": "Left basilar opacity.", "IMPRESSION": "Atelectasis."},
        ["Opacity/lung/base/left/mild", "Pulmonary Atelectasis/base/left", "Opacity/lung/apex/right"],
        ["CXR2_1_IM-0652-1001", "CXR2_1_IM-0652-2001"]))
    (xml_dir / "3.xml").write_text(_open_i_xml(3, {"IMPRESSION": "No acute disease."}, ["No Indexing"], []))
    (xml_dir / "4.xml").write_text("<eCitation><uId id='CXR4'/>")  # broken XML
    for name in ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_1_IM-0652-1001"):
        _png(root / "NLMCXR_png" / f"{name}.png")


def test_iu_xray(tmp_path):
    _iu_tree(tmp_path)
    result = import_source("iu-xray", tmp_path)
    assert [Path(r.image).stem for r in result.rows] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_1_IM-0652-1001"]
    first, second, third = result.rows
    assert first.report.splitlines()[0] == "COMPARISON: None."
    assert clean_report(first.report) == "The cardiac silhouette is normal. There are no of a pleural effusion. Normal chest x."
    assert first.labels == ["normal"]
    assert third.labels == ["opacity", "pulmonary atelectasis"]
    assert clean_report(third.report) == "Left basilar opacity. Atelectasis."
    assert first.split == second.split == hash_split("iu-xray:CXR1")
    assert third.split == hash_split("iu-xray:CXR2")
    assert all(r.modality == "xray" and r.dataset == "iu-xray" for r in result.rows)
    assert result.skipped["missing image"] == ["CXR2_1_IM-0652-2001"]
    assert len(result.skipped["unreadable XML"]) == 1 and len(result.skipped["no image"]) == 1


def test_iu_report_xml_parses_from_bytes_like_from_a_file(tmp_path):
    from medmoe.data.adapters.iu_xray import parse_report, parse_report_xml
    from medmoe.errors import CorruptFileError

    _iu_tree(tmp_path)
    path = tmp_path / "ecgen-radiology" / "2.xml"
    parsed = parse_report_xml(path.read_bytes(), "member 2.xml")
    assert parsed == parse_report(path)
    assert parsed["id"] == "CXR2" and parsed["sections"]["FINDINGS"] == "Left basilar opacity."
    assert parsed["mesh"][0] == "Opacity/lung/base/left/mild"
    assert parse_report_xml(b"<eCitation/>", "x", default_id="7")["id"] == "7"
    with pytest.raises(CorruptFileError, match="member 4.xml: not a readable Open-i XML report"):
        parse_report_xml((tmp_path / "ecgen-radiology" / "4.xml").read_bytes(), "member 4.xml")


def test_hash_split_is_stable_and_proportional():
    splits = [hash_split(f"key{i}") for i in range(2000)]
    assert splits == [hash_split(f"key{i}") for i in range(2000)]
    share = splits.count("train") / len(splits)
    assert 0.75 < share < 0.85 and splits.count("val") > 100 and splits.count("test") > 100


# ------------------------------------------------------------------ ROCO

ROCO_ENTRIES = {
    "train": [("ROCO_00002", "PMC4083729", "AMJCR-07-0000-g001.jpg", " Axial CT of the abdomen shows a mass.")],
    "validation": [("ROCO_81834", "PMC3498864", "jovr-04-256f2.jpg", " T2-weighted MRI of the knee.")],
    "test": [
        ("ROCO_00001", "PMC4608653", "cro-0008-0385-g01.jpg", " Postoperative decreased size of the cyst"),
        ("ROCO_00006", "PMC4840839", "ol-11-05-3298-g02.jpg", " Chest radiograph, never downloaded."),
    ],
}


def _roco_tree(root: Path) -> None:
    for split, entries in ROCO_ENTRIES.items():
        folder = root / "data" / split / "radiology"
        folder.mkdir(parents=True)
        (folder / "captions.txt").write_text("".join(f"{rid}\t{caption}\n" for rid, _, _, caption in entries))
        (folder / "dlinks.txt").write_text("".join(
            f"{rid}\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/69/93/{pmc}.tar.gz -P /path/to/Dir\t{name}\n"
            for rid, pmc, name, _ in entries))
        for _, pmc, name, caption in entries:
            if "never downloaded" not in caption:
                _jpg(folder / "images" / f"{pmc}_{name}")
        (root / "data" / split / "non-radiology").mkdir(parents=True)


def test_roco(tmp_path):
    _roco_tree(tmp_path)
    result = import_source("roco", tmp_path)
    rows = {r.extra["roco_id"]: r for r in result.rows}
    assert sorted(rows) == ["ROCO_00001", "ROCO_00002", "ROCO_81834"]
    assert rows["ROCO_00002"].split == "train" and rows["ROCO_00002"].modality == "ct"
    assert rows["ROCO_81834"].split == "val" and rows["ROCO_81834"].modality == "mri"
    assert rows["ROCO_00001"].split == "test" and rows["ROCO_00001"].modality is None
    assert rows["ROCO_00002"].report == "Axial CT of the abdomen shows a mass."
    assert rows["ROCO_00002"].image.endswith("data/train/radiology/images/PMC4083729_AMJCR-07-0000-g001.jpg")
    assert len(result.skipped["missing image"]) == 1
    # the data folder itself works as root too
    assert len(import_source("roco", tmp_path / "data").rows) == 3


def test_roco_caption_csv_variant(tmp_path):
    folder = tmp_path / "train" / "radiology"
    _jpg(folder / "images" / "PMC1_a.jpg")
    with open(folder / "radiologytraindata.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "name", "caption"], ["ROCO_1", "PMC1_a.jpg", "Ultrasound of the liver."]])
    (row,) = import_source("roco", tmp_path).rows
    assert row.image == str(folder / "images" / "PMC1_a.jpg")
    assert row.modality == "ultrasound" and row.split == "train"


# ------------------------------------------------------------------ WebDataset

def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _image_bytes(fmt: str, value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _wds_tree(root: Path) -> None:
    (root / "train").mkdir(parents=True)
    with tarfile.open(root / "train" / "shard-000000.tar", "w") as tar:
        _add(tar, "000000.jpg", _image_bytes("JPEG", 50))
        _add(tar, "000000.txt", b"Chest X-ray with a small left effusion.")
        _add(tar, "000000.cls", b"3")
        _add(tar, "000001.png", _image_bytes("PNG", 200))
        _add(tar, "000001.txt", b"Brain MRI, no mass.")
        _add(tar, "000001.json", json.dumps({"modality": "mri", "labels": ["normal"], "split": "test"}).encode())
        _add(tar, "000002.txt", b"text without an image")


def test_wds(tmp_path):
    _wds_tree(tmp_path / "shards")
    result = import_source("wds", tmp_path / "shards", extract_dir=tmp_path / "extracted")
    first, second = result.rows
    assert first.report == "Chest X-ray with a small left effusion."
    assert first.labels == ["3"] and first.split == "train" and first.modality is None
    assert second.modality == "mri" and second.labels == ["normal"] and second.split == "test"
    assert Path(first.image).read_bytes() == _image_bytes("JPEG", 50)
    assert Path(second.image) == (tmp_path / "extracted" / "train" / "shard-000000" / "000001.png").resolve()
    assert len(result.skipped["no image"]) == 1


def test_wds_gives_every_sample_its_own_file(tmp_path):
    """Same-named shards in two folders, keys sharing a base name and a key repeated later in a tar: each
    row points to its own sample's image (never to a file another sample overwrote)."""
    root = tmp_path / "shards"
    values = {}
    for split, start in (("train", 10), ("val", 100)):
        (root / split).mkdir(parents=True)
        with tarfile.open(root / split / "shard-000000.tar", "w") as tar:
            for i, key in enumerate(("a/dup", "b/dup", "c", "../escape", "c", "c")):
                value = start + i
                _add(tar, f"{key}.png", _image_bytes("PNG", value))
                _add(tar, f"{key}.txt", f"report {split} {key} {value}".encode())
                values.setdefault((split, key), value)
    result = import_source("wds", root, extract_dir=tmp_path / "out")
    assert len(result.rows) == 6  # a/dup, b/dup, c in each of the two shards
    assert len({row.image for row in result.rows}) == 6
    for row in result.rows:
        split, key, value = row.report.split()[1:]
        assert row.split == split
        pixels = np.asarray(Image.open(row.image))
        assert int(pixels[0, 0]) == int(value) == values[(split, key)], row
    assert len(result.skipped["duplicate key in shard (a later sample reuses it)"]) == 4  # later and next
    assert len(result.skipped["unsafe key (would write outside the extract folder)"]) == 2
    assert all(Path(row.image).is_relative_to((tmp_path / "out").resolve()) for row in result.rows)


# ------------------------------------------------------------------ CLI

def test_cli_import_writes_a_manifest_that_checks_clean(tmp_path, capsys):
    _iu_tree(tmp_path / "iu")
    out = tmp_path / "manifests" / "iu.csv"
    assert main(["data", "import", "iu-xray", str(tmp_path / "iu"), "--out", str(out)]) == 0
    assert "wrote 3 rows" in capsys.readouterr().out
    rows = read_manifest(out)
    assert len(rows) == 3 and Path(rows[0].image).is_file()
    assert main(["data", "check", str(out), "--no-progress"]) == 0


def test_cli_import_wds_default_extract_dir(tmp_path):
    _wds_tree(tmp_path / "shards")
    out = tmp_path / "wds.jsonl"
    assert main(["data", "import", "wds", str(tmp_path / "shards"), "--out", str(out)]) == 0
    assert (tmp_path / "wds-images" / "train" / "shard-000000" / "000000.jpg").is_file()
    assert len(read_manifest(out)) == 2


def test_cli_import_unknown_root(tmp_path, capsys):
    assert main(["data", "import", "roco", str(tmp_path / "none"), "--out", str(tmp_path / "m.csv")]) == 1
    assert "root directory not found" in capsys.readouterr().err
