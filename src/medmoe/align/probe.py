"""Linear probing on frozen global image embeddings (sklearn logistic regression)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np

from medmoe.errors import InvalidInputError

log = logging.getLogger(__name__)


def subsample(targets: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified ``fraction`` of the samples, at least one per class (sorted)."""
    if not 0 < fraction <= 1:
        raise InvalidInputError(f"probe fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets)
    chosen: list[int] = []
    for cls in sorted(set(targets.tolist())):
        idx = np.flatnonzero(targets == cls)
        chosen.extend(rng.choice(idx, size=max(1, int(round(fraction * len(idx)))), replace=False).tolist())
    return np.sort(np.asarray(chosen))


def linear_probe(train_x: np.ndarray, train_y: Sequence[str], test_x: np.ndarray, test_y: Sequence[str], *,
                 fractions: Sequence[float] = (0.01, 0.1, 1.0), seed: int = 0, c: float = 1.0,
                 max_iter: int = 2000) -> dict[str, dict[str, float]]:
    """Fit a multinomial logistic regression on a fraction of the training embeddings, score the test set.

    Features are standardised on the training subset. Test samples of a class never seen in training
    still count (as errors), so small fractions are not flattered.

    Returns:
        ``{"1%": {"accuracy", "n_train"}, "10%": ..., "100%": ...}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(train_y) != len(train_x) or len(test_y) != len(test_x):
        raise InvalidInputError("probe features and targets differ in length")
    if len(set(train_y)) < 2:
        raise InvalidInputError(f"a linear probe needs at least 2 classes in training, got {sorted(set(train_y))}")
    results: dict[str, dict[str, float]] = {}
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    for fraction in fractions:
        idx = subsample(train_y, fraction, seed)
        name = f"{fraction * 100:g}%"
        if len(set(train_y[idx].tolist())) < 2:
            results[name] = {"accuracy": float("nan"), "n_train": int(len(idx))}
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
        with warnings.catch_warnings():
            # 1 % keeps one sample per class by design; sklearn then suspects a regression target.
            warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
            clf.fit(train_x[idx], train_y[idx])
        accuracy = float((clf.predict(test_x) == test_y).mean())
        results[name] = {"accuracy": accuracy, "n_train": int(len(idx))}
        log.info("linear probe %s: accuracy %.4f on %d test samples (%d train)", name, accuracy, len(test_y), len(idx))
    return results
