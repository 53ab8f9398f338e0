"""Evaluate a segmentation model on a datalist split: whole-CT prediction, metrics, overlays, one JSON."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medmoe.data.volumes import Volume, read_ct, read_label, same_grid
from medmoe.errors import InvalidInputError, MedMoEError
from medmoe.seg.data import load_datalist
from medmoe.seg.metrics import aggregate, case_metrics, tumour_detection
from medmoe.seg.overlay import save_overlay
from medmoe.seg.predict import predict_volume
from medmoe.seg.resample import resample_to_grid

logger = logging.getLogger(__name__)


def label_on_image_grid(label: Volume, image: Volume) -> np.ndarray:
    """The label ids resampled (nearest) onto the image's voxel grid when the two grids differ."""
    if same_grid(label.affine, label.shape, image.affine, image.shape):
        return label.array
    return resample_to_grid(label.array[None], label.affine, image.affine, image.shape, "nearest")[0]


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) else round(obj, 6)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def evaluate(model: nn.Module, datalist_path: str | os.PathLike, *, split: str = "test",
             classes: Sequence[str] | None = None, out: str | os.PathLike | None = None,
             overlay_dir: str | os.PathLike | None = None, nsd_tolerance_mm: float = 2.0, threshold: float = 0.5,
             overlap: float = 0.5, sw_batch_size: int = 1, device: torch.device | str | None = None,
             spacing: Sequence[float] | None = None, min_tumour_voxels: int = 1, progress: bool = True,
             max_cases: int | None = None) -> dict[str, Any]:
    """Predict every case of a split and score the classes each case's dataset labels.

    Metrics are computed on each CT's native grid and spacing. Tumour classes are also scored for
    patient-level detection (a case is positive with at least ``min_tumour_voxels`` voxels).

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

    Returns:
        {"cases": [...], "per_dataset", "per_class", "mean", "tumour_detection", "bad": [...], "settings"}.
    """
    datalist = load_datalist(datalist_path)
    template = datalist.template
    wanted = None
    if classes is not None:
        wanted = []
        for c in classes:
            name = template.resolve(c)
            if name is None:
                raise InvalidInputError(f"class {c!r} is not in the class template; see ClassTemplate.names")
            wanted.append(name)
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
            if "label" not in entry:
                raise InvalidInputError("entry has no label file")
            image = read_ct(entry["image"])
            label = read_label(entry["label"])
            ids = label_on_image_grid(label, image)
            reference = template.multi_hot(ids, entry["dataset"], names)
            t0 = time.perf_counter()
            prediction = predict_volume(model, image, names, threshold=threshold, overlap=overlap,
                                        sw_batch_size=sw_batch_size, device=device, spacing=spacing, template=template)
            seconds = time.perf_counter() - t0
        except MedMoEError as err:
            logger.warning("skipping %s: %s", entry["image"], err)
            bad.append({"path": entry["image"], "reason": f"{type(err).__name__}: {err}"})
            continue
        metrics = case_metrics(prediction.masks, reference, image.spacing, names, nsd_tolerance_mm=nsd_tolerance_mm)
        case = {"path": entry["image"], "dataset": entry["dataset"], "seconds": round(seconds, 3), "metrics": metrics}
        if overlay_dir is not None:
            png = Path(overlay_dir) / f"case_{i:03d}_{Path(entry['image']).name.split('.')[0]}.png"
            save_overlay(image.array, image.affine, prediction.masks, names, png, reference=reference,
                         title=f"{entry['dataset']}: {Path(entry['image']).name}")
            case["overlay"] = str(png)
        cases.append(case)
    if not cases:
        raise InvalidInputError(f"{datalist_path}: no case of split {split!r} could be evaluated ({len(bad)} bad)")
    tumours = sorted({n for c in cases for n in c["metrics"] if n in template and template.is_tumour(n)})
    report = {
        **aggregate(cases),
        "tumour_detection": tumour_detection(cases, tumours, min_pred_voxels=min_tumour_voxels),
        "cases": cases,
        "bad": bad,
        "settings": {"datalist": str(datalist_path), "split": split, "nsd_tolerance_mm": nsd_tolerance_mm,
                     "threshold": threshold, "overlap": overlap, "min_tumour_voxels": min_tumour_voxels,
                     "seconds": round(time.perf_counter() - start, 2)},
    }
    report = _json_safe(report)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1) + "\n")
    return report
