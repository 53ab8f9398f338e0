"""medmoe.data: reading medical images and reports, manifests, datasets, adapters and shards.

    >>> from medmoe.data import read_image, ImageReportDataset, collate_image_report
    >>> image, meta = read_image("scan.dcm")
    >>> ds = ImageReportDataset("train.csv", split="train", train=True)

Names are imported on first use so that ``import medmoe.data`` (and ``medmoe --help``) stays light.
"""

from __future__ import annotations

from medmoe.lazy_exports import lazy_package

lazy_package(globals(), {
    ".readers": "read_image decode_image ImageMeta",
    "medmoe.errors": "MissingFileError",
    ".modalities": "MODALITIES normalize_modality modality_index guess_modality",
    ".transforms": "ImageTransform",
    ".manifest": "ManifestRow read_manifest write_manifest SPLITS",
    ".reports": "clean_report split_sentences",
    ".volumes": "Volume read_ct read_label write_nifti",
    ".dataset": "BadSample ImageReportDataset collate_image_report",
    ".check": "check_manifest",
    ".shards": "ShardDataset write_shards",
    ".adapters": "import_source",
})
