"""An independent reader of the sample reports: parses findings back from the text.

It shares no code with the generators (only the tag grammar documented in their modules), so a report
that fails to say what its labels say is caught.
"""

from __future__ import annotations

import re

NEGATION = re.compile(r"\b(no|not|without|negative|free|clear|normal|unremarkable|absent|sharp)\b", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+(?=[A-Z])")

FINDINGS = {
    "xray": {
        "cardiomegaly": r"cardiomegaly|enlarge\w*.*\b(heart|cardiac)\b|\b(heart|cardiac)\b.*enlarge|cardiothoracic ratio",
        "effusion": r"effusion|pleural fluid|pleural space|costophrenic",
        "opacity": r"opaci|consolidation|infiltrate",
    },
    "ct": {"nodule": r"nodul", "liver_lesion": r"(liver|hepatic)\b.*\blesion|\blesion\b.*\b(liver|hepatic)"},
    "mri": {"mass": r"\b(mass|lesion)\b(?! effect)"},
    "ultrasound": {"cyst": r"\bcyst|anechoic", "solid_mass": r"\bsolid\b", "calcification": r"calcif"},
    "pathology": {"tumour": r"carcinoma|malignan|tumou?r|atypical|neoplas", "inflammation": r"inflamm|lymphocyt"},
    "fundus": {"haemorrhage": r"ha?emorrhag", "exudate": r"exudate", "cupping": r"cupping|cup-to-disc|\bC/D\b|optic cup"},
}


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def _sides(sentence: str) -> list[str]:
    s = sentence.lower()
    if re.search(r"\b(bilateral|both)\b", s):
        return ["left", "right"]
    return [side for side in ("left", "right") if re.search(rf"\b{side}\b", s)]


def _size(sentence: str, threshold_mm: float) -> str | None:
    s = sentence.lower()
    if re.search(r"\blarge\b", s):
        return "large"
    if re.search(r"\bsmall\b", s):
        return "small"
    mm = re.search(r"(\d+(?:\.\d+)?)\s*-?\s*mm", s)
    return None if mm is None else ("small" if float(mm.group(1)) < threshold_mm else "large")


def _tags(modality: str, kind: str, sentence: str) -> list[str]:
    s = sentence.lower()
    if modality == "xray" and kind == "effusion":
        return [f"effusion_{side}" for side in _sides(s)]
    if modality == "xray" and kind == "opacity":
        zone = "upper" if "upper" in s else "lower" if re.search(r"lower|\bbase\b|basal", s) else None
        return [f"opacity_{side}" + (f"_{zone}" if zone else "") for side in _sides(s)]
    if modality == "ct" and kind == "nodule":
        return [f"nodule_{side}" for side in _sides(s)]
    if modality == "mri":
        signal = "hyperintense" if re.search(r"hyperintense|high-signal|bright", s) else "hypointense"
        return [f"{signal}_mass_{side}_{_size(s, 24.0)}" for side in _sides(s)]
    if modality == "ultrasound" and kind != "calcification":
        return [f"{kind}_{_size(s, 9.0)}"]
    return [kind]


def parse_report(modality: str, text: str) -> tuple[set[str], set[str]]:
    """Findings a report states and finding kinds it denies.

    Returns:
        ``(positive_tags, negated_kinds)`` in the generators' tag grammar.
    """
    positives, negated = set(), set()
    for sentence in split_sentences(text):
        for kind, pattern in FINDINGS[modality].items():
            if not re.search(pattern, sentence, re.I):
                continue
            if NEGATION.search(sentence):
                negated.add(kind)
            else:
                positives.update(_tags(modality, kind, sentence))
    return positives, negated
