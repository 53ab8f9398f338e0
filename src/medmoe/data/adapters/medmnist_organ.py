"""MedMNIST v2 OrganAMNIST / OrganCMNIST / OrganSMNIST (the CT axial / coronal / sagittal organ sets).

Source: MedMNIST v2 (Yang et al., Scientific Data 2023; medmnist.com) distributes each set as one ``.npz``
holding ``train_images`` (N, H, W) uint8 and ``train_labels`` (N, 1) integers, and the same for ``val``
and ``test``; UniMed-CLIP (github.com/mbzuai-oryx/UniMed-CLIP, ``clipeval/datasets.py``, ``CT_dataset``)
evaluates the same sets from its ``organs_axial`` / ``organs_coronal`` / ``organs_sagittal`` folders, each
an ``annotations.csv`` whose column 0 is an image path relative to that folder, column 2 the label and
column ``split`` the split (it keeps ``test``). Layouts read::

    ROOT/organamnist.npz          (or organamnist_64.npz / _128.npz / _224.npz, MedMNIST+ sizes;
    ROOT/organcmnist.npz           ROOT may also be the .npz file itself)
    ROOT/organsmnist.npz

    ROOT/organs_axial/annotations.csv      UniMed-CLIP (ROOT may be organs_axial itself)
    ROOT/organs_axial/<the images it names>

The 11 classes (MedMNIST's label order) are the organs of :data:`CLASSES`; the slices come from the LiTS
abdominal CTs. A ``.npz`` image is written once as a PNG under the cache folder
(``<npz folder>/.medmoe-png/<file stem>/`` unless ``cache_dir`` is given), since medmoe reads image files.
Assumption: UniMed-CLIP's label column holds MedMNIST's class index (its prompts follow MedMNIST's order);
an organ name (``liver``, ``kidney-left`` / ``kidney left``) is accepted too.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medmoe.data.adapters.common import ImportResult, read_csv_table, require_dir, require_some_image
from medmoe.data.adapters.labelled import cache_folder, label_row, write_grey_png
from medmoe.data.manifest import normalize_split
from medmoe.errors import CorruptFileError, InvalidInputError, MissingFileError

CLASSES = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
           "lung-right", "pancreas", "spleen")
VIEWS = {"axial": "organamnist", "coronal": "organcmnist", "sagittal": "organsmnist"}
SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")


def find_npz(root: Path, view: str, size: int | None) -> Path:
    """The ``.npz`` of ``view`` under ``root``: of ``size`` when given, else the smallest size present.

    Raises:
        MissingFileError: no such file.
    """
    stem = VIEWS[view]
    names = [f"{stem}.npz" if s == 28 else f"{stem}_{s}.npz" for s in ([size] if size is not None else SIZES)]
    for name in names:
        if (root / name).is_file():
            return root / name
    raise MissingFileError(f"{root}: no MedMNIST file for the CT {view} organ set (looked for {', '.join(names)} "
                           f"and UniMed-CLIP's {UNIMED_FOLDERS[view]}/{UNIMED_CSV})")


def _arrays(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            wanted = [f"{split}_images", f"{split}_labels"]
            images, labels = (data[n] for n in wanted) if all(n in names for n in wanted) else (None, None)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CorruptFileError(f"{path}: not a readable MedMNIST .npz ({err})") from None
    if images is None:
        raise CorruptFileError(f"{path}: no {split}_images / {split}_labels arrays (found {names})")
    labels = labels.reshape(-1)
    if images.ndim != 3 or len(images) != len(labels):
        raise CorruptFileError(f"{path}: {split} images of shape {images.shape} do not match {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise CorruptFileError(f"{path}: {split} labels outside 0..{len(CLASSES) - 1}")
    return images, labels


UNIMED_FOLDERS = {"axial": "organs_axial", "coronal": "organs_coronal", "sagittal": "organs_sagittal"}
UNIMED_CSV = "annotations.csv"


def _npz_file(path: Path, view: str) -> Path:
    """``path`` given as the ``.npz`` itself: it must be a file of ``view``'s set.

    Raises:
        InvalidInputError: not a ``.npz``, or the file of another set.
    """
    stem = VIEWS[view]
    if path.suffix.lower() != ".npz" or not path.stem.lower().startswith(stem):
        raise InvalidInputError(f"{path}: expected the {view} organ set's MedMNIST file ({stem}.npz or "
                                f"{stem}_<size>.npz)")
    return path


def _unimed_csv(root: Path, view: str) -> Path | None:
    """UniMed-CLIP's ``annotations.csv`` of ``view`` in ``root`` or ``root/organs_<view>``, or None."""
    return next((folder / UNIMED_CSV for folder in (root / UNIMED_FOLDERS[view], root)
                 if (folder / UNIMED_CSV).is_file()), None)


