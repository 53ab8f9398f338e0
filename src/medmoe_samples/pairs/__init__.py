"""Built-in sample data: offline image-report packs written by ``medmoe data build-samples``.

- ``modality-bench``: generated X-ray, CT, MRI, ultrasound, H&E pathology and fundus images whose findings
  sit at each modality's typical scale, with varied template reports (:mod:`.modality_bench`).
- ``iu-cxr``: the real Indiana University chest X-ray reports with radiographs rendered from their MeSH
  terms (:mod:`.iu_pairs`).
- ``real-samples``: real DICOM / JPEG / NIfTI / PNG files that installed packages carry (:mod:`.real_samples`).

Each pack is ``DIR/<dataset>/manifest.csv`` (an ordinary medmoe manifest, read by
:func:`medmoe.data.read_manifest`) + ``DIR/<dataset>/images/``.

    >>> from medmoe_samples.pairs import build_samples
    >>> counts = build_samples("samples", quick=True)  # doctest: +SKIP

Names are imported on first use so that importing the package stays light.
"""

from __future__ import annotations

from medmoe.lazy_exports import lazy_package

lazy_package(globals(), {".build": "build_samples PACKS",
                         ".rows": "DatasetCounts MANIFEST_NAME assign_splits sample_row"})
