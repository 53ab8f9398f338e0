"""Helpers of the labelled evaluation sets (one class per image): rows, class checks, PNG caches.

Some public test sets store their images inside arrays (MedMNIST ``.npz`` files, MRNet ``.npy`` volumes)
that the medmoe image readers do not open. Their adapters write each 2-D image once as an 8-bit grey PNG
in a cache folder and point the manifest rows at those files, so every set then flows through the same
reader, transform and embedding path as any other manifest.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from medmoe.data.manifest import ManifestRow
from medmoe.errors import InvalidInputError

CACHE_FOLDER = ".medmoe-png"


def label_row(image: str | os.PathLike, label: str, *, dataset: str, split: str, modality: str) -> ManifestRow:
    """A label-only manifest row (empty report) of one image and its one class."""
    return ManifestRow(image=str(image), report="", modality=modality, labels=[label], dataset=dataset, split=split)


def cache_folder(root: Path, cache_dir: str | os.PathLike | None, name: str) -> Path:
    """The folder that holds the PNGs written for ``name``: ``cache_dir/name`` or ``root/.medmoe-png/name``.

    Raises:
        InvalidInputError: the folder cannot be created or written (a read-only data folder: give
            ``cache_dir``).
    """
    folder = (Path(cache_dir) if cache_dir is not None else root / CACHE_FOLDER) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as err:
        raise InvalidInputError(f"{folder}: cannot write the PNG cache of {name} there ({err.strerror or err}); "
                                "give another cache folder (cache_dir / --cache-dir)") from None
    return folder


def write_grey_png(image: np.ndarray, path: Path) -> Path:
    """Write a 2-D array as an 8-bit grey PNG (once: an existing file is kept); returns ``path``.

    uint8 arrays are written as they are; other dtypes are rescaled from their min..max to 0..255.
    """
    if path.is_file():
        return path
    from PIL import Image

    array = np.asarray(image)
    if array.ndim != 2:
        raise InvalidInputError(f"{path.name}: expected a 2-D image, got shape {array.shape}")
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        array = ((array.astype(np.float64) - low) * scale).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
    tmp.replace(path)
    return path
