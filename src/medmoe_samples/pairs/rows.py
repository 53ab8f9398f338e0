"""Rows, splits and counts of the image-report packs, on top of :mod:`medmoe.data.manifest`.

A pack's manifest is an ordinary medmoe manifest (columns :data:`medmoe.data.manifest.COLUMNS`), written by
:func:`medmoe.data.manifest.write_manifest`. The generators hold themselves to a stricter contract than a
user's manifest needs: every row has a canonical modality, a split, a non-empty report and finding tags.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from medmoe.data.manifest import LABEL_SEPARATOR, SPLITS, ManifestRow
from medmoe.data.modalities import MODALITIES
from medmoe.errors import InvalidInputError

MANIFEST_NAME = "manifest.csv"


def sample_row(image: str, report: str, modality: str, labels: tuple[str, ...] | list[str], dataset: str,
               split: str) -> ManifestRow:
    """A manifest row of a sample pack, checked against the packs' contract.

    Args:
        image: path relative to the manifest's folder, POSIX separators (``images/x.png``).
        report: report text; must not be blank.
        modality: one of :data:`medmoe.data.modalities.MODALITIES` (no synonyms).
        labels: finding tags, each non-empty and without ``|``.
        dataset: the pack's dataset name.
        split: one of :data:`medmoe.data.manifest.SPLITS`.

    Raises:
        InvalidInputError: a value breaks the contract; the message names the row and the value.
    """
    if modality not in MODALITIES:
        raise InvalidInputError(f"row {image}: modality {modality!r} is not one of {MODALITIES}")
    if split not in SPLITS:
        raise InvalidInputError(f"row {image}: split {split!r} is not one of {SPLITS}")
    if any(LABEL_SEPARATOR in tag or not tag for tag in labels):
        raise InvalidInputError(f"row {image}: labels {tuple(labels)!r} must be non-empty tags without '|'")
    if not report.strip():
        raise InvalidInputError(f"row {image}: empty report")
    return ManifestRow(image=image, report=report, modality=modality, labels=list(labels), dataset=dataset,
                       split=split)


@dataclass
class DatasetCounts:
    """How many rows a built dataset has, per split and per modality, and how many sources were skipped."""

    total: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    modalities: dict[str, int] = field(default_factory=dict)
    skipped: int = 0

    @classmethod
    def from_rows(cls, rows: list[ManifestRow], skipped: int = 0) -> DatasetCounts:
        splits, modalities = Counter(r.split for r in rows), Counter(r.modality for r in rows)
        return cls(
            total=len(rows),
            splits={s: splits.get(s, 0) for s in SPLITS},
            modalities={m: modalities[m] for m in MODALITIES if m in modalities},
            skipped=skipped,
        )

    def as_dict(self) -> dict:
        return asdict(self)


def assign_splits(n: int, rng: np.random.Generator, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> list[str]:
    """Split labels for ``n`` items: a random permutation cut at the given train/val/test fractions.

    Every split gets at least one item once ``n >= 3``.

    Args:
        n: number of items.
        rng: random generator that fixes the permutation.
        fractions: train, val, test shares (must sum to 1).

    Returns:
        ``n`` strings from :data:`medmoe.data.manifest.SPLITS`, item ``i``'s split at position ``i``.
    """
    if n < 0 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise InvalidInputError(f"cannot split {n} items with fractions {fractions}; expected n >= 0, sum 1")
    n_val = int(round(n * fractions[1]))
    n_test = int(round(n * fractions[2]))
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    n_train = n - n_val - n_test
    ranks = np.argsort(rng.permutation(n))  # item i's place in the random order
    return [SPLITS[k] for k in np.searchsorted([n_train, n_train + n_val], ranks, side="right")]
