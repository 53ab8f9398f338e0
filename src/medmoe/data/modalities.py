"""medmoe's modality vocabulary and the names and DICOM codes that map onto it.

The MoE routes images to modality-specialised experts, so every data source has to speak one vocabulary:
``MODALITIES``. DICOM ``Modality`` codes (CR, DX, MR, SM, ...) and the free-text names used by datasets
("x-ray", "MRI", "sonography", ...) are normalised here.

    >>> normalize_modality("DX")
    'xray'
    >>> modality_index("Magnetic Resonance")
    2
"""

from __future__ import annotations

import re

from medmoe.errors import InvalidInputError

MODALITIES: tuple[str, ...] = ("xray", "ct", "mri", "ultrasound", "pathology", "fundus")

# Keys are compared after _key(): lower case, runs of space/underscore/hyphen/dot collapsed to one space.
_SYNONYMS: dict[str, str] = {
    # projection radiography, DICOM CR/DX/MG/RF/XA/IO/PX/DXA
    "xray": "xray", "x ray": "xray", "xr": "xray", "radiograph": "xray", "radiography": "xray",
    "radiographs": "xray", "plain film": "xray", "plain radiograph": "xray", "cxr": "xray",
    "chest x ray": "xray", "chest radiograph": "xray", "cr": "xray", "dx": "xray", "mg": "xray",
    "mammography": "xray", "mammogram": "xray", "rf": "xray", "fluoroscopy": "xray", "xa": "xray",
    "angiography": "xray", "io": "xray", "px": "xray", "panoramic x ray": "xray", "rg": "xray",
    "computed radiography": "xray", "digital radiography": "xray",
    # computed tomography
    "ct": "ct", "computed tomography": "ct", "ct scan": "ct", "cat": "ct", "cat scan": "ct",
    "cta": "ct", "ct angiography": "ct", "hrct": "ct", "cect": "ct", "ncct": "ct",
    "computerized tomography": "ct", "computerised tomography": "ct",
    # magnetic resonance
    "mr": "mri", "mri": "mri", "magnetic resonance": "mri", "magnetic resonance imaging": "mri",
    "mr imaging": "mri", "mra": "mri", "nmr": "mri", "fmri": "mri",
    # ultrasound
    "us": "ultrasound", "ultrasound": "ultrasound", "ultrasonography": "ultrasound", "sonography": "ultrasound",
    "sonogram": "ultrasound", "echography": "ultrasound", "echo": "ultrasound", "echocardiography": "ultrasound",
    "echocardiogram": "ultrasound", "doppler": "ultrasound", "ivus": "ultrasound", "usg": "ultrasound",
    # pathology, DICOM SM (slide microscopy) / GM (general microscopy)
    "pathology": "pathology", "histopathology": "pathology", "histology": "pathology", "sm": "pathology",
    "gm": "pathology", "slide microscopy": "pathology", "microscopy": "pathology", "whole slide": "pathology",
    "whole slide image": "pathology", "wsi": "pathology", "cytology": "pathology", "he": "pathology",
    # fundus photography, DICOM OP (ophthalmic photography) / XC (external camera)
    "fundus": "fundus", "fundus photo": "fundus", "fundus photograph": "fundus", "fundus photography": "fundus",
    "fundoscopy": "fundus", "funduscopy": "fundus", "retina": "fundus", "retinal": "fundus",
    "retinal photograph": "fundus", "retinal image": "fundus", "cfp": "fundus", "op": "fundus", "xc": "fundus",
    "ophthalmic photography": "fundus",
}

# Words in a caption that give the modality away, checked as whole words (case-insensitive).
_TEXT_CUES: dict[str, tuple[str, ...]] = {
    "xray": (r"x-?rays?", r"radiograph(?:s|y|ic)?", r"chest film", r"mammogra(?:m|phy)", r"fluoroscop(?:y|ic)"),
    "ct": (r"ct", r"computed tomograph(?:y|ic)", r"computeri[sz]ed tomography", r"hrct", r"cect", r"cta"),
    "mri": (r"mri?", r"magnetic resonance", r"t1-?weighted", r"t2-?weighted", r"flair", r"mra"),
    "ultrasound": (r"ultrasound", r"ultrasonograph(?:y|ic)", r"sonograph(?:y|ic)?", r"sonogram",
                   r"echocardiogra(?:m|phy)", r"doppler", r"hyperechoic", r"hypoechoic", r"anechoic"),
    "pathology": (r"histopatholog(?:y|ical)", r"histolog(?:y|ical)", r"h&e", r"hematoxylin", r"biopsy specimen",
                  r"micrograph"),
    "fundus": (r"fundus", r"fundoscop(?:y|ic)", r"retinal photograph", r"optic disc", r"macula"),
}
_TEXT_PATTERNS = {
    name: re.compile(r"(?<![\w-])(?:" + "|".join(cues) + r")(?![\w-])", re.IGNORECASE)
    for name, cues in _TEXT_CUES.items()
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-./]+", " ", name.strip().lower()).strip()


def normalize_modality(name: str) -> str:
    """Map a modality name, synonym or DICOM ``Modality`` code onto :data:`MODALITIES`.

    Args:
        name: e.g. ``"CR"``, ``"X-Ray"``, ``"MRI"``, ``"sonography"``, ``"SM"``, ``"fundus"``.

    Returns:
        One of :data:`MODALITIES`.

    Raises:
        InvalidInputError: ``name`` is not a known modality; the message lists the valid names.
    """
    found = try_normalize_modality(name)
    if found is None:
        raise InvalidInputError(
            f"unknown modality {name!r}; expected one of {list(MODALITIES)} "
            "(or a synonym / DICOM code such as CR, DX, MG, CT, MR, US, SM, OP)"
        )
    return found


def try_normalize_modality(name: str | None) -> str | None:
    """Like :func:`normalize_modality` but returns None for an unknown or empty name."""
    if not isinstance(name, str):  # None included
        return None
    return _SYNONYMS.get(_key(name))


def modality_index(name: str) -> int:
    """Position of a modality in :data:`MODALITIES` (the label used by the modality router).

    Raises:
        InvalidInputError: unknown modality, as in :func:`normalize_modality`.
    """
    return MODALITIES.index(normalize_modality(name))


def guess_modality(text: str) -> str | None:
    """Guess the modality from free text (a caption or report) by the words it uses.

    Returns the modality only when exactly one modality's cue words occur, otherwise None; captions such
    as "PET/CT and MRI ..." are ambiguous and stay unlabelled rather than mislabelled.
    """
    if not text:
        return None
    hits = [name for name, pattern in _TEXT_PATTERNS.items() if pattern.search(text)]
    return hits[0] if len(hits) == 1 else None
