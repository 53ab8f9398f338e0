"""Preprocessed CT volumes on disk, read back as memory maps: training memory that does not grow with the data.

The deterministic part of the segmentation pipeline (read, RAS, resample, HU window, body crop; see
:func:`~medmoe.seg.transforms.preprocess_transforms`) runs once per volume and its result is written as
plain ``.npy`` files::

    <root>/<settings hash>/settings.json              the preprocessing settings the hash stands for
    <root>/<settings hash>/<entry hash>/image.npy     (1, X, Y, Z) float32, HU windowed to [0, 1]
                                       /label.npy     (1, X, Y, Z) int16 label ids (when labelled)
                                       /soft.npy      (K, X, Y, Z) float16 class fractions (soft labels only)
                                       /locations.npz label id -> int32 flat voxel indices, at most
                                                      ``max_locations`` per id, plus "body" and "edge"
                                       /meta.json     affine, shape, source files

A training item maps the arrays (``np.load(mmap_mode="r")``) and copies out only its patch, so a rank holds
one patch per item, not one volume per case. The entry hash covers the image and label paths with their
sizes and modification times, so an edited file is preprocessed again; the settings hash covers every
setting that changes the arrays, so a run at another spacing gets its own folder. Entries are written to a
temporary folder and renamed, so a crash or two ranks building the same case never leave a half-written
entry. A volume that fails to preprocess is recorded as ``<entry hash>.bad`` (the reason) and not retried
until its files change.

Class locations are subsampled as nnU-Net does (a bounded random subset of each class's voxels, int32)
instead of keeping every labelled voxel's int64 index, which costs ~280 MB per 1.5 mm abdominal CT.

Why not MONAI's ``PersistentDataset``: it pickles each preprocessed dict with ``torch.save`` and loads the
whole volume for every item; patch training needs a few per cent of it. ``benchmarks/bench_seg.py``
measures the two side by side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import convert_to_numpy
from scipy import ndimage

from medmoe.errors import CorruptFileError, InvalidInputError, MedMoEError
from medmoe.paths import write_text_atomic

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
DEFAULT_MAX_LOCATIONS = 10_000


def default_cache_dir() -> Path:
    """``$MEDMOE_CACHE/volumes``, else ``$XDG_CACHE_HOME/medmoe/volumes``, else ``~/.cache/medmoe/volumes``."""
    if os.environ.get("MEDMOE_CACHE"):
        return Path(os.environ["MEDMOE_CACHE"]) / "volumes"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medmoe" / "volumes"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_stamp(path: str | os.PathLike) -> list:
    """What identifies a file's content cheaply: size and mtime; for a folder (a DICOM series) the same of
    every file in it. A missing path stamps as None (the entry then fails to preprocess, with the reason)."""
    p = Path(path)
    try:
        if p.is_dir():
            return sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in p.iterdir() if f.is_file())
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [None]


def subsample(indices: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` of ``indices`` (a uniform random subset, kept in ascending order), as int32."""
    if len(indices) > limit:
        indices = np.sort(rng.choice(indices, size=limit, replace=False))
    return np.ascontiguousarray(indices, dtype=np.int32)


def class_locations(label: np.ndarray | None, image: np.ndarray, limit: int, seed: int) -> dict[str, np.ndarray]:
    """Flat voxel indices to centre patches on: per label id present (``"1"``, ``"2"``, ...), the body outside
    every label (``"body"``, image > 0, i.e. above the bottom of the HU window) and the body's outer
    surface (``"edge"``), each at most ``limit`` (int32).

    Args:
        label: (X, Y, Z) integer ids, or None for an unlabelled volume.
        image: (X, Y, Z) windowed image in [0, 1].
        limit: most indices kept per group.
        seed: seed of the subsampling (the entry's hash: the same volume keeps the same locations).
    """
    if limit < 1:
        raise InvalidInputError(f"max_locations {limit}: expected >= 1")
    rng = np.random.default_rng(seed)
    body = image > 0
    out: dict[str, np.ndarray] = {}
    if label is not None:
        ids = label.ravel()
        order = np.argsort(ids, kind="stable")  # groups voxels by id, each group ascending
        present, starts = np.unique(ids[order], return_index=True)
        for value, group in zip(present.tolist(), np.split(order, starts[1:])):
            if value > 0:
                out[str(value)] = subsample(group, limit, rng)
        body &= label == 0
    out["body"] = subsample(np.flatnonzero(body), limit, rng)
    solid = image > 0
    out["edge"] = subsample(np.flatnonzero(solid & ~ndimage.binary_erosion(solid)), limit, rng)
    return out


@dataclass
class CachedVolume:
    """One preprocessed volume; arrays are read-only memory maps when it came from the disk cache."""

    image: np.ndarray  # (1, X, Y, Z) float32 in [0, 1]
    label: np.ndarray | None  # (1, X, Y, Z) int16 ids
    affine: np.ndarray  # (4, 4) voxel -> RAS mm
    locations: dict[str, np.ndarray] = field(default_factory=dict)
    soft: np.ndarray | None = None  # (K, X, Y, Z) float16

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape[1:])


