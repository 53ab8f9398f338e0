"""Real sample files: present, in their own formats, with the right modality, all held out."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from PIL import Image
from testkit.sample_measures import read_rows

from medmoe.data.modalities import normalize_modality
from medmoe_samples.pairs.real_samples import DICOM_NOUNS, MAX_BYTES, describe_dicom, real_sources

pytestmark = pytest.mark.timeout(120)


def test_every_row_is_a_real_file_with_its_modality(quick_pack):
    root, counts = quick_pack
    folder = root / "real-samples"
    rows = read_rows(folder / "manifest.csv")
    assert counts["real-samples"].total == len(rows) >= 30
    kinds = set()
    for row in rows:
        path = folder / row["image"]
        assert path.is_file() and path.stat().st_size <= MAX_BYTES, row["image"]
        assert row["split"] == "test" and row["report"].strip()
        suffix = "".join(Path(row["image"]).suffixes[-2:]) if row["image"].endswith(".gz") else path.suffix
        kinds.add(suffix)
        if suffix == ".dcm":
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.Modality in DICOM_NOUNS, (row["image"], ds.Modality)
            assert normalize_modality(ds.Modality) == row["modality"], (row["image"], ds.Modality)
        elif suffix in (".jpeg", ".jpg"):
            assert row["modality"] == "xray"
            with Image.open(path) as image:
                assert image.format == "JPEG"
        elif suffix == ".nii.gz":
            assert row["modality"] == "mri"
            assert path.read_bytes()[:2] == b"\x1f\x8b"
        else:
            assert suffix == ".png" and row["modality"] in ("fundus", "pathology")
    assert {".dcm", ".jpeg", ".nii.gz", ".png"} <= kinds
    modalities = {r["modality"] for r in rows}
    assert {"xray", "ct", "mri", "ultrasound", "fundus", "pathology"} <= modalities


def test_pneumonia_rows_follow_their_class(quick_pack):
    root, _ = quick_pack
    rows = [r for r in read_rows(root / "real-samples" / "manifest.csv") if "pneumonia_" in r["image"]]
    assert len(rows) == 16
    for row in rows:
        bacterial = "bacteria" in row["image"]
        assert row["labels"] == ("pneumonia" if bacterial else "normal")
        assert ("bacterial pneumonia" in row["report"]) == bacterial


def test_copies_are_byte_identical_and_large_files_are_skipped():
    sources, missing = real_sources()
    assert any("ultrasound-multiframe" in what and "MB" in why for what, why in missing)
    dicoms = [s for s in sources if s.name.endswith(".dcm")]
    assert len(dicoms) >= 14
    modality, report = describe_dicom(next(s.path for s in dicoms if s.name == "pydicom_RG1_UNCI.dcm"))
    assert modality == "xray" and "chest" in report.lower() and "MONOCHROME1" in report


def test_copied_dicom_is_unchanged(quick_pack):
    root, _ = quick_pack
    sources, _ = real_sources()
    source = next(s for s in sources if s.name == "pydicom_CT_small.dcm")
    assert (root / "real-samples" / "images" / source.name).read_bytes() == source.path.read_bytes()
