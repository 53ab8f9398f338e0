"""medmoe.data: reading medical images and reports, manifests, datasets, adapters and shards.

    >>> from medmoe.data import read_image, ImageReportDataset, collate_image_report
    >>> image, meta = read_image("scan.dcm")
    >>> ds = ImageReportDataset("train.csv", split="train", train=True)

Names are imported on first use so that ``import medmoe.data`` (and ``medmoe --help``) stays light.
"""

from __future__ import annotations

from medmoe.lazy_exports import lazy_getattr

_EXPORTS = {
    "read_image": "medmoe.data.readers",
    "decode_image": "medmoe.data.readers",
    "ImageMeta": "medmoe.data.readers",
    "MissingFileError": "medmoe.errors",
    "MODALITIES": "medmoe.data.modalities",
    "normalize_modality": "medmoe.data.modalities",
    "modality_index": "medmoe.data.modalities",
    "guess_modality": "medmoe.data.modalities",
    "ImageTransform": "medmoe.data.transforms",
    "ManifestRow": "medmoe.data.manifest",
    "read_manifest": "medmoe.data.manifest",
    "write_manifest": "medmoe.data.manifest",
    "SPLITS": "medmoe.data.manifest",
    "clean_report": "medmoe.data.reports",
    "split_sentences": "medmoe.data.reports",
    "Volume": "medmoe.data.volumes",
    "read_ct": "medmoe.data.volumes",
    "read_label": "medmoe.data.volumes",
    "write_nifti": "medmoe.data.volumes",
    "BadSample": "medmoe.data.dataset",
    "ImageReportDataset": "medmoe.data.dataset",
    "collate_image_report": "medmoe.data.dataset",
    "check_manifest": "medmoe.data.check",
    "ShardDataset": "medmoe.data.shards",
    "write_shards": "medmoe.data.shards",
    "import_source": "medmoe.data.adapters",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