class VolumeCache:
    """Preprocess-once storage of :class:`CachedVolume` (see the module docstring).

    Args:
        root: cache folder (None: nothing is stored, every call preprocesses again).
        settings: every setting the preprocessing depends on (JSON-serialisable); hashed into the folder name.
        preprocess: entry dict -> {"image": (1, X, Y, Z), "label": (1, X, Y, Z) ids, ["soft_label"]} with an
            ``affine`` on the image (a MONAI MetaTensor).
        max_locations: most patch-centre indices kept per label id.
    """

    def __init__(self, root: str | os.PathLike | None, settings: Mapping[str, Any],
                 preprocess: Callable[[dict], dict], *, max_locations: int = DEFAULT_MAX_LOCATIONS) -> None:
        self.settings = {**settings, "cache_version": CACHE_VERSION, "max_locations": int(max_locations)}
        self.preprocess = preprocess
        self.max_locations = int(max_locations)
        self.folder = Path(root) / _digest(self.settings)[:16] if root is not None else None

    def key(self, entry: Mapping[str, str]) -> str:
        """The entry's hash: image and label paths with their stamps, and the source dataset."""
        parts = {k: [str(entry[k]), file_stamp(entry[k])] for k in ("image", "label") if entry.get(k)}
        parts["dataset"] = entry.get("dataset", "")
        return _digest(parts)[:24]

    def _paths(self, entry: Mapping[str, str]) -> tuple[Path, Path]:
        key = self.key(entry)
        return self.folder / key, self.folder / f"{key}.bad"

    def cached(self, entry: Mapping[str, str]) -> bool:
        """True when the entry is stored (as arrays, or as a recorded failure)."""
        if self.folder is None:
            return False
        done, bad = self._paths(entry)
        return done.is_dir() or bad.is_file()

    def load(self, entry: Mapping[str, str]) -> CachedVolume:
        """The preprocessed volume, from the cache when stored, else built (and stored when there is a root).

        Raises:
            Whatever preprocessing raises (a recorded failure raises :class:`~medmoe.errors.CorruptFileError`
            with the recorded reason).
        """
        if self.folder is None:
            return self._build(entry, None)
        done, bad = self._paths(entry)
        if not done.is_dir():
            if bad.is_file():
                raise CorruptFileError(f"{bad.read_text().strip()} (recorded in {bad}; fix the file to retry)")
            return self._build(entry, done)
        return self._read(done)

    def _read(self, folder: Path) -> CachedVolume:
        meta = json.loads((folder / "meta.json").read_text())
        label = folder / "label.npy"
        soft = folder / "soft.npy"
        with np.load(folder / "locations.npz") as z:
            locations = {k: z[k] for k in z.files}
        return CachedVolume(
            image=np.load(folder / "image.npy", mmap_mode="r"),
            label=np.load(label, mmap_mode="r") if label.is_file() else None,
            affine=np.asarray(meta["affine"], dtype=np.float64),
            locations=locations,
            soft=np.load(soft, mmap_mode="r") if soft.is_file() else None,
        )

    def _build(self, entry: Mapping[str, str], target: Path | None) -> CachedVolume:
        try:
            out = self.preprocess(dict(entry))
        except Exception as err:
            if target is not None and _is_data_fault(_root_cause(err)):
                _record_failure(target.with_suffix(".bad"), entry, err)
            raise
        image = convert_to_numpy(out["image"]).astype(np.float32, copy=False)
        label = convert_to_numpy(out["label"]).astype(np.int16, copy=False) if "label" in out else None
        soft = (convert_to_numpy(out["soft_label"]).astype(np.float16, copy=False) if "soft_label" in out
                else None)
        affine = np.asarray(convert_to_numpy(out["image"].affine), dtype=np.float64)
        seed = int(self.key(entry)[:8], 16)
        volume = CachedVolume(image=image, label=label, affine=affine, soft=soft,
                              locations=class_locations(None if label is None else label[0], image[0],
                                                        self.max_locations, seed))
        if target is not None:
            self._write(volume, entry, target)
        return volume

    def _write(self, volume: CachedVolume, entry: Mapping[str, str], target: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = self.folder / "settings.json"
        if not settings.is_file():
            write_text_atomic(settings, json.dumps(self.settings, indent=2, sort_keys=True, default=str))
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=self.folder))
        try:
            for name, array in (("image", volume.image), ("label", volume.label), ("soft", volume.soft)):
                if array is not None:
                    np.save(tmp / f"{name}.npy", array)
            np.savez(tmp / "locations.npz", **volume.locations)
            (tmp / "meta.json").write_text(json.dumps({
                "affine": volume.affine.tolist(), "shape": list(volume.shape),
                "image": entry.get("image"), "label": entry.get("label"), "dataset": entry.get("dataset"),
            }, indent=2))
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.is_dir():  # another rank renaming the same entry first is fine; anything else is not
                raise


def _root_cause(err: BaseException) -> BaseException:
    """The error to report: the first medmoe error in the cause chain (it names the file, and a medmoe error
    caused by an ``OSError``, e.g. a corrupt gzip, is a fault of the file), else the deepest cause (MONAI wraps
    a reader's exception in ``RuntimeError("applying transform ...")``)."""
    while not isinstance(err, MedMoEError) and err.__cause__ is not None:
        err = err.__cause__
    return err


def _is_data_fault(err: BaseException) -> bool:
    """A fault of the files (recorded, not retried until they change), not of the moment (memory, I/O)."""
    return (isinstance(err, MedMoEError | FileNotFoundError | NotADirectoryError | IsADirectoryError)
            or not isinstance(err, MemoryError | OSError))


def failure_reason(err: BaseException) -> str:
    root = _root_cause(err)
    return f"{type(root).__name__}: {root}"


def _record_failure(path: Path, entry: Mapping[str, str], err: BaseException) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, f"{entry.get('image')}: {failure_reason(err)}")
    except OSError as write_err:
        logger.debug("cannot record the failure of %s: %s", entry.get("image"), write_err)
