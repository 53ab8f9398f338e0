"""Check a segmentation datalist before training on it: every file read once.

:func:`check_datalist` opens every image and label and reports, per case:

errors (``medmoe seg check`` exits 1):
    - a file that is missing or cannot be read; a training or validation entry without a label;
    - a label whose shape differs from its image's, or whose voxel grid is not the image's: every entry of
      the two 4x4 affines within :data:`AFFINE_ATOL` (mm for the origin, mm per voxel for the axes) plus
      :data:`AFFINE_RTOL` of the entry (NIfTI stores them as float32), so a shifted axis, or one flipped
      about its first voxel, is caught;
    - a label value that is not 0 and not an id of the dataset's label map;
    - a voxel size outside :data:`SPACING_RANGE_MM`, or axes that are not orthogonal (a sheared header);
    - a CT whose voxels are those of another entry's CT (a hash of the voxel values, so a copy saved with
      other compression still matches): the same case in two datasets, in training and validation/test, or
      listed twice.

warnings:
    - a label on the image's voxel grid stored in another order (an axis reversed, as TotalSegmentator's
      NIfTI labels of DICOM series are): training, prediction and evaluation place image and label by
      their affines, so the pair is read aligned;
    - an axis more than :data:`OBLIQUE_DEGREES` off the scanner axes;
    - intensities that do not look like Hounsfield units.

:func:`quick_check` is the part that reads no voxels (the datalist parses, its datasets are known, every
file exists); ``medmoe seg train`` runs it before it starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medmoe.errors import InvalidInputError, MedMoEError
from medmoe.seg.data import SPLITS, load_datalist

logger = logging.getLogger(__name__)

AFFINE_ATOL = 1e-3
AFFINE_RTOL = 1e-5
SPACING_RANGE_MM = (0.1, 20.0)
OBLIQUE_DEGREES = 10.0
_ORTHOGONAL_COS = 1e-3


@dataclass
class CaseReport:
    """What :func:`check_datalist` found in one datalist entry."""

    split: str
    dataset: str
    image: str
    label: str | None
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    orientation: str | None = None
    label_values: list[int] | None = None
    content_hash: str | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "error" if self.errors else "warning" if self.warnings else "ok"


@dataclass
class CheckReport:
    """Per-case results of :func:`check_datalist`, in datalist order."""

    datalist: str
    cases: list[CaseReport]

    @property
    def n_errors(self) -> int:
        return sum(bool(c.errors) for c in self.cases)

    @property
    def n_warnings(self) -> int:
        return sum(bool(c.warnings) and not c.errors for c in self.cases)

    def to_dict(self) -> dict:
        return {"datalist": self.datalist, "cases": len(self.cases), "with_errors": self.n_errors,
                "with_warnings": self.n_warnings,
                "tolerances": {"affine_atol": AFFINE_ATOL, "affine_rtol": AFFINE_RTOL,
                               "spacing_range_mm": SPACING_RANGE_MM, "oblique_degrees": OBLIQUE_DEGREES},
                "per_case": [{**asdict(c), "status": c.status} for c in self.cases]}


def _exists(path: str) -> bool:
    return os.path.isfile(path) or os.path.isdir(path)


def quick_check(datalist: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> int:
    """The checks that read no voxel: the datalist parses, every dataset has a label map, every image and label
    file exists, and every training/validation entry has a label.

    Returns:
        the number of entries checked.

    Raises:
        InvalidInputError: naming the first missing files (and how many there are in all).
    """
    parsed = load_datalist(datalist)
    problems: list[str] = []
    for split in splits:
        for entry in parsed.splits.get(split, []):
            if not _exists(entry["image"]):
                problems.append(f"{split}: image {entry['image']} does not exist")
            if "label" in entry:
                if not os.path.isfile(entry["label"]):
                    problems.append(f"{split}: label {entry['label']} does not exist")
            elif split != "test":
                problems.append(f"{split}: {entry['image']} has no label")
    if problems:
        shown = "\n  ".join(problems[:5])
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise InvalidInputError(f"{datalist}: {len(problems)} missing file(s):\n  {shown}{more}\n"
                                f"(`medmoe seg check {datalist}` lists every problem)")
    return sum(len(parsed.splits.get(split, [])) for split in splits)


def _axcodes(affine: np.ndarray) -> str:
    import nibabel as nib

    return "".join(nib.aff2axcodes(affine))


def _geometry_problems(report: CaseReport, affine: np.ndarray, spacing: tuple[float, ...], path: str) -> None:
    """Add the voxel size, shear and obliqueness problems of an image to ``report``."""
    errors, warnings = report.errors, report.warnings
    lo, hi = SPACING_RANGE_MM
    if any(not lo <= s <= hi for s in spacing):
        errors.append(f"{path}: voxel size {tuple(round(s, 4) for s in spacing)} mm is outside {lo}..{hi} mm "
                      "(a wrong header?)")
    axes = affine[:3, :3] / np.maximum(np.linalg.norm(affine[:3, :3], axis=0), 1e-12)
    cos = np.abs(axes.T @ axes - np.eye(3)).max()
    if cos > _ORTHOGONAL_COS:
        errors.append(f"{path}: the voxel axes are not orthogonal (|cos| up to {cos:.3g}; a sheared affine)")
    tilt = np.degrees(np.arccos(np.clip(np.abs(axes).max(axis=0), -1.0, 1.0))).max()
    if tilt > OBLIQUE_DEGREES:
        warnings.append(f"{path}: an axis is {tilt:.0f} degrees off the scanner axes (oblique acquisition)")


def _reversed_axes(affine: np.ndarray, shape: tuple[int, ...], axes: list[int]) -> np.ndarray:
    """The affine of the same voxels stored with ``axes`` reversed (voxel n-1-i where i was)."""
    out = np.array(affine, dtype=np.float64)
    for k in axes:
        out[:3, 3] += out[:3, k] * (shape[k] - 1)
        out[:3, k] *= -1
    return out


def _grid_difference(image: np.ndarray, label: np.ndarray, shape: tuple[int, ...]) -> tuple[str | None, str | None]:
    """(error, note) comparing a label's affine with its image's (both of ``shape``): None, None when equal;
    a note when the label is the image's grid stored with axes reversed; an error otherwise."""
    if np.allclose(image, label, atol=AFFINE_ATOL, rtol=AFFINE_RTOL):
        return None, None
    flipped = [k for k in range(3) if np.dot(image[:3, k], label[:3, k]) < 0]
    names = ", ".join("ijk"[k] for k in flipped)
    if flipped and np.allclose(image, _reversed_axes(label, shape, flipped), atol=AFFINE_ATOL, rtol=AFFINE_RTOL):
        return None, (f"stored with axis {names} reversed ({_axcodes(label)} vs {_axcodes(image)}) on the "
                      "image's grid: read aligned")
    if flipped:
        return f"axis {names} flipped ({_axcodes(label)} vs {_axcodes(image)}) onto another grid", None
    diff = np.abs(image - label).max()
    return f"entries differ by up to {diff:.4g} (tolerance {AFFINE_ATOL} + {AFFINE_RTOL} x entry)", None


