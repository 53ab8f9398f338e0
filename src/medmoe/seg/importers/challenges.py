"""Challenge datasets in the folder layouts they are downloaded in: BTCV, KiTS19/21/23, WORD, FLARE22,
AbdomenCT-1K, CT-ORG and LiTS. Where a download ships a ``dataset.json`` with ``labels`` (WORD, some
re-packaged copies), its label list is checked against the dataset's map; where it ships none, ``medmoe seg
check`` checks the label values of the files."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from medmoe.errors import InvalidInputError
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.importers.core import (
    Imported,
    ImportedCase,
    channel_stem,
    check_label_list,
    decathlon_labels,
    nifti_files,
    pair_by_case,
    read_json,
    strip_nifti,
)


def _check_shipped_labels(root: Path, template: ClassTemplate, dataset: str) -> None:
    path = root / "dataset.json"
    if path.is_file():
        doc = read_json(path)
        if doc.get("labels"):
            check_label_list(template, dataset, decathlon_labels(doc, path), path)


def _number(p: Path) -> str:
    found = re.findall(r"\d+", strip_nifti(p.name))
    if not found:
        raise InvalidInputError(f"{p}: no case number in the file name")
    return str(int(found[-1]))


def _paired_folders(root: Path, pairs: list[tuple[str, str, str]], key: Callable[[Path], str],
                    required: str) -> list[ImportedCase]:
    cases = []
    for split, images, labels in pairs:
        files = nifti_files(root / images)
        if split == required and not files:
            raise InvalidInputError(f"{root / images}: no NIfTI images")
        cases += pair_by_case(files, nifti_files(root / labels), split=split, image_key=key, label_key=key,
                              source=root, require_labels=split != "test")
    return cases


def import_btcv(root: Path, *, template: ClassTemplate, **_) -> Imported:
    """BTCV (Synapse "Multi-Atlas Labeling Beyond the Cranial Vault", ``RawData.zip``):
    ``Training/img/img0001.nii.gz`` with ``Training/label/label0001.nii.gz``; ``Testing/img/`` as test."""
    base = next((b for b in (root, root / "RawData", root / "Abdomen" / "RawData")
                 if (b / "Training" / "img").is_dir()), None)
    if base is None:
        raise InvalidInputError(f"{root}: no Training/img/ (nor RawData/Training/img/); expected the unpacked "
                                "BTCV RawData.zip")
    cases = _paired_folders(base, [("training", "Training/img", "Training/label"),
                                   ("test", "Testing/img", "Testing/label")], _number, "training")
    return Imported(dataset="BTCV", cases=cases)


def import_kits(root: Path, *, template: ClassTemplate, dataset: str | None = None, **_) -> Imported:
    """KiTS19/21/23: ``case_00000/imaging.nii.gz`` with ``segmentation.nii.gz`` (KiTS19, KiTS23) or
    ``aggregated_MAJ_seg.nii.gz`` (KiTS21), in the root or its ``data/`` / ``dataset/`` folder. Cases without
    a segmentation (the KiTS19 test cases) are test cases.

    KiTS19 and KiTS23 share the layout but not the labels (KiTS23 adds 3 = cyst), so those need
    ``dataset`` (``KiTS19`` or ``KiTS``); KiTS21's majority-vote file names it.
    """
    base = next((b for b in (root, root / "data", root / "dataset", root / "kits21" / "data")
                 if any(b.glob("case_*/imaging.nii.gz"))), None)
    if base is None:
        raise InvalidInputError(f"{root}: no case_*/imaging.nii.gz (nor under data/ or dataset/); expected a KiTS "
                                "data folder")
    cases = []
    for folder in sorted(base.glob("case_*")):
        image = folder / "imaging.nii.gz"
        if not image.is_file():
            raise InvalidInputError(f"{folder}: no imaging.nii.gz")
        label = next((folder / n for n in ("aggregated_MAJ_seg.nii.gz", "segmentation.nii.gz")
                      if (folder / n).is_file()), None)
        cases.append(ImportedCase(image=image, label=label, split="training" if label else "test",
                                  case_id=folder.name))
    kinds = {c.label.name for c in cases if c.label is not None}
    if len(kinds) > 1:
        raise InvalidInputError(f"{base}: cases mix {sorted(kinds)}; expected one KiTS release")
    if dataset:
        name = template.dataset_name(dataset)
        if name not in ("KiTS", "KiTS19"):
            raise InvalidInputError(f"--dataset {dataset}: a KiTS import is KiTS19 or KiTS (KiTS21/23)")
    elif kinds == {"aggregated_MAJ_seg.nii.gz"}:
        name = "KiTS"
    else:
        raise InvalidInputError(f"{base}: KiTS19 (labels 1 kidney, 2 tumour) and KiTS23 (also 3 cyst) share this "
                                "layout; pass --dataset KiTS19 or --dataset KiTS")
    return Imported(dataset=name, cases=cases)


def import_word(root: Path, *, template: ClassTemplate, **_) -> Imported:
    """WORD (``WORD-V0.1.0/``): ``imagesTr``/``labelsTr`` (training), ``imagesVal``/``labelsVal``
    (validation), ``imagesTs``/``labelsTs`` (test), files named alike (``word_0001.nii.gz``)."""
    _check_shipped_labels(root, template, "WORD")
    cases = _paired_folders(root, [("training", "imagesTr", "labelsTr"), ("validation", "imagesVal", "labelsVal"),
                                   ("test", "imagesTs", "labelsTs")], channel_stem, "training")
    return Imported(dataset="WORD", cases=cases)


def import_flare22(root: Path, *, template: ClassTemplate, **_) -> Imported:
    """FLARE22 (``FLARE22Train/``): ``images/FLARE22_Tr_0001_0000.nii.gz`` with
    ``labels/FLARE22_Tr_0001.nii.gz``."""
    base = root / "FLARE22Train" if (root / "FLARE22Train").is_dir() else root
    _check_shipped_labels(base, template, "FLARE22")
    cases = _paired_folders(base, [("training", "images", "labels")], channel_stem, "training")
    return Imported(dataset="FLARE22", cases=cases)


def import_abdomenct1k(root: Path, *, template: ClassTemplate, **_) -> Imported:
    """AbdomenCT-1K: CTs ``Case_00001_0000.nii.gz`` in ``Image/`` or the ``AbdomenCT-1K-ImagePart1..3/``
    folders, masks ``Case_00001.nii.gz`` in ``Mask/``."""
    image_dirs = sorted(p for p in root.iterdir() if p.is_dir() and re.match(r"(AbdomenCT-1K-)?Image", p.name))
    if not image_dirs:
        raise InvalidInputError(f"{root}: no Image/ or AbdomenCT-1K-ImagePart*/ folder")
    mask_dir = next((root / name for name in ("Mask", "Masks") if (root / name).is_dir()), None)
    if mask_dir is None:
        raise InvalidInputError(f"{root}: found none of ['Mask', 'Masks']; expected the AbdomenCT-1K Mask/ "
                                "folder")
    images = [p for d in image_dirs for p in nifti_files(d)]
    cases = pair_by_case(images, nifti_files(mask_dir), split="training", image_key=channel_stem,
                         label_key=channel_stem, source=root)
    return Imported(dataset="AbdomenCT-1K", cases=cases)


def import_ctorg(root: Path, *, template: ClassTemplate, **_) -> Imported:
    """CT-ORG (TCIA): ``OrganSegmentations/volume-0.nii.gz`` with ``labels-0.nii.gz``."""
    base = root / "OrganSegmentations" if (root / "OrganSegmentations").is_dir() else root
    files = nifti_files(base)
    images = [p for p in files if p.name.startswith("volume-")]
    labels = [p for p in files if p.name.startswith("labels-")]
    if not images:
        raise InvalidInputError(f"{base}: no volume-N.nii.gz files; expected the CT-ORG OrganSegmentations folder")
    cases = pair_by_case(images, labels, split="training", image_key=_number, label_key=_number, source=base)
    return Imported(dataset="CT-ORG", cases=cases)


def import_lits(root: Path, *, template: ClassTemplate, **_) -> Imported:
    """LiTS: ``volume-N.nii`` with ``segmentation-N.nii`` anywhere under the root (``Training Batch 1/``,
    ``Training Batch 2/``); ``test-volume-N.nii`` files are test cases."""
    files = sorted(p for p in root.rglob("*.nii*") if p.name.endswith((".nii", ".nii.gz")) and not p.name.startswith("._"))
    train = [p for p in files if p.name.startswith("volume-")]
    if not train:
        raise InvalidInputError(f"{root}: no volume-N.nii files; expected the LiTS training batches")
    cases = pair_by_case(train, [p for p in files if p.name.startswith("segmentation-")], split="training",
                         image_key=_number, label_key=_number, source=root)
    cases += pair_by_case([p for p in files if p.name.startswith("test-volume-")], [], split="test",
                          image_key=_number, label_key=_number, source=root, require_labels=False)
    return Imported(dataset="LiTS", cases=cases)
