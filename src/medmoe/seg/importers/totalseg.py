"""TotalSegmentator v2: ``sXXXX/ct.nii.gz`` with one binary mask per class in ``sXXXX/segmentations/``,
splits in ``meta.csv``.

The per-class masks are combined once into one label map per case (ids of the ``TotalSegmentator`` map),
written to a cache folder. Reading them lazily instead would decompress 117 files per case every time the
case is read, and a datalist entry has one label file, which the training cache
(:mod:`medmoe.seg.cache`) preprocesses like any other dataset's. Each label map is written to a temporary
file and renamed into place, with a stamp of the masks it was built from (names, sizes, modification times)
beside it: an interrupted import resumes where it stopped, and a case whose masks changed is rebuilt.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.importers.core import Imported, ImportedCase, nifti_files, strip_nifti

DATASET = "TotalSegmentator"
SPLITS = {"train": "training", "val": "validation", "test": "test"}
AFFINE_TOLERANCE_MM = 1e-3


def _read_meta(root: Path) -> dict[str, str]:
    path = root / "meta.csv"
    if not path.is_file():
        raise InvalidInputError(f"{root}: no meta.csv; expected the TotalSegmentator v2 folder (meta.csv, s0000/, ...)")
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InvalidInputError(f"{path}: not a readable ';'-separated table ({err})") from err
    if not rows or "image_id" not in rows[0] or "split" not in rows[0]:
        raise InvalidInputError(f"{path}: expected ';'-separated columns image_id ... split (TotalSegmentator v2)")
    out = {}
    for row in rows:
        split = (row["split"] or "").strip()
        if split not in SPLITS:
            raise InvalidInputError(f"{path}: case {row['image_id']} has split {split!r}; expected one of {list(SPLITS)}")
        out[row["image_id"].strip()] = SPLITS[split]
    return out


def _stamp(masks: list[Path]) -> dict[str, list[int]]:
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in masks}


def combine_masks(ct: Path, masks: list[tuple[int, Path]], out: Path) -> str:
    """Write the label map of one case (``out``, uint8 ids) from its (id, mask file) pairs, atomically, unless
    ``out`` is already there with a matching stamp. An earlier id keeps a voxel two masks share.

    Returns:
        ``"built"`` or ``"cached"``.

    Raises:
        CorruptFileError: an unreadable mask, or a mask not on the CT's grid (shape or affine).
    """
    stamp_path = out.with_name(strip_nifti(out.name) + ".json")
    stamp = _stamp([p for _, p in masks])
    if out.is_file() and stamp_path.is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            if json.loads(stamp_path.read_text()) == stamp:
                return "cached"
    try:
        header = nib.load(str(ct))
    except Exception as err:
        raise CorruptFileError(f"{ct}: cannot read the NIfTI header ({type(err).__name__}: {err})") from err
    shape, affine = header.shape[:3], header.affine
    label = np.zeros(shape, dtype=np.uint8)
    for label_id, path in sorted(masks):
        try:
            image = nib.load(str(path))
            mask = np.asanyarray(image.dataobj)
        except Exception as err:
            raise CorruptFileError(f"{path}: cannot read the mask ({type(err).__name__}: {err})") from err
        if mask.shape[:3] != shape or not np.allclose(image.affine, affine, atol=AFFINE_TOLERANCE_MM):
            raise CorruptFileError(f"{path}: mask of shape {mask.shape} is not on the grid of {ct} (shape {shape}, "
                                   f"affines within {AFFINE_TOLERANCE_MM} mm)")
        label[(mask.reshape(shape) > 0) & (label == 0)] = label_id
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.nii.gz")
    image = nib.Nifti1Image(label, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    nib.save(image, str(tmp))
    os.replace(tmp, out)
    stamp_path.write_text(json.dumps(stamp))
    return "built"


def _combine(args: tuple[Path, list[tuple[int, Path]], Path]) -> str:
    return combine_masks(*args)


def import_totalsegmentator(root: Path, *, template: ClassTemplate, cache: Path, workers: int = 0,
                            progress: bool = True, **_) -> Imported:
    """Every case of ``meta.csv``: its CT and a label map combined from ``segmentations/*.nii.gz`` into
    ``cache/<case>.nii.gz``. Each case must have exactly one mask per class of the ``TotalSegmentator``
    label map, named as TotalSegmentator v2 names its classes."""
    splits = _read_meta(root)
    ids = {cls: i for i, cls in template.label_map(DATASET).items()}
    jobs, cases = [], []
    for case_id, split in splits.items():
        folder = root / case_id
        ct = folder / "ct.nii.gz"
        if not ct.is_file():
            raise InvalidInputError(f"{root / 'meta.csv'}: lists {case_id}, but {ct} is missing")
        named = {}
        for path in nifti_files(folder / "segmentations"):
            cls = template.resolve(strip_nifti(path.name))
            if cls not in ids:
                raise InvalidInputError(f"{path}: {strip_nifti(path.name)!r} is no class of the {DATASET} label map "
                                        "(a TotalSegmentator v1 or other-task mask?)")
            if cls in named:
                raise InvalidInputError(f"{path}: a second mask of class {cls} (also {named[cls]})")
            named[cls] = path
        missing = sorted(set(ids) - set(named), key=ids.get)
        if missing:
            raise InvalidInputError(f"{folder / 'segmentations'}: no mask of {missing[0]!r} (label {ids[missing[0]]})"
                                    f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}; TotalSegmentator "
                                    f"v2 has one file per class, {len(ids)} in all")
        label = cache / f"{case_id}.nii.gz"
        jobs.append((ct, [(ids[cls], path) for cls, path in named.items()], label))
        cases.append(ImportedCase(image=ct, label=label, split=split, case_id=case_id))
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.map(_combine, jobs) if pool else map(_combine, jobs)
        counts = Counter(tqdm(results, total=len(jobs), desc=f"combining TotalSegmentator masks into {cache}",
                              unit="case", disable=not progress))
    notes = [f"label maps in {cache}: {counts['built']} built, {counts['cached']} already there"]
    return Imported(dataset=DATASET, cases=cases, notes=notes)
