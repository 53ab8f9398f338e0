"""What every CT dataset importer shares: the imported cases, the label-list check, datalist writing."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.seg.classes import ClassTemplate, normalize_text
from medmoe.seg.data import SPLITS

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Words public label lists use for "a lesion of the organ the dataset is about" (MSD: "cancer", "colon cancer
# primaries"; KiTS: "tumor"); they name the template's ``<organ>_tumour`` class of that dataset.
_LESION_WORDS = {"cancer": "tumour", "cancers": "tumour", "tumour": "tumour", "lesion": "tumour",
                 "lesions": "tumour", "neoplasm": "tumour", "carcinoma": "tumour", "mass": "tumour"}
_FILLER_WORDS = {"primaries", "primary", "the", "of", "and"}
_BACKGROUND = {"background", "bg", "clear label", "unlabeled", "unlabelled"}


@dataclass
class ImportedCase:
    """One case of an imported dataset: absolute paths and the datalist split it goes to."""

    image: Path
    label: Path | None
    split: str
    case_id: str


@dataclass
class Imported:
    """An imported dataset, ready to be written as datalist entries.

    Attributes:
        dataset: the canonical dataset name the entries carry (a ``label_maps.json`` name, or one of
            ``label_maps`` below).
        cases: the cases, in the dataset's own order.
        label_maps: label maps to store in the datalist (only for datasets the class template lacks).
        notes: facts worth printing (cases skipped and why, where combined labels were written).
    """

    dataset: str
    cases: list[ImportedCase]
    label_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = Counter(c.split for c in self.cases)
        return {s: counts[s] for s in SPLITS if counts[s]}


def strip_nifti(name: str) -> str:
    """A NIfTI file name without ``.nii.gz`` / ``.nii``."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def channel_stem(p: Path) -> str:
    """The case id of ``<case>.nii.gz`` or ``<case>_0000.nii.gz`` (nnU-Net's channel suffix)."""
    return re.sub(r"_0000$", "", strip_nifti(p.name))


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files of a folder, sorted; macOS ``._`` resource-fork files (which the MSD tar archives
    carry next to every volume) are skipped."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("._"))


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InvalidInputError(f"{path}: no such folder; expected {what}")
    return path


def read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise InvalidInputError(f"{path}: not found") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(doc, dict):
        raise CorruptFileError(f"{path}: expected a JSON object")
    return doc


def resolve_dataset(template: ClassTemplate, *names: str | None) -> str | None:
    """The first of ``names`` that names (or aliases) a dataset of the template, canonical; None if none does."""
    for name in filter(None, names):
        with contextlib.suppress(InvalidInputError):
            return template.dataset_name(name)
    return None


def _words(text: str) -> set[str]:
    words = normalize_text(text).split()
    return {_LESION_WORDS.get(w, w) for w in words} - _FILLER_WORDS


def label_name_agrees(template: ClassTemplate, name: str, cls: str) -> bool:
    """Whether a dataset's own name of a label (``"cancer"``, ``"right kidney"``, ``"prostate/uterus"``) names
    the template class ``cls`` that its label map gives the same id.

    A name that resolves to a template class (synonyms and small typos included, e.g. AMOS's ``"arota"``)
    must resolve to ``cls`` itself; a name that resolves to no class agrees when its words (lesion words read
    as ``tumour``) all occur in one of ``cls``'s names, so MSD Task03's ``"cancer"`` is ``liver_tumour`` and
    Task08's ``"Vessel"`` is ``hepatic_vessel``. Alternatives separated by ``/`` agree if one of them does.
    """
    info = template.info(cls)
    for alt in filter(str.strip, re.split(r"/|\bor\b", name)):
        resolved = template.resolve(alt)
        if resolved == cls:
            return True
        words = _words(alt) if resolved is None else set()  # a name of another class never agrees
        if words and any(words <= _words(n) for n in (info.name, info.display, *info.synonyms)):
            return True
    return False


def check_label_list(template: ClassTemplate, dataset: str, labels: Mapping[int, str], source: str | Path) -> None:
    """Stop when a dataset's own label list (id -> its name) differs from the template's map of ``dataset``.

    Raises:
        InvalidInputError: naming the first label whose id is missing on one side or whose name does not
            name the mapped class.
    """
    expected = template.label_map(dataset)
    own = {int(i): str(n) for i, n in labels.items() if int(i) != 0}
    for label_id, name in sorted(own.items()):
        if label_id not in expected:
            raise InvalidInputError(
                f"{source}: label {label_id} ({name!r}) is not in the {dataset} label map, which has ids "
                f"{sorted(expected)} ({_describe(expected)}); is this another release of the dataset?")
        if not label_name_agrees(template, name, expected[label_id]):
            raise InvalidInputError(
                f"{source}: label {label_id} is {name!r}, but the {dataset} label map has {label_id} = "
                f"{expected[label_id]!r}; the files would be trained as the wrong class")
    missing = sorted(set(expected) - set(own))
    if missing:
        raise InvalidInputError(
            f"{source}: lists no label {missing[0]} ({expected[missing[0]]!r}), which the {dataset} label map "
            f"has; expected ids {sorted(expected)} ({_describe(expected)})")


