"""Evaluate a segmentation model on a datalist split: whole-CT prediction, metrics, overlays, one JSON.

Metrics are scored on each CT's native grid and, with ``eval_spacing``, also on an isotropic (or given)
grid as the CLIP-Driven Universal Model reports them (Dice at 1.5 mm): see :func:`metrics_at_spacing`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medmoe.data.volumes import Volume, read_ct, read_label, same_grid
from medmoe.errors import InvalidInputError, MedMoEError
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.data import load_datalist
from medmoe.seg.metrics import aggregate, case_metrics, tumour_detection
from medmoe.seg.overlay import save_overlay
from medmoe.seg.predict import predict_volume, resample_ct
from medmoe.seg.resample import resample_to_grid

logger = logging.getLogger(__name__)


def label_on_image_grid(label: Volume, image: Volume) -> np.ndarray:
    """The label ids resampled (nearest) onto the image's voxel grid when the two grids differ."""
    if same_grid(label.affine, label.shape, image.affine, image.shape):
        return label.array
    return resample_to_grid(label.array[None], label.affine, image.affine, image.shape, "nearest")[0]


def parse_eval_spacing(spacing: float | Sequence[float] | None) -> tuple[float, float, float] | None:
    """``None``, one millimetre value (isotropic) or three, as a tuple of three positive floats (or None).

    Raises:
        InvalidInputError: not one or three positive finite numbers.
    """
    if spacing is None:
        return None
    values = [spacing] if isinstance(spacing, int | float) else list(spacing)
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"eval spacing {spacing!r}: expected one or three millimetre values") from err
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InvalidInputError(f"eval spacing {spacing!r}: expected one or three positive millimetre values")
    return values[0], values[1], values[2]


def spacing_label(spacing: Sequence[float]) -> str:
    """``"1.5mm"`` for an isotropic spacing, ``"0.8x0.8x2.5mm"`` otherwise (table headers, log lines)."""
    return f"{spacing[0]:g}mm" if len(set(spacing)) == 1 else "x".join(f"{s:g}" for s in spacing) + "mm"


def image_at_spacing(image: Volume, spacing: Sequence[float]) -> Volume:
    """The CT resampled (linear, HU) onto the RAS grid at ``spacing`` mm that covers it.

    The grid and the interpolation are those of :func:`~medmoe.seg.predict.preprocess_volume` (MONAI
    ``Orientation`` to RAS, then ``Spacing``, before the HU window), as the Universal Model's test transforms:
    at the model's own spacing, predicting on the returned volume runs the model on the very grid and
    intensities of the native prediction, and its masks stay on that grid.
    """
    hu = resample_ct(image, spacing)
    return Volume(hu[0].as_tensor().numpy(), hu.affine.numpy().astype(np.float64), image.path,
                  dict(image.meta))


def metrics_at_spacing(masks: np.ndarray, grid: Volume, label: Volume, dataset: str, names: Sequence[str],
                       template: ClassTemplate, spacing: Sequence[float], *,
                       nsd_tolerance_mm: float = 2.0) -> dict[str, dict[str, float]]:
    """Dice, HD95 and NSD of masks predicted on ``grid`` (:func:`image_at_spacing`) against the label there.

    The reference is the label file resampled nearest onto the grid, as the Universal Model does.

    Args:
        masks: (K, X, Y, Z) bool prediction on ``grid``.
        grid: the CT at ``spacing`` (its affine and shape are the grid).
        label: the label map as read (its own grid).
        dataset: the case's dataset (which label ids mean which class).
        names: the K class names.
        template: class template of the datalist.
        spacing: three millimetre values.
        nsd_tolerance_mm: NSD boundary tolerance.

    Returns:
        {class: {"dice", "hd95", "nsd", "gt_voxels", "pred_voxels"}} on the grid (voxel counts of it).
    """
    ids = resample_to_grid(label.array[None], label.affine, grid.affine, grid.shape, "nearest")[0]
    reference = template.multi_hot(ids, dataset, names)
    return case_metrics(masks, reference, spacing, names, nsd_tolerance_mm=nsd_tolerance_mm)


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN floats as None and floats rounded to 6 decimals (in dicts, lists and tuples)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else round(obj, 6)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _wanted_classes(template: ClassTemplate, classes: Sequence[str] | None) -> list[str] | None:
    """The template names of ``classes`` (None: every labelled class).

    Raises:
        InvalidInputError: a class the template does not know.
    """
    if classes is None:
        return None
    wanted = [template.resolve(c) for c in classes]
    if None in wanted:
        raise InvalidInputError(f"class {classes[wanted.index(None)]!r} is not in the class template; see "
                                "ClassTemplate.names")
    return wanted


