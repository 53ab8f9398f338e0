"""Modality vocabulary and report cleaning (including the real Open-i reports shipped by torchxrayvision)."""

from __future__ import annotations

import re
import tarfile

import pytest
from testkit.data import package_dir

from medmoe.data.modalities import MODALITIES, guess_modality, modality_index, normalize_modality
from medmoe.data.reports import clean_report, extract_sections, normalize_text, split_sentences
from medmoe.errors import InvalidInputError

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CR", "xray"), ("DX", "xray"), ("MG", "xray"), ("X-Ray", "xray"), ("radiograph", "xray"),
        ("CT", "ct"), ("Computed Tomography", "ct"),
        ("MR", "mri"), ("MRI", "mri"), ("magnetic_resonance", "mri"),
        ("US", "ultrasound"), ("sonography", "ultrasound"), ("Ultrasound", "ultrasound"),
        ("SM", "pathology"), ("histopathology", "pathology"),
        ("OP", "fundus"), ("XC", "fundus"), ("fundus photograph", "fundus"),
    ],
)
def test_normalize_modality(name, expected):
    assert normalize_modality(name) == expected
    assert modality_index(name) == MODALITIES.index(expected)


def test_unknown_modality_lists_valid_names():
    with pytest.raises(InvalidInputError) as info:
        normalize_modality("PET")
    message = str(info.value)
    assert "'PET'" in message
    assert all(name in message for name in MODALITIES)


def test_modality_order_is_the_router_label_order():
    assert MODALITIES == ("xray", "ct", "mri", "ultrasound", "pathology", "fundus")


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("Axial MRI (coronal view).", "mri"),
        ("Coronal plain computed tomography image showing masses.", "ct"),
        ("Anteroposterior radiograph of pelvis at follow up.", "xray"),
        ("Initial chest x-ray showing a left pneumothorax.", "xray"),
        ("Doppler ultrasound of the testicle.", "ultrasound"),
        ("PET/CT and MRI of the same lesion.", None),  # two modalities: ambiguous
        ("Postoperative decreased size of the cyst", None),
        ("CTO of RCA (closure in the 2nd segment)", None),  # 'CTO' is not 'CT'
    ],
)
def test_guess_modality(caption, expected):
    assert guess_modality(caption) == expected


MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_clean_report_keeps_findings_and_impression_only():
    cleaned = clean_report(MIMIC_STYLE)
    assert cleaned == (
        "There is no focal consolidation, pleural effusion or pneumothorax. The cardiomediastinal "
        "silhouette is normal. No acute cardiopulmonary process."
    )
    sections = extract_sections(MIMIC_STYLE)
    assert {"examination", "indication", "comparison", "findings", "impression"} <= set(sections)
    assert "ascites" in sections["indication"]


def test_clean_report_headers_any_case_and_redactions():
    text = "indication: XXXX.\nFindings: No XXXX   effusion .\n\nimpression:  Normal chest x-XXXX. ___"
    assert clean_report(text) == "No effusion. Normal chest x."
    assert clean_report("Conclusion: stable nodule.") == "stable nodule."
    assert clean_report("Findings: Chest 4XXXX, dated XXXXPM. Normal.") == "Chest 4, dated PM. Normal."


def test_normalize_text_can_drop_whole_redacted_words():
    text = "Normal chest x-XXXX. Chest 4XXXX, dated XXXXPM. No XXXX  effusion ."
    assert normalize_text(text) == "Normal chest x. Chest 4, dated PM. No effusion."
    assert normalize_text(text, drop_redacted_words=True) == "Normal chest. Chest, dated. No effusion."
    assert normalize_text("T12/XXXX-level and left-sided", drop_redacted_words=True) == "and left-sided"


def test_clean_report_without_headers_keeps_the_text():
    assert clean_report("  Axial CT shows a mass\n(arrow).  ") == "Axial CT shows a mass (arrow)."
    assert clean_report("HEART SIZE: NORMAL. LUNGS: CLEAR.") == "HEART SIZE: NORMAL. LUNGS: CLEAR."


@pytest.mark.parametrize("text", [None, "", "   ", "FINDINGS:\nIMPRESSION:\n", "XXXX XXXX. ___", "FINDINGS: XXXX."])
def test_reports_that_clean_to_nothing(text):
    assert clean_report(text) == ""


def test_split_sentences():
    text = "Heart size normal. 1. No acute process. 2. Stable 1.5 cm nodule, e.g. Granuloma. Lungs clear!"
    assert split_sentences(text) == [
        "Heart size normal.",
        "1. No acute process.",
        "2. Stable 1.5 cm nodule, e.g. Granuloma.",
        "Lungs clear!",
    ]
    assert split_sentences("") == []


def _open_i_reports(limit: int) -> list[str]:
    """FINDINGS/IMPRESSION of real Indiana University reports, read from the installed package."""
    import xml.etree.ElementTree as ET

    archive = package_dir("torchxrayvision") / "data" / "NLMCXR_reports.tgz"
    texts = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.name.endswith(".xml"):
                continue
            root = ET.fromstring(tar.extractfile(member).read())
            parts = [f"{n.get('Label')}: {n.text or ''}" for n in root.iter("AbstractText")]
            texts.append("\n".join(parts))
            if len(texts) >= limit:
                break
    return texts


def test_real_open_i_reports_clean_without_redactions():
    reports = _open_i_reports(300)
    assert len(reports) == 300
    redacted = [r for r in reports if "XXXX" in r]
    assert redacted, "the real reports contain XXXX redactions"
    for raw in reports:
        cleaned = clean_report(raw)
        assert "XXXX" not in cleaned
        assert "INDICATION" not in cleaned and "COMPARISON" not in cleaned
        assert not re.search(r"\s{2,}", cleaned)
        impression = re.search(r"IMPRESSION: (.*)", raw)
        if impression and impression.group(1).strip() and "XXXX" not in impression.group(1):
            # the impression's words survive, in order (punctuation may be tidied)
            words = " ".join(re.findall(r"\w+", impression.group(1)))
            assert words in " ".join(re.findall(r"\w+", cleaned))
