"""Built-in segmentation data: synthetic phantom datasets and the real TotalSegmentator example CTs.

``build_phantom_pack`` writes several partially labelled phantom "datasets" (each labels a different subset
of organs with its own ids, grid and orientation) plus fully labelled held-out test phantoms.
``build_totalseg_pack`` extracts the three real example CTs of the ``totalsegmentator==2.18.0`` source
tarball: the 3 mm abdomen-pelvis NIfTI CT with its 'total' label map, the 1.5 mm chest CT of the aorta report
with one label map merged from its binary masks (``aorta-report``), and the 20-slice DICOM series with its
'total' label map (the test split). Both write a Decathlon-style datalist whose ``label_maps`` section
carries the label map of every dataset it uses.
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

from medmoe.data.volumes import Volume, read_ct, read_label, write_nifti
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.seg.phantoms import FULL_LABELS, Grid, relabel, render_phantom

logger = logging.getLogger(__name__)

TOTALSEG_VERSION = "2.18.0"
TOTALSEG_TARBALL = f"totalsegmentator-{TOTALSEG_VERSION}.tar.gz"
_TS_PREFIX = f"totalsegmentator-{TOTALSEG_VERSION}/"
_TS_REF = _TS_PREFIX + "tests/reference_files/"
TOTALSEG_DATASET = "TotalSegmentator"
AORTA_DATASET = "aorta-report"
# Binary masks shipped with the aorta-report CT (``aorta_report/example_ct.nii.gz``, 233 x 167 x 191 at 1.5 mm),
# as (tar member below the reference files, template class), in priority order: where two kept masks
# overlap, the earlier one wins. Most are stored on a crop of the CT's grid: outside the crop the class is
# unknown, so a mask is kept only if :func:`mask_coverage` says the CT shows the whole structure inside it.
AORTA_MASKS: tuple[tuple[str, str], ...] = (
    ("aorta_report/test_result/models/aorta.nii.gz", "aorta"),
    ("pulmonary_report/models/heart.nii.gz", "heart"),
    ("aorta_report/test_result/models/brachiocephalic_trunk.nii.gz", "brachiocephalic_trunk"),
    ("aorta_report/test_result/models/celiac_trunk.nii.gz", "celiac_trunk"),
    ("aorta_report/test_result/models/common_carotid_artery_left.nii.gz", "common_carotid_artery_left"),
    ("aorta_report/test_result/models/subclavian_artery_left.nii.gz", "subclavian_artery_left"),
    ("aorta_report/test_result/models/vertebrae_T12.nii.gz", "vertebrae_T12"),
    ("aorta_report/test_result/models/iliac_artery_left.nii.gz", "iliac_artery_left"),
    ("aorta_report/test_result/models/iliac_artery_right.nii.gz", "iliac_artery_right"),
)
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


def mask_coverage(mask: Volume, ct: Volume) -> str | None:
    """Whether a binary mask labels its class over the whole CT: None if so, else the reason it does not.

    A mask on the CT's own grid labels the whole CT. A mask on a crop of it (same world space, other origin
    and shape) says nothing outside the crop, so it counts only when the structure is known to lie inside
    the crop: the mask is non-empty and touches no face of the crop that lies inside the CT (touching a face
    the crop shares with the CT is fine: the CT ends there too). An empty crop cannot tell "absent" from
    "outside the crop".
    """
    if mask.array.shape == ct.array.shape and np.allclose(mask.affine, ct.affine, atol=1e-3):
        return None
    offset = np.linalg.inv(ct.affine) @ mask.affine
    start = offset[:3, 3]
    if not np.allclose(offset[:3, :3], np.eye(3), atol=1e-3) or not np.allclose(start, np.rint(start), atol=1e-2):
        return "its grid is not a crop of the CT's grid"
    start = np.rint(start).astype(int)
    inside = mask.array > 0
    if not inside.any():
        return "empty on its crop (absent, or outside the crop: unknown)"
    where = np.argwhere(inside)
    lo, hi = where.min(0), where.max(0)
    for axis, name in enumerate("ijk"):
        if lo[axis] == 0 and start[axis] > 0:
            return f"touches the crop's lower {name} face, which lies inside the CT (cut by the crop)"
        if hi[axis] == inside.shape[axis] - 1 and start[axis] + inside.shape[axis] < ct.array.shape[axis]:
            return f"touches the crop's upper {name} face, which lies inside the CT (cut by the crop)"
    return None


def merge_masks(ct: Volume, masks: Iterable[tuple[str, Volume]]) -> tuple[np.ndarray, dict[int, str], dict[str, str]]:
    """One label map on the CT's grid from binary masks stored on the CT's grid or crops of it.

    Each mask is checked with :func:`mask_coverage` and resampled (nearest, by world coordinates, zeros
    outside its grid) onto the CT's grid; kept masks get ids 1, 2, ... in the given order, and an earlier
    mask keeps the voxels two masks share.

    Returns:
        (label ids (X, Y, Z) uint8, {id: class}, {class: why it was left out}).
    """
    from medmoe.seg.resample import resample_to_grid

    label = np.zeros(ct.array.shape, dtype=np.uint8)
    kept: dict[int, str] = {}
    excluded: dict[str, str] = {}
    for name, mask in masks:
        reason = mask_coverage(mask, ct)
        if reason:
            excluded[name] = reason
            continue
        on_ct = resample_to_grid((mask.array > 0)[None], mask.affine, ct.affine, ct.array.shape, "nearest")[0]
        value = len(kept) + 1
        label[on_ct & (label == 0)] = value
        kept[value] = name
    return label, kept, excluded


def _mask_file(mask_dir: Path, member: str) -> Path:
    return mask_dir / member.replace("/", "__")


def _build_aorta_label(root: Path, mask_dir: Path) -> tuple[dict[int, str], dict[str, str]]:
    ct = read_ct(root / "aorta_report" / "example_ct.nii.gz")
    masks = [(name, read_label(_mask_file(mask_dir, member))) for member, name in AORTA_MASKS]
    label, kept, excluded = merge_masks(ct, masks)
    write_nifti(label, ct.affine, root / "aorta_report" / "label.nii.gz", dtype=np.uint8)
    for name, reason in excluded.items():
        logger.info("aorta-report: %s left out: %s", name, reason)
    return kept, excluded


def build_totalseg_pack(out: str | os.PathLike, *, tarball: str | os.PathLike | None = None,
                        download: bool = True) -> Path:
    """Extract the real example CTs with their TotalSegmentator label maps; returns the datalist path.

    Files:

    - ``example_ct.nii.gz`` (122x101x112 at 3 mm, abdomen-pelvis) with ``example_seg.nii.gz``
      (``example_seg_fast_force_split``, the 'total' map): dataset ``TotalSegmentator``;
    - ``aorta_report/example_ct.nii.gz`` (233x167x191 at 1.5 mm, chest and upper abdomen, arterial phase) with
      ``aorta_report/label.nii.gz``, merged by :func:`merge_masks` from the binary masks of :data:`AORTA_MASKS`
      (resampled from their crops onto the CT's grid; a mask whose structure its crop cuts, or that is empty,
      is left out, since outside its crop the class is unknown): dataset ``aorta-report``, with the kept
      classes as its label map (aorta, heart, brachiocephalic trunk, coeliac trunk in 2.18.0);
    - ``example_ct_dicom/`` (20-slice 512x512 DICOM series, 2 mm, upper abdomen with the arms) with
      ``example_seg_dicom.nii.gz`` (the 'total' map): dataset ``TotalSegmentator``.

    Splits: training and validation = the two NIfTI CTs, test = the DICOM series (never trained on). The
    datalist's ``aorta_report`` key records the kept and the excluded masks. The masks are TotalSegmentator's
    model output, not manual annotation.

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
    mask_dir = root / ".aorta_report_masks"
    wanted = {
        _TS_REF + "example_ct.nii.gz": root / "example_ct.nii.gz",
        _TS_REF + "example_seg_fast_force_split.nii.gz": root / "example_seg.nii.gz",
        _TS_REF + "example_seg_dicom.nii.gz": root / "example_seg_dicom.nii.gz",
        _TS_REF + "aorta_report/example_ct.nii.gz": root / "aorta_report" / "example_ct.nii.gz",
    }
    for member, _ in AORTA_MASKS:
        wanted[_TS_REF + member] = _mask_file(mask_dir, member)
    root.mkdir(parents=True, exist_ok=True)
    n_dicom = 0
    try:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name in wanted:
                    target = wanted[member.name]
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
    missing = [str(v.relative_to(root)) for v in wanted.values() if not v.is_file()]
    if missing or n_dicom == 0:
        raise CorruptFileError(f"{path}: tarball lacks {missing or ['example_ct_dicom/']}; expected totalsegmentator {TOTALSEG_VERSION}")
    try:
        aorta_map, excluded = _build_aorta_label(root, mask_dir)
    finally:
        shutil.rmtree(mask_dir, ignore_errors=True)
    if not aorta_map:
        raise CorruptFileError(f"{path}: no aorta-report mask covers its CT; expected totalsegmentator {TOTALSEG_VERSION}")
    ct = _entry(root, root / "example_ct.nii.gz", root / "example_seg.nii.gz", TOTALSEG_DATASET)
    aorta = _entry(root, root / "aorta_report" / "example_ct.nii.gz", root / "aorta_report" / "label.nii.gz",
                   AORTA_DATASET)
    dicom = _entry(root, root / "example_ct_dicom", root / "example_seg_dicom.nii.gz", TOTALSEG_DATASET)
    datalist = {
        "description": f"TotalSegmentator {TOTALSEG_VERSION} example CTs with TotalSegmentator label maps "
                       "(model output, not manual annotation); test = the DICOM series",
        "label_maps": {TOTALSEG_DATASET: {str(k): v for k, v in totalseg_class_map(path).items()},
                       AORTA_DATASET: {str(k): v for k, v in aorta_map.items()}},
        "training": [ct, aorta], "validation": [ct, aorta], "test": [dicom],
        "aorta_report": {"kept": {str(k): v for k, v in aorta_map.items()}, "excluded": excluded},
    }
    out_path = root / "datalist.json"
    out_path.write_text(json.dumps(datalist, indent=1) + "\n")
    logger.info("extracted the TotalSegmentator examples (%d DICOM slices, aorta-report classes %s) to %s",
                n_dicom, ", ".join(aorta_map.values()), root)
    return out_path


def build_samples(out: str | os.PathLike, *, seed: int = 0, quick: bool = False, real: bool = True,
                  download: bool = True, progress: bool = True) -> dict[str, Path]:
    """Both packs under ``out/phantoms`` and ``out/totalseg``; returns {pack: datalist path}."""
    root = Path(out)
    paths = {"phantoms": build_phantom_pack(root / "phantoms", seed=seed, quick=quick, progress=progress)}
    if real:
        paths["totalseg"] = build_totalseg_pack(root / "totalseg", download=download)
    return paths
