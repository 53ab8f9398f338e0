"""Datasets described by a ``dataset.json``: Medical Segmentation Decathlon tasks, nnU-Net v2 raw datasets
and AMOS22 (which ships an MSD-style ``dataset.json``)."""

from __future__ import annotations

import re
from pathlib import Path

from medmoe.errors import InvalidInputError
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.importers.core import (
    Imported,
    ImportedCase,
    check_label_list,
    decathlon_labels,
    nifti_files,
    own_label_map,
    pair_by_case,
    read_json,
    resolve_dataset,
    strip_nifti,
)

AMOS_LAST_CT_ID = 500  # AMOS22: amos_0001 .. amos_0500 are CT, amos_0501 and above MRI


def _dataset_json(root: Path) -> tuple[Path, dict]:
    path = root / "dataset.json"
    if not path.is_file():
        raise InvalidInputError(f"{root}: no dataset.json; expected the dataset's folder (with dataset.json, "
                                "imagesTr/, labelsTr/)")
    return path, read_json(path)


def _name_and_labels(template: ClassTemplate, root: Path, path: Path, doc: dict, dataset: str | None,
                     candidates: list[str | None]) -> tuple[str, dict[str, dict[str, str]]]:
    """The canonical dataset name, checking the dataset.json labels against its map; or (for a dataset the
    template lacks) the folder name with the dataset's own labels as a new label map."""
    labels = decathlon_labels(doc, path)
    name = template.dataset_name(dataset) if dataset else resolve_dataset(template, *candidates)
    if name is not None:
        check_label_list(template, name, labels, path)
        return name, {}
    own = root.name
    return own, {own: own_label_map(template, labels, path)}


def _require_ct(doc: dict, key: str, path: Path) -> None:
    channels = doc.get(key)
    if not isinstance(channels, dict) or not channels:
        raise InvalidInputError(f"{path}: no {key!r} object; expected {{\"0\": \"CT\"}}")
    names = [str(v).strip().lower() for v in channels.values()]
    if names != ["ct"]:
        raise InvalidInputError(f"{path}: {key} is {channels}; MoME segments single-channel CT ({{\"0\": \"CT\"}})")


def _listed(root: Path, value: str, path: Path, what: str) -> Path:
    file = (root / value).resolve() if not Path(value).is_absolute() else Path(value)
    if not file.is_file():
        raise InvalidInputError(f"{path}: lists {what} {value!r}, which is not at {file} (incomplete download?)")
    return file


def import_msd(root: Path, *, dataset: str | None = None, template: ClassTemplate, **_) -> Imported:
    """A Medical Segmentation Decathlon task folder (``Task03_Liver/``): the cases its ``dataset.json``
    lists under ``training`` (image + label) and ``test`` (image only); CT tasks only."""
    path, doc = _dataset_json(root)
    _require_ct(doc, "modality", path)
    name, maps = _name_and_labels(template, root, path, doc, dataset, [root.name, doc.get("task"), doc.get("name")])
    cases = []
    for split in ("training", "validation", "test"):
        for i, item in enumerate(doc.get(split) or []):
            if isinstance(item, str):
                image, label = _listed(root, item, path, f"{split}[{i}] image"), None
            elif isinstance(item, dict) and "image" in item:
                image = _listed(root, item["image"], path, f"{split}[{i}] image")
                label = _listed(root, item["label"], path, f"{split}[{i}] label") if item.get("label") else None
            else:
                raise InvalidInputError(f"{path}: {split}[{i}] = {item!r}; expected {{\"image\": ..., \"label\": ...}}")
            if split != "test" and label is None:
                raise InvalidInputError(f"{path}: {split}[{i}] ({item}) has no label")
            cases.append(ImportedCase(image=image, label=label, split=split, case_id=strip_nifti(image.name)))
    if not any(c.split == "training" for c in cases):
        raise InvalidInputError(f"{path}: lists no 'training' cases")
    return Imported(dataset=name, cases=cases, label_maps=maps)


def import_nnunet(root: Path, *, dataset: str | None = None, template: ClassTemplate, **_) -> Imported:
    """An nnU-Net v2 raw dataset folder (``Dataset003_Liver/``): ``imagesTr/<case>_0000<file_ending>`` with
    ``labelsTr/<case><file_ending>``, and ``imagesTs/`` as test cases; one CT channel."""
    path, doc = _dataset_json(root)
    _require_ct(doc, "channel_names", path)
    ending = doc.get("file_ending")
    if ending not in (".nii.gz", ".nii"):
        raise InvalidInputError(f"{path}: file_ending {ending!r}; medmoe reads NIfTI (.nii.gz, .nii) CTs")
    number = re.match(r"^Dataset(\d{3})_(.+)$", root.name)
    # nnUNetv2_convert_MSD_dataset keeps the task number: Task03_Liver becomes Dataset003_Liver
    msd = f"Task{int(number.group(1)):02d}_{number.group(2)}" if number else None
    name, maps = _name_and_labels(template, root, path, doc, dataset, [root.name, doc.get("name"), msd])

    def channel_case(p: Path) -> str:
        stem = p.name[: -len(ending)]
        if not re.search(r"_\d{4}$", stem):
            raise InvalidInputError(f"{p}: expected an image named <case>_0000{ending} (nnU-Net channel suffix)")
        return stem[:-5]

    cases = []
    for split, images, labels in (("training", "imagesTr", "labelsTr"), ("test", "imagesTs", "labelsTs")):
        files = [p for p in nifti_files(root / images) if p.name.endswith(ending)]
        if split == "training" and not files:
            raise InvalidInputError(f"{root / images}: no *_0000{ending} images")
        cases += pair_by_case(files, nifti_files(root / labels), split=split, image_key=channel_case,
                              label_key=lambda p: p.name[: -len(ending)], source=root,
                              require_labels=split == "training")
    n = sum(c.split == "training" for c in cases)
    if doc.get("numTraining") is not None and int(doc["numTraining"]) != n:
        raise InvalidInputError(f"{path}: numTraining is {doc['numTraining']} but {root / 'imagesTr'} holds {n} "
                                "cases (incomplete copy?)")
    return Imported(dataset=name, cases=cases, label_maps=maps)


def import_amos(root: Path, *, template: ClassTemplate, **_) -> Imported:
    """AMOS22 (``amos22/``: ``dataset.json`` listing ``training`` / ``validation`` / ``test``), CT cases only:
    ids up to 500 are CT, the MRI cases (ids above 500) are left out."""
    imported = import_msd(root, dataset="AMOS22", template=template)
    keep = []
    for case in imported.cases:
        number = re.search(r"(\d+)$", case.case_id)
        if number is None:
            raise InvalidInputError(f"{case.image}: expected an AMOS case name amos_NNNN")
        if int(number.group(1)) <= AMOS_LAST_CT_ID:
            keep.append(case)
    dropped = len(imported.cases) - len(keep)
    imported.cases = keep
    if dropped:
        imported.notes.append(f"left out {dropped} MRI case(s) (AMOS ids above {AMOS_LAST_CT_ID})")
    return imported