@dataclass
class _CaseRun:
    """One case read and predicted: its CT, label, multi-hot reference on the CT grid and native masks."""

    image: Volume
    label: Volume
    reference: np.ndarray
    masks: np.ndarray
    seconds: float
    at_spacing: tuple[np.ndarray, Volume] | None


def _predict_case(model: nn.Module, entry: dict[str, Any], names: Sequence[str], template: ClassTemplate,
                  eval_spacing: Sequence[float] | None, predict_kwargs: dict[str, Any]) -> _CaseRun:
    """Read a datalist entry's CT and label and predict ``names`` on it (and at ``eval_spacing`` if given).

    Raises:
        MedMoEError: no label file, an unreadable file, or a prediction refused.
    """
    if "label" not in entry:
        raise InvalidInputError("entry has no label file")
    image = read_ct(entry["image"])
    label = read_label(entry["label"])
    reference = template.multi_hot(label_on_image_grid(label, image), entry["dataset"], names)
    t0 = time.perf_counter()
    prediction = predict_volume(model, image, names, **predict_kwargs)
    seconds = time.perf_counter() - t0
    at_spacing = None
    if eval_spacing is not None:  # the prediction on the CT resampled there (the native one if already there)
        grid = image_at_spacing(image, eval_spacing)
        at_spacing = (prediction.masks, image)
        if not same_grid(grid.affine, grid.shape, image.affine, image.shape):
            at_spacing = (predict_volume(model, grid, names, **predict_kwargs).masks, grid)
    return _CaseRun(image, label, reference, prediction.masks, seconds, at_spacing)


def _score_case(run: _CaseRun, entry: dict[str, Any], names: Sequence[str], template: ClassTemplate,
                eval_spacing: Sequence[float] | None, nsd_tolerance_mm: float) -> dict[str, Any]:
    """The case's report entry: its metrics on the native grid (and at ``eval_spacing`` if given)."""
    metrics = case_metrics(run.masks, run.reference, run.image.spacing, names, nsd_tolerance_mm=nsd_tolerance_mm)
    case = {"path": entry["image"], "dataset": entry["dataset"], "seconds": round(run.seconds, 3), "metrics": metrics}
    if eval_spacing is not None:
        case["metrics_at_eval_spacing"] = metrics_at_spacing(
            *run.at_spacing, run.label, entry["dataset"], names, template, eval_spacing,
            nsd_tolerance_mm=nsd_tolerance_mm)
    return case


def _report(cases: list[dict[str, Any]], bad: list[dict[str, str]], template: ClassTemplate,
            settings: dict[str, Any], min_tumour_voxels: int,
            eval_spacing: Sequence[float] | None) -> dict[str, Any]:
    """The JSON-safe report: means per dataset and class, tumour detection, the cases, the bad files."""
    tumours = sorted({n for c in cases for n in c["metrics"] if n in template and template.is_tumour(n)})
    report = {
        **aggregate(cases),
        "tumour_detection": tumour_detection(cases, tumours, min_pred_voxels=min_tumour_voxels),
        "cases": cases,
        "bad": bad,
        "settings": settings,
    }
    if eval_spacing is not None:
        at_spacing = aggregate([{"dataset": c["dataset"], "metrics": c["metrics_at_eval_spacing"]} for c in cases])
        report["at_eval_spacing"] = {"spacing_mm": list(eval_spacing), **at_spacing}
    return json_safe(report)


