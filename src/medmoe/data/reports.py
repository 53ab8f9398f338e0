"""Radiology report text: section extraction, de-identification debris removal, sentence splitting.

    >>> clean_report("INDICATION: cough.\\nFINDINGS: No XXXX effusion.\\nIMPRESSION: Normal chest.")
    'No effusion. Normal chest.'
"""

from __future__ import annotations

import re

# Sections kept for image-text alignment: what the image shows and the radiologist's conclusion.
KEPT_SECTIONS = ("findings", "impression")
_SECTION_ALIASES = {"finding": "findings", "conclusion": "impression", "conclusions": "impression"}
# Headers that end a kept section. Known names match in any case; other ALL-CAPS words followed by a colon
# at the start of a line ("WET READ:", "NOTIFICATION:") end a section too.
_KNOWN_HEADERS = (
    "findings", "finding", "impression", "conclusion", "conclusions", "indication", "indications", "history",
    "clinical history", "clinical information", "comparison", "comparisons", "technique", "examination",
    "exam", "procedure", "reason for exam", "reason for examination", "recommendation", "recommendations",
    "recommendation(s)", "notification", "addendum", "final report", "wet read", "type of examination",
)
_HEADER = re.compile(
    r"(?m)(?:^|(?<=[.\n]))[ \t]*(?:"
    r"(?P<known>(?i:" + "|".join(re.escape(h).replace(r"\ ", r"\s+") for h in _KNOWN_HEADERS) + r"))"
    r"|(?P<caps>[A-Z][A-Z /()&-]{2,40}))[ \t]*:"
)
# "XXXX" (Open-i) and "___" (MIMIC) redactions; a hyphen glued to one ("x-XXXX") goes with it. Open-i's
# four capital X's are also removed where glued to other characters ("4XXXX", "XXXXPM").
_REDACTION = re.compile(r"(?:(?<=\w)-)?(?:X{4,}|\b[Xx]{2,}\b)|_{2,}")
# A whole word holding an Open-i redaction ("x-XXXX" for "x-ray", "4XXXX,", "XXXXPM").
_REDACTED_WORD = re.compile(r"[\w/-]*XXXX[\w/-]*")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?)])")
_EMPTY_PARENS = re.compile(r"\(\s*\)")
_REPEATED_PUNCT = re.compile(r"([.,;])(?:\s*\1)+")

# Abbreviations after which a full stop does not end a sentence.
_ABBREVIATIONS = ("e.g", "i.e", "approx", "vs", "dr", "mr", "mrs", "ms", "no", "fig", "cf", "etc", "st", "pt")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_LIST_NUMBER = re.compile(r"^\(?\d{1,2}[.)]$")


def extract_sections(text: str) -> dict[str, str]:
    """Split a report into ``{section name (lower case): body}`` by its headers.

    Text before the first header is returned under ``""``. Aliases are folded: "conclusion" becomes
    "impression", "finding" becomes "findings". Repeated sections are joined.
    """
    sections: dict[str, str] = {}
    bounds = [(m.start(), m.end(), _section_name(m)) for m in _HEADER.finditer(text)]
    first = bounds[0][0] if bounds else len(text)
    if text[:first].strip():
        sections[""] = text[:first].strip()
    for i, (_, end, name) in enumerate(bounds):
        stop = bounds[i + 1][0] if i + 1 < len(bounds) else len(text)
        body = text[end:stop].strip()
        sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    return sections


def _section_name(match: re.Match) -> str:
    name = re.sub(r"\s+", " ", (match.group("known") or match.group("caps")).strip().lower())
    return _SECTION_ALIASES.get(name, name)


def normalize_text(text: str, *, drop_redacted_words: bool = False) -> str:
    """Drop redaction marks ("XXXX", "___"), empty brackets and repeated punctuation; collapse whitespace.

    With ``drop_redacted_words`` the whole word an Open-i "XXXX" is glued into goes too: "chest x-XXXX."
    becomes "chest." instead of "chest x.".
    """
    if drop_redacted_words:
        text = _REDACTED_WORD.sub(" ", text)
    text = _REDACTION.sub(" ", text)
    text = _EMPTY_PARENS.sub(" ", text)
    text = re.sub(r"\s+", " ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _REPEATED_PUNCT.sub(r"\1", text)
    text = re.sub(r"^[\s.,;:]+", "", text)
    return text.strip()


def clean_report(text: str | None) -> str:
    """The part of a report that describes the image, cleaned for a text encoder.

    When the report has FINDINGS and/or IMPRESSION sections (headers in any case, "CONCLUSION" counts as
    impression) only those are kept, findings first. Without any such header the whole text is kept.
    Redactions and whitespace are normalised. An empty result means the sample is unusable.

    Args:
        text: the raw report (None is treated as empty).

    Returns:
        The cleaned text, possibly ``""``.
    """
    if not text:
        return ""
    sections = extract_sections(text)
    kept = [sections[name] for name in KEPT_SECTIONS if name in sections]
    # Without findings / impression headers (captions, short or all-caps reports) nothing can be told
    # apart, so everything is kept rather than nothing.
    return normalize_text(" ".join(part for part in kept if part) if kept else text)


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences.

    Splits after ``.``, ``!`` or ``?`` followed by a capital letter or digit; decimals ("1.5 cm") and
    common abbreviations ("e.g.", "approx.") do not split, and list numbers ("1.", "2)") stay attached to
    the sentence they number. Whitespace is normalised; empty pieces are dropped.
    """
    sentences: list[str] = []
    carry = ""  # a list number or a piece ending in an abbreviation, joined to the next piece
    for piece in _SENTENCE_END.split(re.sub(r"\s+", " ", text or "").strip()):
        piece = f"{carry} {piece.strip()}".strip()
        last_word = piece.rsplit(" ", 1)[-1].rstrip(".").lower()
        if _LIST_NUMBER.match(piece) or last_word in _ABBREVIATIONS:
            carry = piece
        elif piece:
            sentences.append(piece)
            carry = ""
    if carry:
        sentences.append(carry)
    return sentences
