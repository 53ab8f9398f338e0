"""MedMNIST v2 OrganAMNIST / OrganCMNIST / OrganSMNIST (the CT axial / coronal / sagittal organ sets).

Expected layout (the ``.npz`` files as MedMNIST distributes them, in one folder)::

    ROOT/organamnist.npz     (or organamnist_64.npz / _128.npz / _224.npz, MedMNIST+ sizes)
    ROOT/organcmnist.npz
    ROOT/organsmnist.npz

Each file holds ``train_images`` (N, H, W) uint8 and ``train_labels`` (N, 1) integers, and the same for
``val`` and ``test``. The 11 classes (MedMNIST's label order) are the organs of :data:`CLASSES`; the
slices come from the LiTS abdominal CTs. Each image is written once as a PNG under the cache folder
(``ROOT/.medmoe-png/<file stem>/`` unless ``cache_dir`` is given), since medmoe reads image files.
Assumption: UniMed-CLIP's ``organs_axial`` / ``organs_coronal`` / ``organs_sagittal`` folders hold these
MedMNIST sets' test images; the ``.npz`` release is the public form read here.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medmoe.data.adapters.common import ImportResult, require_dir
from medmoe.data.adapters.labelled import cache_folder, label_row, write_grey_png
from medmoe.data.readers import MissingFileError
from medmoe.errors import CorruptFileError, InvalidInputError

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
    sizes = [size] if size is not None else list(SIZES)
    names = [f"{stem}.npz" if s == 28 else f"{stem}_{s}.npz" for s in sizes]
    for name in names:
        if (root / name).is_file():
            return root / name
    raise MissingFileError(f"{root}: no MedMNIST file for the CT {view} organ set (looked for {names})")


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
    """One row per image of ``splits`` (PNG written on first use), labelled with its organ.

    Args:
        root: the folder holding the ``.npz`` files.
        view: ``axial`` (OrganAMNIST), ``coronal`` (OrganCMNIST) or ``sagittal`` (OrganSMNIST).
        size: image side of the file to read (28, 64, 128, 224); default the smallest present.
        splits: which of the file's splits to read (``val`` is left out by default).
        cache_dir: where the PNGs are written (default ``ROOT/.medmoe-png``).
        skip_missing: unused (the images are inside the file); accepted for a uniform interface.
        progress: tqdm progress bar over the images written.

    Raises:
        InvalidInputError: an unknown view, size or split.
        MissingFileError: no file of that view; CorruptFileError: a file without the MedMNIST arrays.
    """
    if view not in VIEWS:
        raise InvalidInputError(f"organ MNIST view {view!r}: expected one of {list(VIEWS)}")
    if size is not None and size not in SIZES:
        raise InvalidInputError(f"MedMNIST size {size}: expected one of {list(SIZES)}")
    if unknown := [s for s in splits if s not in SPLITS]:
        raise InvalidInputError(f"MedMNIST split(s) {unknown}: expected some of {list(SPLITS)}")
    root = require_dir(root, VIEWS[view])
    path = find_npz(root, view, size)
    cache = cache_folder(root, cache_dir, path.stem)
    result = ImportResult(VIEWS[view])
    for split in splits:
        images, labels = _arrays(path, split)
        for i in tqdm(range(len(labels)), desc=f"{path.stem} {split}", unit="image", disable=not progress):
            png = write_grey_png(images[i], cache / split / f"{i:06d}.png")
            result.rows.append(label_row(png, CLASSES[int(labels[i])], dataset=VIEWS[view], split=split,
                                         modality="ct"))
    return result.log()


def import_organamnist(root: str | os.PathLike, **options: Any) -> ImportResult:
    """:func:`import_organ_mnist` of the axial view (OrganAMNIST)."""
    return import_organ_mnist(root, view="axial", **options)


def import_organcmnist(root: str | os.PathLike, **options: Any) -> ImportResult:
    """:func:`import_organ_mnist` of the coronal view (OrganCMNIST)."""
    return import_organ_mnist(root, view="coronal", **options)


def import_organsmnist(root: str | os.PathLike, **options: Any) -> ImportResult:
    """:func:`import_organ_mnist` of the sagittal view (OrganSMNIST)."""
    return import_organ_mnist(root, view="sagittal", **options)