def _organ_label(value: str, path: Path, number: int) -> str:
    """A label cell (class index, or organ name) -> the organ class.

    Raises:
        CorruptFileError: neither an index 0..10 nor an organ name.
    """
    text = value.strip().lower()
    if text.endswith(".0") and text[:-2].isdigit():
        text = text[:-2]
    if text.isdigit() and int(text) < len(CLASSES):
        return CLASSES[int(text)]
    name = text.replace(" ", "-").replace("_", "-")
    if name in CLASSES:
        return name
    raise CorruptFileError(f"{path}: line {number}: label {value!r} is neither a class index 0..{len(CLASSES) - 1} "
                           f"nor one of {list(CLASSES)}")


def _rows_from_unimed(table_path: Path, view: str, splits: tuple[str, ...], skip_missing: bool) -> ImportResult:
    table = read_csv_table(table_path)
    if table and (len(table[0]) < 3 or "split" not in table[0]):
        raise CorruptFileError(f"{table_path}: expected image path (column 0), label (column 2) and a split "
                               f"column, found {list(table[0])}")
    result = ImportResult(VIEWS[view])
    for number, record in enumerate(table, start=2):
        values = list(record.values())
        split = normalize_split(record["split"])
        if split not in splits:
            continue
        label = _organ_label(str(values[2] or ""), table_path, number)
        image = table_path.parent / str(values[0] or "").strip()
        if skip_missing and not image.is_file():
            result.skip("missing image", str(image))
            continue
        result.rows.append(label_row(image, label, dataset=VIEWS[view], split=split, modality="ct"))
    require_some_image(result, table_path)
    return result


def _rows_from_npz(path: Path, view: str, splits: tuple[str, ...], cache_dir, progress: bool) -> ImportResult:
    cache = cache_folder(path.parent, cache_dir, path.stem)
    result = ImportResult(VIEWS[view])
    for split in splits:
        images, labels = _arrays(path, split)
        for i in tqdm(range(len(labels)), desc=f"{path.stem} {split}", unit="image", disable=not progress):
            png = write_grey_png(images[i], cache / split / f"{i:06d}.png")
            result.rows.append(label_row(png, CLASSES[int(labels[i])], dataset=VIEWS[view], split=split,
                                         modality="ct"))
    return result


def import_organ_mnist(
    root: str | os.PathLike,
    *,
    view: str = "axial",
    size: int | None = None,
    splits: tuple[str, ...] = ("train", "test"),
    cache_dir: str | os.PathLike | None = None,
    skip_missing: bool = True,
    progress: bool = False,
) -> ImportResult:
    """One row per image of ``splits``, labelled with its organ, from a ``.npz`` or UniMed-CLIP's CSV.

    Args:
        root: the folder holding the ``.npz`` files, one ``.npz`` file, or UniMed-CLIP's folder (or the
            folder that holds ``organs_<view>``).
        view: ``axial`` (OrganAMNIST), ``coronal`` (OrganCMNIST) or ``sagittal`` (OrganSMNIST).
        size: image side of the file to read (28, 64, 128, 224); default the smallest present.
        splits: which splits to read (``val`` is left out by default).
        cache_dir: where the PNGs of a ``.npz`` are written (default ``<npz folder>/.medmoe-png``).
        skip_missing: leave out CSV rows whose image does not exist (a ``.npz`` holds its images).
        progress: tqdm progress bar over the images written.

    Raises:
        InvalidInputError: an unknown view, size or split, or a ``.npz`` of another set.
        MissingFileError: neither a file of that view nor UniMed-CLIP's ``annotations.csv``;
        CorruptFileError: a file without the MedMNIST arrays, or a CSV without the expected columns.
    """
    if view not in VIEWS:
        raise InvalidInputError(f"organ MNIST view {view!r}: expected one of {list(VIEWS)}")
    if size is not None and size not in SIZES:
        raise InvalidInputError(f"MedMNIST size {size}: expected one of {list(SIZES)}")
    if unknown := [s for s in splits if s not in SPLITS]:
        raise InvalidInputError(f"MedMNIST split(s) {unknown}: expected some of {list(SPLITS)}")
    path = Path(root)
    if path.is_file():
        return _rows_from_npz(_npz_file(path, view), view, splits, cache_dir, progress).log()
    root = require_dir(root, VIEWS[view])
    table_path = _unimed_csv(root, view)
    if table_path is not None and not any(root.glob(f"{VIEWS[view]}*.npz")):
        return _rows_from_unimed(table_path, view, splits, skip_missing).log()
    return _rows_from_npz(find_npz(root, view, size), view, splits, cache_dir, progress).log()


def import_organamnist(root: str | os.PathLike, **options: Any) -> ImportResult:
    """:func:`import_organ_mnist` of the axial view (OrganAMNIST)."""
    return import_organ_mnist(root, view="axial", **options)


def import_organcmnist(root: str | os.PathLike, **options: Any) -> ImportResult:
    """:func:`import_organ_mnist` of the coronal view (OrganCMNIST)."""
    return import_organ_mnist(root, view="coronal", **options)


def import_organsmnist(root: str | os.PathLike, **options: Any) -> ImportResult:
    """:func:`import_organ_mnist` of the sagittal view (OrganSMNIST)."""
    return import_organ_mnist(root, view="sagittal", **options)
