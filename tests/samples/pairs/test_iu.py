"""The IU reports are read from the installed torchxrayvision package and their MeSH terms drive the images."""

from __future__ import annotations

import re

import numpy as np
import pytest
import testkit.sample_measures as measure
from PIL import Image
from testkit.sample_measures import read_rows

from medmoe_samples.pairs.iu_reports import (
    EXPECTED_REPORTS,
    IUReport,
    find_iu_archive,
    parse_mesh_term,
    read_iu_reports,
    report_findings,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def reports():
    return read_iu_reports()


def test_archive_is_found_without_importing_the_package():
    import sys

    path = find_iu_archive()
    assert path.name == "NLMCXR_reports.tgz" and path.parent.name == "data"
    assert "torchxrayvision" not in sys.modules


def test_report_count_and_text(reports):
    assert len(reports) == EXPECTED_REPORTS
    with_text = [r for r in reports if r.text]
    assert 3900 <= len(with_text) <= EXPECTED_REPORTS  # 3,927 in torchxrayvision 1.5.7
    assert not any("XXXX" in r.text for r in with_text)
    assert all(r.text == " ".join(r.text.split()) for r in with_text[:500])
    normal = sum(any(f.kind == "normal" for f in report_findings(r)) for r in with_text)
    assert 1200 < normal < 1500  # about a third of IU reports are tagged normal


@pytest.mark.parametrize(
    ("term", "tags"),
    [
        ("Opacity/lung/base/left/mild", ["opacity_left_lower"]),
        ("Cardiomegaly/mild", ["cardiomegaly"]),
        ("Pleural Effusion/right", ["effusion_right"]),
        ("Pleural Effusion/bilateral/small", ["effusion_left", "effusion_right"]),
        ("Nodule/lung/upper lobe/left", ["nodule_left_upper"]),
        ("Pulmonary Atelectasis/base/left", ["atelectasis_left_lower"]),
        ("Opacity/lung/lingula", ["opacity_left_middle"]),
        ("Airspace Disease/lung/middle lobe", ["opacity_right_middle"]),
        ("Lung/hypoinflation/mild", ["low_lung_volumes"]),
        ("normal", ["normal"]),
        ("Thoracic Vertebrae/degenerative/mild", []),
    ],
)
def test_mesh_terms_parse_to_tags(term, tags):
    assert [f.tag for f in parse_mesh_term(term)] == tags


def test_mesh_modifiers_are_kept():
    (finding,) = parse_mesh_term("Opacity/lung/base/left/mild")
    assert (finding.side, finding.zone, finding.modifiers) == ("left", "lower", ("mild",))


def test_report_text_is_findings_then_impression_without_redactions():
    report = IUReport("CXR0", "Normal  heart. There are no XXXX of effusion .", "Normal chest x-XXXX.", ())
    assert report.text.startswith("Normal heart. There are no of effusion.")
    assert "XXXX" not in report.text and "  " not in report.text and report.text.endswith(".")
    assert IUReport("CXR0", " ", "", ("normal",)).text == ""


def test_pack_rows_carry_real_text_and_parsed_tags(quick_pack, reports):
    root, counts = quick_pack
    rows = read_rows(root / "iu-cxr" / "manifest.csv")
    assert counts["iu-cxr"].total == len(rows) == 120 and counts["iu-cxr"].skipped == 28
    by_uid = {r.uid: r for r in reports}
    for row in rows:
        uid = re.search(r"(CXR\d+)\.png$", row["image"]).group(1)
        report = by_uid[uid]
        assert row["report"] == report.text and row["modality"] == "xray"
        expected = sorted({f.tag for f in report_findings(report)})
        assert (row["labels"].split("|") if row["labels"] else []) == expected


def test_pack_images_show_cardiomegaly(quick_pack):
    root, _ = quick_pack
    folder = root / "iu-cxr"
    ratios = {"cardiomegaly": [], "normal": []}
    for row in read_rows(folder / "manifest.csv"):
        labels = set(row["labels"].split("|"))
        if labels in ({"cardiomegaly"}, {"normal"}):
            ratios[labels.pop()].append(measure.heart_width_ratio(np.asarray(Image.open(folder / row["image"]))))
    assert len(ratios["normal"]) >= 10 and len(ratios["cardiomegaly"]) >= 1, ratios
    assert min(ratios["cardiomegaly"]) > max(ratios["normal"]), ratios