def check_case(entry: dict[str, str], split: str, label_ids: list[int]) -> CaseReport:
    """Read one entry's image and label and check them (everything but duplicates, which need every case)."""
    from medmoe.data.volumes import check_hounsfield, read_ct, read_label

    report = CaseReport(split=split, dataset=entry["dataset"], image=entry["image"], label=entry.get("label"))
    try:
        image = read_ct(entry["image"], check_ct=False)
    except (MedMoEError, OSError, ValueError) as err:
        report.errors.append(f"{entry['image']}: unreadable image ({err})" if _exists(entry["image"])
                             else f"{entry['image']}: image does not exist")
        image = None
    if image is not None:
        report.shape, report.spacing = image.shape, tuple(round(s, 4) for s in image.spacing)
        report.orientation = _axcodes(image.affine)
        _geometry_problems(report, image.affine, image.spacing, entry["image"])
        try:
            check_hounsfield(image)
        except MedMoEError as err:
            report.warnings.append(str(err))
        array = image.array.astype(np.int32 if image.array.dtype.kind in "iub" else np.float32, copy=False)
        digest = hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16)
        digest.update(repr(array.shape).encode())
        report.content_hash = digest.hexdigest()
    if "label" not in entry:
        if split != "test":
            report.errors.append(f"{entry['image']}: a {split} entry needs a label")
        return report
    try:
        label = read_label(entry["label"])
    except (MedMoEError, OSError, ValueError) as err:
        report.errors.append(f"{entry['label']}: unreadable label ({err})" if os.path.isfile(entry["label"])
                             else f"{entry['label']}: label does not exist")
        return report
    report.label_values = [int(v) for v in np.unique(label.array)]
    outside = sorted(set(report.label_values) - {0, *label_ids})
    if outside:
        report.errors.append(f"{entry['label']}: label value(s) {outside[:10]} are not in the {entry['dataset']} "
                             f"label map (expected 0 or {_ranges(label_ids)})")
    if image is not None:
        if label.shape != image.shape:
            report.errors.append(f"{entry['label']}: label shape {label.shape} differs from the image's "
                                 f"{image.shape}")
        else:
            error, note = _grid_difference(image.affine, label.affine, image.shape)
            if error:
                report.errors.append(f"{entry['label']}: label affine does not agree with the image's: {error}")
            if note:
                report.warnings.append(f"{entry['label']}: label {note}")
    return report


