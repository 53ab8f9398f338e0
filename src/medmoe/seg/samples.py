"""Built-in segmentation data: synthetic phantom datasets and the real TotalSegmentator example CTs.

``build_phantom_pack`` writes several partially labelled phantom "datasets" (each labels a different subset
of organs with its own ids, grid and orientation) plus fully labelled held-out test phantoms.
``build_totalseg_pack`` extracts the example CTs of the ``totalsegmentator==2.18.0`` source tarball (one
NIfTI CT with its label map, one DICOM series with its label map). Both write a Decathlon-style datalist
whose ``label_maps`` section carries the label map of every dataset it uses.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.data.volumes import write_nifti
from medmoe.seg.phantoms import FULL_LABELS, Grid, relabel, render_phantom

logger = logging.getLogger(__name__)

TOTALSEG_VERSION = "2.18.0"
TOTALSEG_TARBALL = f"totalsegmentator-{TOTALSEG_VERSION}.tar.gz"
_TS_PREFIX = f"totalsegmentator-{TOTALSEG_VERSION}/"
_TS_REF = _TS_PREFIX + "tests/reference_files/"
TOTALSEG_DATASET = "TotalSegmentator"
PHANTOM_TEST_DATASET = "synthetic-phantom"

# Each phantom dataset labels a different subset with its own ids, grid and stored orientation, so that every
# organ is labelled by some dataset but none labels all, and the pipeline must resample and reorient.
PHANTOM_DATASETS: dict[str, dict] = {
    "phantom-A": {
        "labels": {1: "liver", 2: "liver_tumour", 3: "spleen", 4: "gallbladder", 5: "stomach"},
        "spacing": (2.8, 2.8, 3.0), "axcodes": "RAS",
    },
    "phantom-B": {
        "labels": {1: "kidney_right", 2: "kidney_left", 3: "kidney_tumour", 4: "spleen", 5: "aorta"},
        "spacing": (3.2, 3.2, 2.5), "axcodes": "LPS",
    },
    "phantom-C": {
        "labels": {1: "liver", 2: "kidney_right", 3: "kidney_left", 4: "pancreas", 5: "aorta", 6: "stomach"},
        "spacing": (3.0, 3.0, 4.0), "axcodes": "RAS",
    },
}
PHANTOM_TEST = {"labels": FULL_LABELS, "spacing": (3.0, 3.0, 3.0), "axcodes": "LAS"}
# Held-out test phantoms label every class. They take turns between the test grid and the grid and
# orientation of each training dataset, each under its own dataset name, so that an evaluation reports
# every organ per dataset style, including the organs that dataset never labels in training.
PHANTOM_TEST_STYLES: dict[str, dict] = {
    PHANTOM_TEST_DATASET: PHANTOM_TEST,
    **{f"{name} held-out": {"labels": FULL_LABELS, "spacing": spec["spacing"], "axcodes": spec["axcodes"]}
       for name, spec in PHANTOM_DATASETS.items()},
}
# (train, validation) cases per dataset, and test cases.
PHANTOM_SIZES = {"full": (24, 2, 12), "quick": (4, 1, 4)}


def _entry(root: Path, image: Path, label: Path, dataset: str) -> dict[str, str]:
    return {"image": image.relative_to(root).as_posix(), "label": label.relative_to(root).as_posix(), "dataset": dataset}


def build_phantom_pack(out: str | os.PathLike, *, seed: int = 0, quick: bool = False, progress: bool = True,
                       sizes: tuple[int, int, int] | None = None) -> Path:
    """Write the phantom datasets and their datalist; returns the datalist path.

    Layout: ``out/<dataset>/{images,labels}/<case>.nii.gz`` and ``out/datalist.json`` with ``training``,
    ``validation`` (from phantom-A/B/C, partially labelled) and ``test`` (every class labelled, tumours in
    about half the cases; case i is stored like :data:`PHANTOM_TEST_STYLES` entry ``i % 4``:
    ``synthetic-phantom``, then ``phantom-A held-out`` on phantom-A's grid and orientation, and so on).

    Args:
        out: output folder (created; existing case files are overwritten).
        seed: base seed; the same seed gives identical files.
        quick: a handful of cases per dataset (for tests and smoke runs).
        progress: show a tqdm bar.
        sizes: (train, validation) cases per dataset and test cases, overriding ``quick``.
    """
    root = Path(out)
    n_train, n_val, n_test = sizes or PHANTOM_SIZES["quick" if quick else "full"]
    jobs = []
    for d, (name, spec) in enumerate(PHANTOM_DATASETS.items()):
        for i in range(n_train + n_val):
            jobs.append((name, spec, (seed, d, i), "training" if i < n_train else "validation", f"{name}_{i:03d}"))
    styles = list(PHANTOM_TEST_STYLES.items())
    for i in range(n_test):
        name, spec = styles[i % len(styles)]
        jobs.append((name, spec, (seed, 99, i), "test", f"test_{i:03d}"))
    datalist: dict = {
        "description": f"medmoe synthetic CT phantoms (seed {seed}{', quick' if quick else ''})",
        "label_maps": {name: {str(k): v for k, v in spec["labels"].items()} for name, spec in PHANTOM_DATASETS.items()},
        "training": [], "validation": [], "test": [],
    }
    for name in PHANTOM_TEST_STYLES:
        datalist["label_maps"][name] = {str(k): v for k, v in FULL_LABELS.items()}
    tumours: dict[str, list[str]] = {}
    for name, spec, case_seed, split, case in tqdm(jobs, desc="phantoms", disable=not progress):
        phantom = render_phantom(case_seed, Grid.make(spec["spacing"], spec["axcodes"]))
        folder = root / name.replace(" ", "-")
        image = write_nifti(phantom.image, phantom.affine, folder / "images" / f"{case}.nii.gz")
        label = write_nifti(relabel(phantom, spec["labels"]), phantom.affine, folder / "labels" / f"{case}.nii.gz",
                            dtype=np.uint8)
        datalist[split].append(_entry(root, image, label, name))
        tumours[case] = list(phantom.tumours)
    datalist["tumours"] = tumours
    path = root / "datalist.json"
    path.write_text(json.dumps(datalist, indent=1) + "\n")
    logger.info("wrote %d phantom cases and %s", len(jobs), path)
    return path


# ----------------------------------------------------------------------------- TotalSegmentator pack
def _candidate_dirs() -> list[Path]:
    env = os.environ.get("MEDMOE_CACHE")
    repo = Path(__file__).resolve().parents[3]
    dirs = [Path(env)] if env else []
    return [*dirs, Path.cwd() / ".cache", repo / ".cache"]


def find_totalseg_tarball(extra: Iterable[str | os.PathLike] = ()) -> Path | None:
    """Path of ``totalsegmentator-2.18.0.tar.gz`` in ``extra``, ``$MEDMOE_CACHE``, ``./.cache`` or the
    checkout's ``.cache`` (where ``make setup`` puts it); None when absent."""
    for d in [*map(Path, extra), *_candidate_dirs()]:
        candidate = d if d.name == TOTALSEG_TARBALL else d / TOTALSEG_TARBALL
        if candidate.is_file():
            return candidate
    return None


def download_totalseg_tarball(cache_dir: str | os.PathLike) -> Path:
    """``pip download`` the TotalSegmentator source tarball (the package is not installed, only fetched).

    Raises:
        InvalidInputError: pip failed (e.g. no network); the message says how to fetch it by hand.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "download", "--no-deps",
           "--no-binary", ":all:", f"totalsegmentator=={TOTALSEG_VERSION}", "-d", str(cache)]
    logger.warning("TotalSegmentator %s source tarball not found; downloading it from PyPI into %s",
                   TOTALSEG_VERSION, cache)
    result = subprocess.run(cmd, capture_output=True, text=True)
    path = cache / TOTALSEG_TARBALL
    if result.returncode != 0 or not path.is_file():
        raise InvalidInputError(
            f"could not download {TOTALSEG_TARBALL} ({result.stderr.strip()[-300:]}); fetch it with "
            f"`{' '.join(cmd)}` or `make setup`, or pass --no-real"
        )
    return path


def totalseg_class_map(tarball: str | os.PathLike) -> dict[int, str]:
    """``class_map["total"]`` of the tarball's ``map_to_binary.py``, parsed without importing it."""
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(_TS_PREFIX + "totalsegmentator/map_to_binary.py")
        source = member.read().decode() if member else ""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            maps = ast.literal_eval(node.value)
            return {int(k): str(v) for k, v in maps["total"].items()}
    raise CorruptFileError(f"{tarball}: map_to_binary.py has no class_map literal")


def build_totalseg_pack(out: str | os.PathLike, *, tarball: str | os.PathLike | None = None,
                        download: bool = True) -> Path:
    """Extract the real example CTs with their TotalSegmentator label maps; returns the datalist path.

    Files: ``example_ct.nii.gz`` (122x101x112 at 3 mm) with ``example_seg.nii.gz``
    (``example_seg_fast_force_split``), and ``example_ct_dicom/`` (20-slice 512x512 DICOM series) with
    ``example_seg_dicom.nii.gz``. Splits: training and validation = the NIfTI CT, test = the DICOM series.
    The label masks are TotalSegmentator's model output, not manual annotation.

    Args:
        out: output folder.
        tarball: the source tarball; default :func:`find_totalseg_tarball`, downloaded if ``download``.
        download: fetch the tarball from PyPI when it is not found.
    """
    root = Path(out)
    path = Path(tarball) if tarball else find_totalseg_tarball()
    if path is None:
        if not download:
            raise InvalidInputError(
                f"{TOTALSEG_TARBALL} not found in {[str(d) for d in _candidate_dirs()]}; run `make setup` "
                "or allow the download")
        path = download_totalseg_tarball(Path(os.environ.get("MEDMOE_CACHE") or Path.cwd() / ".cache"))
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such tarball")
    wanted = {
        _TS_REF + "example_ct.nii.gz": "example_ct.nii.gz",
        _TS_REF + "example_seg_fast_force_split.nii.gz": "example_seg.nii.gz",
        _TS_REF + "example_seg_dicom.nii.gz": "example_seg_dicom.nii.gz",
    }
    root.mkdir(parents=True, exist_ok=True)
    n_dicom = 0
    try:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name in wanted:
                    target = root / wanted[member.name]
                elif member.name.startswith(_TS_REF + "example_ct_dicom/") and member.isfile():
                    target = root / "example_ct_dicom" / Path(member.name).name
                    n_dicom += 1
                else:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CorruptFileError(f"{path}: cannot read the TotalSegmentator tarball ({err})") from err
    missing = [v for v in wanted.values() if not (root / v).is_file()]
    if missing or n_dicom == 0:
        raise CorruptFileError(f"{path}: tarball lacks {missing or ['example_ct_dicom/']}; expected totalsegmentator {TOTALSEG_VERSION}")
    ct = _entry(root, root / "example_ct.nii.gz", root / "example_seg.nii.gz", TOTALSEG_DATASET)
    dicom = _entry(root, root / "example_ct_dicom", root / "example_seg_dicom.nii.gz", TOTALSEG_DATASET)
    datalist = {
        "description": f"TotalSegmentator {TOTALSEG_VERSION} example CTs with TotalSegmentator 'total' label maps "
                       "(model output, not manual annotation)",
        "label_maps": {TOTALSEG_DATASET: {str(k): v for k, v in totalseg_class_map(path).items()}},
        "training": [ct], "validation": [ct], "test": [dicom],
    }
    out_path = root / "datalist.json"
    out_path.write_text(json.dumps(datalist, indent=1) + "\n")
    logger.info("extracted the TotalSegmentator examples (%d DICOM slices) to %s", n_dicom, root)
    return out_path


def build_samples(out: str | os.PathLike, *, seed: int = 0, quick: bool = False, real: bool = True,
                  download: bool = True, progress: bool = True) -> dict[str, Path]:
    """Both packs under ``out/phantoms`` and ``out/totalseg``; returns {pack: datalist path}."""
    root = Path(out)
    paths = {"phantoms": build_phantom_pack(root / "phantoms", seed=seed, quick=quick, progress=progress)}
    if real:
        paths["totalseg"] = build_totalseg_pack(root / "totalseg", download=download)
    return paths
