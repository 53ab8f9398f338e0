"""The MedMoE paper's reported numbers, quoted so the benchmark can print them next to the user's.

Source: MedMoE (arXiv 2506.08356), Table 1 (zero-shot top-1 accuracy, %, UniMed-CLIP's protocol: prompt
ensembles, top-1 accuracy) and Table 2 (MedMoE's linear-probe accuracy, %, at 1 / 10 / 100 % of the
training labels). Keys are the suite's set names (:data:`medmoe.align.suites.sets.EVAL_SETS`).
"""

from __future__ import annotations

CITATION_TABLE1 = "MedMoE, arXiv 2506.08356, Table 1"
CITATION_TABLE2 = "MedMoE, arXiv 2506.08356, Table 2"

TABLE1_SETS = ("chexpert-5x200", "rsna-pneumonia", "thyroid-us", "breast-us", "acl-mri", "meniscus-mri",
               "ct-axial", "ct-coronal", "ct-sagittal")


def _row(*values: float) -> dict[str, float]:
    return dict(zip((*TABLE1_SETS, "avg"), values, strict=True))


TABLE1: dict[str, dict[str, float]] = {
    "MedCLIP (Swin)": _row(59.42, 73.63, 44.68, 53.98, 68.01, 45.27, 9.87, 13.92, 10.36, 42.12),
    "BiomedCLIP": _row(38.30, 72.56, 61.05, 68.12, 47.89, 40.09, 29.13, 19.09, 20.39, 44.06),
    "UniMed-CLIP": _row(65.90, 71.65, 71.35, 66.31, 85.82, 85.27, 37.54, 24.43, 31.72, 59.98),
    "MedMoE": _row(66.03, 78.32, 62.74, 69.32, 77.92, 74.87, 40.00, 28.32, 26.83, 58.26),
}

TABLE2_FRACTIONS = ("1%", "10%", "100%")
TABLE2: dict[str, dict[str, float]] = {
    "rsna-pneumonia": {"1%": 81.12, "10%": 83.84, "100%": 87.83},
    "thyroid-us": {"1%": 73.99, "10%": 76.96, "100%": 79.83},
    "acl-mri": {"1%": 85.89, "10%": 89.77, "100%": 92.84},
    "ct-axial": {"1%": 42.68, "10%": 62.13, "100%": 76.38},
}