def _ranges(ids: list[int]) -> str:
    ids = sorted(ids)
    if ids and ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}..{ids[-1]}" if len(ids) > 1 else str(ids[0])
    return str(ids)


def _run(job: tuple[dict[str, str], str, list[int]]) -> CaseReport:
    return check_case(*job)


def _mark_duplicates(cases: list[CaseReport]) -> None:
    groups: dict[str, list[CaseReport]] = defaultdict(list)
    for case in cases:
        if case.content_hash:
            groups[case.content_hash].append(case)
    for group in groups.values():
        for case in group:
            for other in (o for o in group if o is not case):
                if other.dataset != case.dataset:
                    why = f"the same CT as {other.image} of dataset {other.dataset} ({other.split})"
                elif other.split != case.split:
                    why = f"the same CT as {other.image} in {other.split} (a {case.split}/{other.split} overlap)"
                else:
                    why = f"the same CT as {other.image}, also in {other.split}"
                case.errors.append(f"{case.image}: {why}")


def check_datalist(datalist: str | os.PathLike, *, workers: int = 0, progress: bool = True) -> CheckReport:
    """Check every entry of a datalist (see the module docstring for what is checked).

    Args:
        datalist: the datalist JSON.
        workers: processes reading files (0: this process).
        progress: a tqdm bar over the cases.

    Raises:
        InvalidInputError: the datalist itself cannot be parsed or names an unknown dataset.
    """
    parsed = load_datalist(datalist)
    ids = {d: sorted(parsed.template.label_map(d)) for d in parsed.datasets}
    jobs = [(entry, split, ids[entry["dataset"]]) for split in SPLITS for entry in parsed.splits.get(split, [])]
    with ProcessPoolExecutor(workers) if workers > 0 else contextlib.nullcontext() as pool:
        results = pool.map(_run, jobs, chunksize=1) if pool else map(_run, jobs)
        cases = list(tqdm(results, total=len(jobs), desc=f"checking {Path(datalist).name}", unit="case",
                          disable=not progress))
    _mark_duplicates(cases)
    return CheckReport(datalist=str(datalist), cases=cases)


def format_report(report: CheckReport, *, errors_only: bool = False) -> Iterator[str]:
    """The per-case table and a summary line, one string per line."""
    yield f"{'split':10s} {'dataset':22s} {'case':28s} {'shape':16s} {'spacing (mm)':18s} {'orient':6s} status"
    for c in report.cases:
        if errors_only and c.status == "ok":
            continue
        shape = "x".join(map(str, c.shape)) if c.shape else "-"
        spacing = "x".join(f"{s:g}" for s in c.spacing) if c.spacing else "-"
        name = Path(c.image).name
        yield (f"{c.split:10s} {c.dataset[:22]:22s} {name[-28:]:28s} {shape:16s} {spacing:18s} "
               f"{c.orientation or '-':6s} {c.status}")
        yield from (f"    error: {msg}" for msg in c.errors)
        yield from (f"    warning: {msg}" for msg in c.warnings)
    ok = len(report.cases) - report.n_errors - report.n_warnings
    yield (f"{len(report.cases)} case(s): {ok} ok, {report.n_warnings} with warnings only, {report.n_errors} with "
           f"errors")
