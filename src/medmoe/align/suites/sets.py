"""The evaluation sets of the papers' protocols: where each lives under a root, its classes and prompts.

Each set is read by a data adapter (:data:`medmoe.data.adapters.SOURCES`) from its public layout, found
in the first of its folder names that exists under the benchmark root (``ROOT/MRNet-v1.0``,
``ROOT/medmnist`` ...). A class's prompts are short radiology-style phrasings written for medmoe in the
manner of UniMed-CLIP's ensembles (several templates per class, averaged); they are not UniMed-CLIP's text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medmoe.data.adapters.chexpert5x200 import CLASSES as CHEXPERT_CLASSES
from medmoe.data.adapters.medmnist_organ import CLASSES as ORGAN_CLASSES
from medmoe.errors import InvalidInputError


@dataclass(frozen=True)
class EvalSet:
    """One labelled test set of the protocols.

    Attributes:
        name: the suite's name of the set (``--sets``); column: the paper's column title.
        source: the adapter that reads it (a key of :data:`medmoe.data.adapters.SOURCES`).
        folders: folder names tried under the root, in order.
        prompts: class (as the adapter labels rows) -> prompt ensemble; the score columns, in order.
        options: extra keyword arguments of the adapter.
        writes_pngs: the adapter writes PNGs of array-stored images; it takes ``cache_dir`` and ``splits``
            (so that a zero-shot run writes only the test images).
        alternatives: other ``(source, folders)`` layouts of the same set (UniMed-CLIP's prepared folders),
            tried when none of ``folders`` exists.
    """

    name: str
    column: str
    source: str
    folders: tuple[str, ...]
    prompts: Mapping[str, tuple[str, ...]]
    options: Mapping[str, Any] = field(default_factory=dict)
    writes_pngs: bool = False
    alternatives: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def classes(self) -> list[str]:
        return list(self.prompts)


def _fill(templates: tuple[str, ...], phrases: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """``{class: (template.format(phrase), ...)}`` for each class and its readable phrase."""
    return {name: tuple(t.format(phrase) for t in templates) for name, phrase in phrases.items()}


_CXR_TEMPLATES = ("{}.", "chest x-ray showing {}.", "frontal chest radiograph with {}.",
                  "findings consistent with {}.", "{} is seen on the chest film.")
_CHEXPERT = _fill(_CXR_TEMPLATES, {c: c.lower() for c in CHEXPERT_CLASSES})

_RSNA = {
    "normal": ("a normal chest x-ray.", "clear lungs, no focal consolidation.", "no evidence of pneumonia.",
               "chest radiograph without acute cardiopulmonary findings."),
    "pneumonia": ("chest x-ray showing pneumonia.", "airspace opacity consistent with pneumonia.",
                  "focal consolidation in the lung.", "findings suggestive of infectious pneumonia."),
}

_US_TEMPLATES = ("a {} {} on ultrasound.", "ultrasound image of a {} {}.", "sonography showing a {} {}.",
                 "features of a {} {}.")


def _lesion(organ_lesion: str, classes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {c: tuple(t.format(c, organ_lesion) for t in _US_TEMPLATES) for c in classes}


_THYROID = _lesion("thyroid nodule", ("benign", "malignant"))
_BREAST = _lesion("breast lesion", ("benign", "malignant"))

_ACL = {
    "normal": ("knee mri with an intact anterior cruciate ligament.", "normal acl on knee mri.",
               "the anterior cruciate ligament is intact.", "no acl tear."),
    "acl tear": ("knee mri showing a torn anterior cruciate ligament.", "acl tear on knee mri.",
                 "rupture of the anterior cruciate ligament.", "complete tear of the acl."),
}
_MENISCUS = {
    "normal": ("knee mri with intact menisci.", "normal meniscus on knee mri.", "no meniscal tear.",
               "the medial and lateral menisci are intact."),
    "meniscal tear": ("knee mri showing a meniscal tear.", "tear of the meniscus on knee mri.",
                      "torn medial meniscus.", "meniscal tear with signal reaching the articular surface."),
}


def _organs(view: str) -> dict[str, tuple[str, ...]]:
    templates = ("a ct scan of the {}.", f"an {view} ct slice showing the {{}}." if view == "axial"
                 else f"a {view} ct slice showing the {{}}.", "computed tomography of the {}.", "the {} on ct.")
    # femur-left -> left femur
    return _fill(templates, {c: " ".join(reversed(c.split("-"))) for c in ORGAN_CLASSES})


_MEDMNIST = ("medmnist", "MedMNIST")
_MRNET = ("MRNet-v1.0", "mrnet")

EVAL_SETS: dict[str, EvalSet] = {s.name: s for s in (
    EvalSet("chexpert-5x200", "CheXpert5x200", "chexpert5x200", ("chexpert", "CheXpert-v1.0", "chexpert-5x200"),
            _CHEXPERT),
    EvalSet("rsna-pneumonia", "RSNA", "rsna-pneumonia", ("rsna-pneumonia", "rsna-pneumonia-detection-challenge",
                                                         "rsna"), _RSNA,
            alternatives=(("unimed-rsna-pneumonia", ("rsna_custom_test_set",)),)),
    EvalSet("thyroid-us", "Thyroid US", "thyroid-us", ("thyroid_us", "thyroid-us"), _THYROID),
    EvalSet("breast-us", "Breast US", "busi", ("busi", "Dataset_BUSI_with_GT"), _BREAST,
            alternatives=(("unimed-breast-us", ("breast_us",)),)),
    EvalSet("acl-mri", "ACL MRI", "mrnet-acl", _MRNET, _ACL, writes_pngs=True,
            alternatives=(("unimed-acl-mri", ("acl_mri",)),)),
    EvalSet("meniscus-mri", "Meniscus MRI", "mrnet-meniscus", _MRNET, _MENISCUS, writes_pngs=True,
            alternatives=(("unimed-meniscus-mri", ("meniscal_mri",)),)),
    *(EvalSet(f"ct-{view}", f"CT {view}", f"organ{view[0]}mnist", (*_MEDMNIST, f"organs_{view}"),
              _organs(view), writes_pngs=True) for view in ("axial", "coronal", "sagittal")),
)}

ZEROSHOT_SETS = tuple(EVAL_SETS)
PROBE_SETS = ("rsna-pneumonia", "thyroid-us", "acl-mri", "ct-axial")


def select_sets(names: str | list[str] | tuple[str, ...] | None, default: tuple[str, ...]) -> list[EvalSet]:
    """The sets named (a list or a comma-separated string; default ``default``), in the given order.

    Raises:
        InvalidInputError: an unknown name, or none.
    """
    names = default if names is None else names
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in EVAL_SETS]
    if unknown or not names:
        raise InvalidInputError(f"evaluation set(s) {unknown or names}: expected some of {list(EVAL_SETS)}")
    return [EVAL_SETS[n] for n in dict.fromkeys(names)]
