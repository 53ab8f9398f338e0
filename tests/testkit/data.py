"""Small builders shared by the tests of medmoe.data (real sample files and generated images)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from medmoe.data.manifest import ManifestRow, write_manifest


def dicom_file(name: str) -> str:
    """A DICOM file shipped with pydicom / pydicom-data (no download: pydicom-data is installed)."""
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name)
    assert path is not None, f"{name} not installed"
    return path


def package_dir(package: str) -> Path:
    """The installed folder of a package, found without importing it."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} not installed"
    return Path(list(spec.submodule_search_locations)[0])


def deid_ultrasound(name: str) -> str:
    return str(package_dir("deid_data") / "data" / "ultrasounds" / name)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def gradient_image(seed: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """A distinct uint8 grey image per seed (noise over a gradient)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, size[1])[None, :].repeat(size[0], 0)
    return np.clip(base + rng.integers(0, 55, size), 0, 255).astype(np.uint8)


def make_manifest(
    root: Path,
    n: int = 6,
    *,
    name: str = "manifest.csv",
    splits: tuple[str, ...] = ("train", "val", "test"),
    size: tuple[int, int] = (48, 64),
) -> tuple[Path, list[ManifestRow]]:
    """``n`` PNG images under ``root/images`` and a manifest next to them."""
    rows = []
    for i in range(n):
        image = write_png(root / "images" / f"img{i:03d}.png", gradient_image(i, size))
        rows.append(
            ManifestRow(
                image=str(image),
                report=f"FINDINGS: Finding number {i} in the left lung. IMPRESSION: Case {i}.",
                modality=["xray", "CT", "MRI"][i % 3],
                labels=[f"label{i % 2}"],
                dataset="synthetic",
                split=splits[i % len(splits)],
            )
        )
    path = write_manifest(rows, root / name)
    return path, rows


def write_tar(path: str | Path, members: list[tuple[str, bytes]]) -> Path:
    """A plain tar at ``path`` holding ``members`` (name, bytes) in that order (shards built by hand)."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Path(path)