def _describe(mapping: Mapping[int, str]) -> str:
    items = [f"{i} = {n}" for i, n in sorted(mapping.items())]
    return ", ".join(items[:6]) + (", ..." if len(items) > 6 else "")


def own_label_map(template: ClassTemplate, labels: Mapping[int, str], source: str | Path) -> dict[str, str]:
    """A dataset's own label list as a datalist ``label_maps`` entry ({"id": template class}).

    Raises:
        InvalidInputError: a label name that resolves to no template class (named, with the file).
    """
    out: dict[str, str] = {}
    for label_id, name in sorted((int(i), str(n)) for i, n in labels.items()):
        if label_id == 0 or normalize_text(name) in _BACKGROUND:
            continue
        cls = template.resolve(name)
        if cls is None:
            raise InvalidInputError(
                f"{source}: label {label_id} ({name!r}) names no class of the class template; rename it to a "
                "class of `medmoe seg classes`")
        out[str(label_id)] = cls
    if not out:
        raise InvalidInputError(f"{source}: no labels besides background")
    return out


def decathlon_labels(doc: Mapping, source: Path) -> dict[int, str]:
    """``labels`` of an MSD ({"id": name}) or nnU-Net v2 ({name: id}) ``dataset.json`` as {id: name}."""
    raw = doc.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise InvalidInputError(f"{source}: no 'labels' object; expected {{\"0\": \"background\", \"1\": ...}}")
    out: dict[int, str] = {}
    for key, value in raw.items():
        if isinstance(value, list):
            raise InvalidInputError(
                f"{source}: label {key!r} is the region {value} (nnU-Net region-based training); a datalist needs "
                "one integer id per class")
        try:
            label_id, name = (int(key), str(value)) if str(key).lstrip("-").isdigit() else (int(value), str(key))
        except (TypeError, ValueError) as err:
            raise InvalidInputError(f"{source}: label {key!r}: {value!r} has no integer id") from err
        out[label_id] = name
    return out


def write_datalist(imported: Imported, out: str | os.PathLike, *, append: bool = False,
                   template: ClassTemplate | None = None) -> dict[str, int]:
    """Write (or with ``append`` extend) a datalist with an imported dataset's entries.

    Paths are stored relative to the datalist's folder where they lie under it, else absolute. With
    ``append``, the existing datalist must not hold the dataset already nor any of its images.

    Returns:
        entries written per split.
    """
    out = Path(out)
    doc: dict = {}
    if append:
        if not out.is_file():
            raise InvalidInputError(f"--append: {out} does not exist; drop --append to create it")
        doc = read_json(out)
        present = {e.get("dataset") for s in SPLITS for e in doc.get(s) or []}
        template = template or ClassTemplate.default()
        for name in present:
            if resolve_dataset(template, name) == imported.dataset or name == imported.dataset:
                raise InvalidInputError(f"{out}: already holds dataset {imported.dataset!r}; write another datalist "
                                        "or remove its entries first")
        images = {str((out.parent / e["image"]).resolve()) for s in SPLITS for e in doc.get(s) or []}
        for case in imported.cases:
            if str(case.image.resolve()) in images:
                raise InvalidInputError(f"{out}: already lists {case.image} (as another dataset)")
    elif out.exists():
        raise InvalidInputError(f"{out}: exists; pass --append to add the dataset to it, or choose another path")
    if imported.label_maps:
        maps = doc.setdefault("label_maps", {})
        for name, labels in imported.label_maps.items():
            if name in maps and maps[name] != labels:
                raise InvalidInputError(f"{out}: has another label map named {name!r}")
            maps[name] = labels
    base = out.parent.resolve()
    for case in imported.cases:
        entry = {"image": _relative(case.image, base)}
        if case.label is not None:
            entry["label"] = _relative(case.label, base)
        entry["dataset"] = imported.dataset
        doc.setdefault(case.split, []).append(entry)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, out)
    return dict(Counter(case.split for case in imported.cases))


def _relative(path: Path, base: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(base) if path.is_relative_to(base) else path)


def pair_by_case(images: Iterable[Path], labels: Iterable[Path], *, split: str, image_key, label_key,
                 source: Path, require_labels: bool = True) -> list[ImportedCase]:
    """Cases from image and label files matched by case id (``image_key`` / ``label_key``: file -> id).

    Raises:
        InvalidInputError: a label without an image, or (``require_labels``) an image without a label.
    """
    label_of = {label_key(p): p for p in labels}
    cases: list[ImportedCase] = []
    seen: set[str] = set()
    for image in images:
        case_id = image_key(image)
        if case_id in seen:
            raise InvalidInputError(f"{image}: a second image of case {case_id!r} (multi-channel input is not CT)")
        seen.add(case_id)
        label = label_of.get(case_id)
        if label is None and require_labels:
            raise InvalidInputError(f"{image}: no label file of case {case_id!r} in {source}")
        cases.append(ImportedCase(image=image, label=label, split=split, case_id=case_id))
    orphans = sorted(set(label_of) - seen)
    if orphans:
        raise InvalidInputError(f"{label_of[orphans[0]]}: a label of case {orphans[0]!r} with no image in {source}")
    return cases
