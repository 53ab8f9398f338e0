"""H&E pathology cases of the modality benchmark: normal mucosa, tumour, inflammation.

Tags: ``tumour``, ``inflammation`` or ``normal``.
"""

from __future__ import annotations

import numpy as np

from medmoe_samples.pairs.case import Pair, tags_or_normal
from medmoe_samples.pairs.render_pathology import TISSUE_KINDS, PathologyFindings, render_pathology
from medmoe_samples.pairs.report_text import compose, negate, pick

_HEADERS = ("H&E section.", "Histology (H&E, 20x):", "Microscopy:", None, None)
_SENTENCES = {
    "normal": ("Colonic mucosa with regular crypts and basally located nuclei.",
               "Benign glandular mucosa with preserved architecture.",
               "Regularly spaced glands lined by uniform epithelium."),
    "tumour": ("Sheets of atypical cells with enlarged, hyperchromatic, pleomorphic nuclei.",
               "Invasive adenocarcinoma with loss of glandular architecture.",
               "Malignant epithelial proliferation with crowded, pleomorphic nuclei.",
               "Tumour cells in solid sheets with high nuclear density."),
    "inflammation": ("Dense lymphocytic infiltrate in the lamina propria.",
                     "Chronic inflammation with numerous lymphocytes between intact crypts.",
                     "The stroma is crowded with small round inflammatory cells."),
}
_NEGATED = {"tumour": ("dysplasia or malignancy", "malignancy", "carcinoma"),
            "inflammation": ("significant inflammation", "inflammatory infiltrate")}


def make_pathology_case(rng: np.random.Generator, size: int = 224) -> Pair:
    """Draw the tissue kind, render the H&E patch and write its report (a :class:`~.case.PairMaker`;
    a (size, size, 3) uint8 RGB image)."""
    tissue = TISSUE_KINDS[int(rng.integers(len(TISSUE_KINDS)))]
    description = pick(rng, _SENTENCES[tissue])
    # A normal patch is described but names no finding; abnormal ones state theirs.
    positives = [] if tissue == "normal" else [description]
    fillers = [description] if tissue == "normal" else []
    if tissue == "inflammation" and rng.random() < 0.5:
        fillers.append("The crypt architecture is preserved.")
    absent = [k for k in ("tumour", "inflammation") if k != tissue]
    denied = [pick(rng, _NEGATED[k]) for k in absent if tissue == "normal" or rng.random() < 0.6]
    negatives = negate(rng, denied)
    impression = "Benign tissue." if tissue == "normal" and rng.random() < 0.5 else None
    report = compose(rng, positives, negatives, pick(rng, _HEADERS), fillers, impression)
    image = render_pathology(PathologyFindings(tissue), rng, size)
    return Pair(image=image, report=report, labels=tags_or_normal([] if tissue == "normal" else [tissue]))
