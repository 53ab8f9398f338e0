"""Built-in sample data: offline image-report packs written by ``medmoe data build-samples``.

- ``modality-bench``: generated X-ray, CT, MRI, ultrasound, H&E pathology and fundus images whose findings
  sit at each modality's typical scale, with varied template reports (:mod:`.modality_bench`).
- ``iu-cxr``: the real Indiana University chest X-ray reports with radiographs rendered from their MeSH
  terms (:mod:`.iu_pairs`).
- ``real-samples``: real DICOM / JPEG / NIfTI / PNG files that installed packages carry (:mod:`.real_samples`).

Each pack is ``DIR/<dataset>/manifest.csv`` (columns in :data:`MANIFEST_COLUMNS`) + ``DIR/<dataset>/images/``.
"""

from medmoe.data.samples.build import PACKS, build_samples
from medmoe.data.samples.manifest_writer import (
    LABEL_SEPARATOR,
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    MODALITIES,
    SPLITS,
    DatasetCounts,
    SampleRow,
    write_manifest,
)

__all__ = [
    "LABEL_SEPARATOR",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "MODALITIES",
    "PACKS",
    "SPLITS",
    "DatasetCounts",
    "SampleRow",
    "build_samples",
    "write_manifest",
]
