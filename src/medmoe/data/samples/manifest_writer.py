"""Write sample-pack manifests: the CSV format the readers of ``medmoe.data`` load.

Columns, in order: ``image`` (path relative to the manifest file), ``report``, ``modality`` (one of
:data:`MODALITIES`), ``labels`` (finding tags joined by ``|``), ``dataset``, ``split`` (one of
:data:`SPLITS`).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medmoe.errors import InvalidInputError

MANIFEST_COLUMNS = ("image", "report", "modality", "labels", "dataset", "split")
MODALITIES = ("xray", "ct", "mri", "ultrasound", "pathology", "fundus")
SPLITS = ("train", "val", "test")
LABEL_SEPARATOR = "|"
MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class SampleRow:
    """One manifest row; ``image`` is relative to the manifest's directory (POSIX separators)."""

    image: str
    report: str
    modality: str
    labels: tuple[str, ...]
    dataset: str
    split: str

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise InvalidInputError(f"row {self.image}: modality {self.modality!r} is not one of {MODALITIES}")
        if self.split not in SPLITS:
            raise InvalidInputError(f"row {self.image}: split {self.split!r} is not one of {SPLITS}")
        if any(LABEL_SEPARATOR in tag or not tag for tag in self.labels):
            raise InvalidInputError(f"row {self.image}: labels {self.labels!r} must be non-empty tags without '|'")
        if not self.report.strip():
            raise InvalidInputError(f"row {self.image}: empty report")


@dataclass
class DatasetCounts:
    """How many rows a built dataset has, per split and per modality, and how many sources were skipped."""

    total: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    modalities: dict[str, int] = field(default_factory=dict)
    skipped: int = 0

    @classmethod
    def from_rows(cls, rows: list[SampleRow], skipped: int = 0) -> DatasetCounts:
        splits, modalities = Counter(r.split for r in rows), Counter(r.modality for r in rows)
        return cls(
            total=len(rows),
            splits={s: splits.get(s, 0) for s in SPLITS},
            modalities={m: modalities[m] for m in MODALITIES if m in modalities},
            skipped=skipped,
        )

    def as_dict(self) -> dict:
        return {"total": self.total, "splits": dict(self.splits), "modalities": dict(self.modalities),
                "skipped": self.skipped}


def write_manifest(rows: Iterable[SampleRow], path: Path) -> None:
    """Write ``rows`` as CSV at ``path`` atomically (a temporary file in the same folder, then rename).

    Args:
        rows: manifest rows.
        path: destination ``.csv``; its folder must exist.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            for row in rows:
                writer.writerow([row.image, row.report, row.modality, LABEL_SEPARATOR.join(row.labels),
                                 row.dataset, row.split])
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def assign_splits(n: int, rng: np.random.Generator, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> list[str]:
    """Split labels for ``n`` items: a random permutation cut at the given train/val/test fractions.

    Every split gets at least one item once ``n >= 3``.

    Args:
        n: number of items.
        rng: random generator that fixes the permutation.
        fractions: train, val, test shares (must sum to 1).

    Returns:
        ``n`` strings from :data:`SPLITS`, item ``i``'s split at position ``i``.
    """
    if n < 0 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise InvalidInputError(f"cannot split {n} items with fractions {fractions}; expected n >= 0, sum 1")
    n_val = int(round(n * fractions[1]))
    n_test = int(round(n * fractions[2]))
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    n_train = n - n_val - n_test
    order = rng.permutation(n)
    splits = [""] * n
    for rank, index in enumerate(order):
        splits[index] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return splits
