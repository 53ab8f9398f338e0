"""Any other CT dataset: paired ``images/`` and ``labels/`` folders with a ``labels.yaml`` naming the labels.

``labels.yaml``::

    dataset: my-hospital-liver     # a dataset of `medmoe seg classes`: its map is checked against `labels`;
                                   # any other name: `labels` becomes that dataset's map in the datalist
    labels:                        # label id -> class (names, synonyms and small typos of the class template)
      1: liver
      2: liver tumour
    validation: [case_007]         # optional: case ids of the validation split
    test: [case_009]               # optional: case ids of the test split

An image ``<case>.nii.gz`` (or ``<case>_0000.nii.gz``) pairs with ``labels/<case>.nii.gz``; images without a
label are test cases.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.importers.core import (
    Imported,
    channel_stem,
    check_label_list,
    nifti_files,
    own_label_map,
    pair_by_case,
    require_dir,
    resolve_dataset,
)


def import_folders(root: Path, *, template: ClassTemplate, labels: Path | None = None, dataset: str | None = None,
                   **_) -> Imported:
    """``root/images/`` and ``root/labels/`` described by ``root/labels.yaml`` (or ``labels``)."""
    path = labels or root / "labels.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise InvalidInputError(f"{path}: not found; the folders format needs a labels.yaml naming the dataset and "
                                "its labels (see docs/data.md)") from err
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path}: not readable YAML ({err})") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("labels"), dict):
        raise InvalidInputError(f"{path}: expected a mapping with 'dataset' and 'labels' ({{1: liver, ...}})")
    name = dataset or doc.get("dataset")
    if not name:
        raise InvalidInputError(f"{path}: no 'dataset' name (or pass --dataset)")
    known = resolve_dataset(template, str(name))
    if known is not None:
        check_label_list(template, known, doc["labels"], path)
    maps = {} if known is not None else {str(name): own_label_map(template, doc["labels"], path)}
    cases = pair_by_case(nifti_files(require_dir(root / "images", "images/ with the CTs")),
                         nifti_files(require_dir(root / "labels", "labels/ with the label maps")), split="training",
                         image_key=channel_stem, label_key=channel_stem, source=root, require_labels=False)
    if not cases:
        raise InvalidInputError(f"{root / 'images'}: no NIfTI images")
    by_id = {c.case_id: c for c in cases}
    for split in ("validation", "test"):
        for case_id in doc.get(split) or []:
            if str(case_id) not in by_id:
                raise InvalidInputError(f"{path}: {split} lists case {case_id!r}, which is not in {root / 'images'}")
            by_id[str(case_id)].split = split
    for case in cases:
        if case.label is None:
            if case.split == "validation":
                raise InvalidInputError(f"{case.image}: a validation case needs a label in {root / 'labels'}")
            case.split = "test"
    return Imported(dataset=known or str(name), cases=cases, label_maps=maps)
