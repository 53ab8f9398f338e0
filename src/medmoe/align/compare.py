"""Is model A really better than model B on this test set? Paired bootstrap over the evaluated items.

Two retrieval scores measured on a few hundred pairs differ by a few hits more often than not; whether
that gap means anything depends on how many items carry it. Both models were scored on the same items,
so the comparison is paired: resample the items with replacement, recompute the difference of the mean
per-item scores, and read a confidence interval off the resampled differences (percentile bootstrap,
Efron & Tibshirani 1993, ch. 13; ``scipy.stats.bootstrap`` does the resampling).

    a = medmoe.align.evaluate.evaluate(model_a, manifest, per_item=True)
    b = medmoe.align.evaluate.evaluate(model_b, manifest, per_item=True)
    r = compare_retrieval(a, b)["text_to_image"]["R@1"]   # {"a", "b", "difference", "ci_low", "ci_high", ...}
    verdict(r)                                              # "A ahead", "B ahead" or "no clear difference"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from medmoe.errors import InvalidInputError

DIRECTIONS = ("image_to_text", "text_to_image")


def paired_bootstrap(a: Any, b: Any, *, resamples: int = 10_000, level: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """Difference of mean per-item scores ``a - b`` with a percentile-bootstrap interval over the items.

    Args:
        a, b: per-item scores of two systems on the same items, shape (N,), or (R, N) for R runs of each
            (seeds): runs are averaged per item first, so the interval covers the choice of test items,
            not the seed-to-seed spread.
        resamples: bootstrap resamples of the N items.
        level: coverage of the interval.
        seed: seed of the resampling.

    Returns:
        ``{"a", "b", "difference", "ci_low", "ci_high", "level", "p_a_not_better", "n"}``, where
        ``p_a_not_better`` is the share of resamples in which ``a`` does not beat ``b`` (a one-sided
        bootstrap p-value for "a is better").
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InvalidInputError(f"paired scores need one item axis of equal length; got shapes {a.shape} and {b.shape}")
    if a.shape[1] == 0:
        raise InvalidInputError("paired bootstrap needs at least one item")
    if not 0 < level < 1:
        raise InvalidInputError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise InvalidInputError(f"resamples must be >= 1, got {resamples}")
    per_item = a.mean(axis=0) - b.mean(axis=0)
    res = stats.bootstrap((per_item,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                          random_state=np.random.default_rng(seed), batch=max(1, 2_000_000 // per_item.shape[0]))
    return {"a": float(a.mean()), "b": float(b.mean()), "difference": float(per_item.mean()),
            "ci_low": float(res.confidence_interval.low), "ci_high": float(res.confidence_interval.high),
            "level": level, "p_a_not_better": float((res.bootstrap_distribution <= 0).mean()),
            "n": int(per_item.shape[0])}


def _items(metrics: dict, name: str) -> dict[str, Any]:
    items = metrics.get("items") if isinstance(metrics, dict) else None
    if not isinstance(items, dict) or "paths" not in items:
        raise InvalidInputError(f"{name} has no per-item ranks; evaluate with per_item=True "
                                "(`medmoe align eval --per-item`)")
    return items


def compare_retrieval(a: dict, b: dict, *, ks: Sequence[int] = (1, 5, 10), resamples: int = 10_000,
                      level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of two evaluations (``evaluate(..., per_item=True)``) of the same test items.

    Items are matched by image path; items only one side could load are left out (and counted).

    Returns:
        ``{"n", "only_in_a", "only_in_b", "image_to_text": {"R@1": paired_bootstrap(...), ...},
        "text_to_image": {...}}``; each entry compares hits within the top K (1 or 0 per item).
    """
    items_a, items_b = _items(a, "the first evaluation"), _items(b, "the second evaluation")
    where_b = {p: i for i, p in enumerate(items_b["paths"])}
    shared = [(i, where_b[p]) for i, p in enumerate(items_a["paths"]) if p in where_b]
    if not shared:
        raise InvalidInputError("the two evaluations share no item (compare evaluations of the same manifest and split)")
    ia, ib = (np.array(x) for x in zip(*shared))
    out: dict[str, Any] = {"n": len(shared), "only_in_a": len(items_a["paths"]) - len(shared),
                           "only_in_b": len(items_b["paths"]) - len(shared)}
    for direction in DIRECTIONS:
        ranks_a = np.asarray(items_a[f"{direction}_rank"])[ia]
        ranks_b = np.asarray(items_b[f"{direction}_rank"])[ib]
        out[direction] = {f"R@{k}": paired_bootstrap(ranks_a <= k, ranks_b <= k, resamples=resamples, level=level,
                                                     seed=seed) for k in ks}
    return out


def verdict(result: dict[str, float], a: str = "A", b: str = "B") -> str:
    """``"<a> ahead"``, ``"<b> ahead"`` or ``"no clear difference"``: whether the interval excludes zero."""
    if result["ci_low"] > 0:
        return f"{a} ahead"
    if result["ci_high"] < 0:
        return f"{b} ahead"
    return "no clear difference"


def interval_points(result: dict[str, float]) -> str:
    """The interval of a difference of fractions in percentage points, e.g. ``"[-8.3, +3.0]"``."""
    return f"[{100 * result['ci_low']:+.1f}, {100 * result['ci_high']:+.1f}]"