def evaluate(model: nn.Module, datalist_path: str | os.PathLike, *, split: str = "test",
             classes: Sequence[str] | None = None, out: str | os.PathLike | None = None,
             overlay_dir: str | os.PathLike | None = None, nsd_tolerance_mm: float = 2.0, threshold: float = 0.5,
             overlap: float = 0.5, sw_batch_size: int = 1, device: torch.device | str | None = None,
             spacing: Sequence[float] | None = None, min_tumour_voxels: int = 1, progress: bool = True,
             max_cases: int | None = None,
             eval_spacing: float | Sequence[float] | None = None) -> dict[str, Any]:
    """Predict every case of a split and score the classes each case's dataset labels.

    Metrics are computed on each CT's native grid and spacing. Tumour classes are also scored for
    patient-level detection (a case is positive with at least ``min_tumour_voxels`` voxels).

    With ``eval_spacing`` each case is also scored as the Universal Model reports Dice at 1.5 mm: its CT is
    resampled to that spacing (:func:`image_at_spacing`), predicted there (a second inference; the masks
    stay on that grid and are post-processed there) and compared with the label resampled nearest to it
    (:func:`metrics_at_spacing`). :func:`~medmoe.seg.predict.predict_volume` keeps only native-grid
    masks, and resampling those back instead (nearest) is not the model's own mask: with the tests'
    stand-in band model at 1.5 mm on a synthetic ellipsoid (docs/seg.md), that Dice against the label was
    0.744 where the model's mask on the 1.5 mm grid scores 0.742 for a 0.8 x 0.8 x 1 mm CT, but 0.512 where
    it scores 0.580 for 5 mm slices, whose native steps the resampled masks keep. A CT already on that
    grid is not predicted twice.

    Args:
        model: a MoME model (see :func:`~medmoe.seg.predict.predict_volume`).
        datalist_path: the datalist JSON.
        split: ``training``, ``validation`` or ``test``.
        classes: restrict to these classes (names, synonyms or typos); default every labelled class.
        out: write the report JSON here (NaN written as null).
        overlay_dir: write one overlay PNG per case here.
        nsd_tolerance_mm: NSD boundary tolerance.
        threshold, overlap, sw_batch_size, device, spacing: passed to ``predict_volume``.
        max_cases: evaluate only the first cases (smoke runs).
        eval_spacing: also score at this spacing: one millimetre value (isotropic, e.g. 1.5) or three.

    Returns:
        {"cases": [...], "per_dataset", "per_class", "mean", "tumour_detection", "bad": [...], "settings"};
        with ``eval_spacing`` each case also has ``metrics_at_eval_spacing`` and the report has
        ``at_eval_spacing``: {"spacing_mm", "per_dataset", "per_class", "mean"} (the same means at that grid).
    """
    eval_spacing = parse_eval_spacing(eval_spacing)
    datalist = load_datalist(datalist_path)
    template = datalist.template
    wanted = _wanted_classes(template, classes)
    predict_kwargs = {"threshold": threshold, "overlap": overlap, "sw_batch_size": sw_batch_size, "device": device,
                      "spacing": spacing, "template": template}
    entries = datalist.entries(split)[: max_cases or None]
    cases: list[dict[str, Any]] = []
    bad: list[dict[str, str]] = []
    start = time.perf_counter()
    for i, entry in enumerate(tqdm(entries, desc=f"evaluating {split}", disable=not progress)):
        names = [n for n in template.labelled_classes(entry["dataset"]) if wanted is None or n in wanted]
        if not names:
            logger.info("%s: dataset %s labels none of the requested classes; skipped", entry["image"], entry["dataset"])
            continue
        try:
            run = _predict_case(model, entry, names, template, eval_spacing, predict_kwargs)
        except MedMoEError as err:
            logger.warning("skipping %s: %s", entry["image"], err)
            bad.append({"path": entry["image"], "reason": f"{type(err).__name__}: {err}"})
            continue
        case = _score_case(run, entry, names, template, eval_spacing, nsd_tolerance_mm)
        if overlay_dir is not None:  # the case's overlay PNG (prediction and reference)
            png = Path(overlay_dir) / f"case_{i:03d}_{Path(entry['image']).name.split('.')[0]}.png"
            save_overlay(run.image.array, run.image.affine, run.masks, names, png, reference=run.reference,
                         title=f"{entry['dataset']}: {Path(entry['image']).name}")
            case["overlay"] = str(png)
        cases.append(case)
    if not cases:
        raise InvalidInputError(f"{datalist_path}: no case of split {split!r} could be evaluated ({len(bad)} bad)")
    settings = {"datalist": str(datalist_path), "split": split, "nsd_tolerance_mm": nsd_tolerance_mm,
                "threshold": threshold, "overlap": overlap, "min_tumour_voxels": min_tumour_voxels,
                "eval_spacing_mm": list(eval_spacing) if eval_spacing is not None else None,
                "seconds": round(time.perf_counter() - start, 2)}
    report = _report(cases, bad, template, settings, min_tumour_voxels, eval_spacing)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1) + "\n")
    return report
