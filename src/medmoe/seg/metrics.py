"""Segmentation metrics per class and case (MONAI), NaN-aware aggregation, patient-level tumour detection.

Conventions for empty masks (MONAI leaves them undefined or infinite):

=====================  ======  ==================================  ======
reference / prediction  Dice    HD95 (mm)                           NSD
=====================  ======  ==================================  ======
both empty             NaN     NaN                                 NaN
one empty              0       diagonal of the volume (worst case)  0
=====================  ======  ==================================  ======

NaN means "nothing to measure" and is skipped by every mean; a missed organ or a false alarm counts fully.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric

from medmoe.errors import InvalidInputError

METRICS = ("dice", "hd95", "nsd")


def _as_bool_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.bool()
    return torch.from_numpy(np.ascontiguousarray(x, dtype=bool))


def case_metrics(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, spacing: Sequence[float],
                 names: Sequence[str], *, nsd_tolerance_mm: float = 2.0) -> dict[str, dict[str, float]]:
    """Dice, HD95 (mm) and NSD (surface Dice at ``nsd_tolerance_mm``) of each class of one case.

    Args:
        pred: (K, X, Y, Z) bool prediction.
        gt: (K, X, Y, Z) bool reference.
        spacing: voxel size (mm) along X, Y, Z.
        names: the K class names (keys of the result).
        nsd_tolerance_mm: boundary tolerance of the NSD.

    Returns:
        {class: {"dice", "hd95", "nsd", "gt_voxels", "pred_voxels"}} with the module's empty-mask conventions.
    """
    p, g = _as_bool_tensor(pred), _as_bool_tensor(gt)
    if p.shape != g.shape or p.ndim != 4 or p.shape[0] != len(names):
        raise InvalidInputError(f"pred {tuple(p.shape)} and gt {tuple(g.shape)}: expected equal (K, X, Y, Z) with "
                                f"K = {len(names)}")
    if len(spacing) != 3 or any(s <= 0 for s in spacing):
        raise InvalidInputError(f"spacing {spacing}: expected three positive millimetre values")
    spacing = [float(s) for s in spacing]
    diagonal = float(np.linalg.norm(np.asarray(p.shape[1:]) * np.asarray(spacing)))
    p_count = p.flatten(1).sum(1).tolist()
    g_count = g.flatten(1).sum(1).tolist()
    both = [k for k in range(len(names)) if p_count[k] and g_count[k]]
    dice = hd = nsd = None
    if both:
        yp, yg = p[both][None].float(), g[both][None].float()
        dice = DiceMetric(include_background=True, reduction="none")(yp, yg)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
                yp, yg, spacing=spacing)[0]
            nsd = SurfaceDiceMetric([float(nsd_tolerance_mm)] * len(both), include_background=True, reduction="none")(
                yp, yg, spacing=spacing)[0]
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(names):
        row = {"gt_voxels": int(g_count[k]), "pred_voxels": int(p_count[k])}
        if k in both:
            j = both.index(k)
            row.update(dice=float(dice[j]), hd95=float(hd[j]), nsd=float(nsd[j]))
        elif g_count[k] or p_count[k]:
            row.update(dice=0.0, hd95=diagonal, nsd=0.0)
        else:
            row.update(dice=math.nan, hd95=math.nan, nsd=math.nan)
        out[name] = row
    return out


def nanmean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none (no warning)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def aggregate(cases: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-dataset and per-class NaN-aware means of :func:`case_metrics` rows.

    Args:
        cases: rows ``{"dataset": str, "metrics": {class: {"dice", "hd95", "nsd", ...}}}``; only the classes a
            case's dataset labels should be in its ``metrics``.

    Returns:
        {"per_dataset": {dataset: {class: {metric: mean, "n": cases with a defined Dice}}},
         "per_class": {class: {...}} over every case, "mean": {metric: mean over classes of per_class}}.
    """
    def summarise(rows: list[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
        classes: dict[str, list[Mapping[str, float]]] = {}
        for row in rows:
            for name, values in row["metrics"].items():
                classes.setdefault(name, []).append(values)
        return {name: {**{m: nanmean(v[m] for v in vals) for m in METRICS},
                       "n": sum(not math.isnan(v["dice"]) for v in vals)}
                for name, vals in classes.items()}

    datasets: dict[str, list[Mapping[str, Any]]] = {}
    for case in cases:
        datasets.setdefault(case["dataset"], []).append(case)
    per_class = summarise(list(cases))
    return {
        "per_dataset": {d: summarise(rows) for d, rows in datasets.items()},
        "per_class": per_class,
        "mean": {m: nanmean(v[m] for v in per_class.values()) for m in METRICS},
    }


def detection_counts(pred_positive: Sequence[bool], gt_positive: Sequence[bool]) -> dict[str, float]:
    """Patient-level sensitivity and specificity from per-case presence calls.

    Returns:
        {"tp", "fn", "tn", "fp", "sensitivity", "specificity"}; a rate is NaN when its denominator is 0.
    """
    if len(pred_positive) != len(gt_positive):
        raise InvalidInputError(f"{len(pred_positive)} predictions for {len(gt_positive)} references")
    calls = Counter((bool(p), bool(g)) for p, g in zip(pred_positive, gt_positive))
    tp, fn, tn, fp = calls[True, True], calls[False, True], calls[False, False], calls[True, False]
    return {"tp": tp, "fn": fn, "tn": tn, "fp": fp,
            "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
            "specificity": tn / (tn + fp) if tn + fp else math.nan}


def tumour_detection(cases: Sequence[Mapping[str, Any]], tumour_classes: Iterable[str], *,
                     min_pred_voxels: int = 1, min_gt_voxels: int = 1) -> dict[str, dict[str, float]]:
    """Patient-level detection per tumour class over the cases whose dataset labels it.

    A case is reference-positive when its reference has at least ``min_gt_voxels`` tumour voxels, and
    predicted-positive when the prediction has at least ``min_pred_voxels``.

    Args:
        cases: rows with ``metrics[class]["gt_voxels"]`` and ``["pred_voxels"]``.
        tumour_classes: the classes to score.
    """
    out = {}
    for name in tumour_classes:
        rows = [c["metrics"][name] for c in cases if name in c["metrics"]]
        if rows:
            out[name] = detection_counts([r["pred_voxels"] >= min_pred_voxels for r in rows],
                                         [r["gt_voxels"] >= min_gt_voxels for r in rows])
    return out
