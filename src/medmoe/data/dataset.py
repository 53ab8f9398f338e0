"""Image-report datasets for training and evaluation, and the collate function that counts bad samples.

A sample that cannot be used (unreadable image, empty report after cleaning, NaN pixels) does not raise:
the dataset returns a :class:`BadSample` naming its path and the reason, and
:func:`collate_image_report` drops it from the batch and hands it to the trainer in ``batch["bad"]`` so
that it is logged and counted. Nothing silently vanishes and nothing kills a long run.

Augmentation randomness is derived from ``(seed, epoch, index)`` alone, so a run resumed at epoch ``e``
sees exactly the batches the uninterrupted run would have seen, whatever the worker layout.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import numpy as np
import torch
from torch.utils.data import Dataset

from medmoe.data.manifest import ManifestRow, normalize_split, read_manifest
from medmoe.data.modalities import MODALITIES, try_normalize_modality
from medmoe.data.readers import read_image
from medmoe.data.reports import clean_report
from medmoe.data.transforms import ImageTransform
from medmoe.errors import InvalidInputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadSample:
    """A sample that could not be loaded (image-report or CT): its dataset index, its path, why, and for
    segmentation its source dataset. Datasets return it instead of raising; collate functions move it to
    ``batch["bad"]`` and the trainer counts it."""

    index: int
    path: str
    reason: str
    dataset: str = ""


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed from ``(seed, epoch, index)``, hashed with NumPy's SeedSequence so that nearby triples
    give unrelated streams: the one per-item seeder of every medmoe dataset (exact resume)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, int(index) & 0xFFFFFFFF])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> 1)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A torch generator seeded by :func:`sample_seed`."""
    return torch.Generator().manual_seed(sample_seed(seed, epoch, index))


def modality_label(row_modality: str | None, image_modality: str | None) -> int:
    """The modality index of a sample: the manifest's value, else what the image file says, else -1."""
    name = try_normalize_modality(row_modality) or image_modality
    return MODALITIES.index(name) if name in MODALITIES else -1


def build_item(
    *,
    image: np.ndarray,
    image_modality: str | None,
    raw_report: str,
    row_modality: str | None,
    labels: Sequence[str],
    index: int,
    path: str,
    transform: ImageTransform,
    generator: torch.Generator | None,
    require_report: bool,
) -> dict[str, Any] | BadSample:
    """Shared by the manifest and the shard datasets: decoded image + row fields -> item dict.

    ``image`` is a reader's output, ideally decoded with ``target_size=transform.decode_size``; the item's
    ``"image"`` is what ``transform`` returns (uint8 ``(3, S, S)`` by default). Non-finite pixels make a
    :class:`BadSample` (float output) or raise :class:`~medmoe.errors.InvalidInputError` (uint8 output).
    """
    report = clean_report(raw_report)
    if require_report and not report:
        return BadSample(index, path, "empty report after cleaning")
    tensor = transform(image, generator=generator)
    if not torch.isfinite(tensor).all():
        return BadSample(index, path, "non-finite pixel values after transforms")
    return {
        "image": tensor,
        "report": report,
        "modality": modality_label(row_modality, image_modality),
        "labels": list(labels),
        "index": index,
        "path": path,
    }


def dataset_item(dataset: Any, epoch: int, index: int, *, path: str, image: np.ndarray,
                 image_modality: str | None, raw_report: str, row_modality: str | None,
                 labels: Sequence[str]) -> dict[str, Any] | BadSample:
    """:func:`build_item` with the ``transform``, ``require_report`` and augmentation stream (``seed``,
    ``epoch``) of a dataset set up by :func:`apply_item_options`."""
    generator = sample_generator(dataset.seed, epoch, index) if dataset.transform.train else None
    return build_item(image=image, image_modality=image_modality, raw_report=raw_report,
                      row_modality=row_modality, labels=labels, index=index, path=path,
                      transform=dataset.transform, generator=generator, require_report=dataset.require_report)


class ItemOptions(TypedDict, total=False):
    """How :class:`ImageReportDataset` and ``ShardDataset`` build items (keyword arguments of both; the
    defaults are those of :func:`apply_item_options`)."""

    image_size: int
    train: bool
    seed: int
    transform: ImageTransform | None
    require_report: bool


def apply_item_options(dataset: Any, split: str | None, image_size: int = 224, train: bool = False, seed: int = 0,
                       transform: ImageTransform | None = None, require_report: bool = True) -> None:
    """Set a dataset's ``split`` (normalised), ``transform``, ``seed`` and ``require_report``.

    Raises:
        InvalidInputError: ``split`` is an empty string.
    """
    if split is not None and not str(split).strip():
        raise InvalidInputError("split must be a non-empty string or None")
    dataset.split = normalize_split(split)
    dataset.transform = transform or ImageTransform(image_size=image_size, train=train)
    dataset.seed = seed
    dataset.require_report = require_report


class ImageReportDataset(Dataset):
    """Image-report pairs from a manifest.

    Each item is a dict ``{"image": (3, S, S) uint8, "report": str (cleaned), "modality": int index into
    MODALITIES or -1, "labels": list[str], "index": int, "path": str}``, or a :class:`BadSample`. The model
    normalises uint8 images on its device (``SwinPyramid.forward``).

    Images are decoded at ``transform.decode_size`` (1.5 S) rather than at full resolution: JPEG DCT
    scaling and integer box reduction make a 3000x2500 radiograph several times cheaper to load, with the
    same result within interpolation noise (see :attr:`ImageTransform.decode_size`).

    Args:
        manifest: a manifest path, or rows whose ``image`` paths are absolute (or relative to the cwd).
        split: keep only rows of this split (``train`` / ``val`` / ``test``; synonyms accepted).
        image_size: output side S.
        train: random augmentation (deterministic per (seed, epoch, index)).
        seed: base seed of the augmentation.
        transform: a custom :class:`ImageTransform` (overrides ``image_size`` / ``train``).
        require_report: an empty cleaned report makes the sample bad (False for label-only evaluation).

    Note:
        Call :meth:`set_epoch` before each epoch. With a DataLoader use ``persistent_workers=False``
        (the default): persistent workers keep their own copy of the dataset and miss the new epoch.

    Example:
        >>> ds = ImageReportDataset("data/train.csv", split="train", train=True)
        >>> loader = DataLoader(ds, batch_size=32, collate_fn=collate_image_report)
    """

    def __init__(self, manifest: str | os.PathLike | Sequence[ManifestRow], split: str | None = None,
                 **options: Unpack[ItemOptions]) -> None:
        rows = read_manifest(manifest) if isinstance(manifest, str | os.PathLike) else list(manifest)
        apply_item_options(self, split, **options)
        self.rows = [r for r in rows if self.split is None or normalize_split(r.split) == self.split]
        if not self.rows:
            logger.warning("dataset is empty (split=%r, %d manifest rows)", self.split, len(rows))
        self.epoch = 0
        unknown = sorted({r.modality for r in self.rows if r.modality and try_normalize_modality(r.modality) is None})
        if unknown:
            logger.warning("unknown modality value(s) %s: those samples get modality -1", unknown)

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch``."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.rows)}")
        row = self.rows[index]
        try:
            image, meta = read_image(row.image, target_size=self.transform.decode_size)
            item = dataset_item(self, self.epoch, index, path=row.image, image=image, image_modality=meta.modality,
                                raw_report=row.report, row_modality=row.modality, labels=row.labels)
        except Exception as err:  # any failure is a bad sample, never a dead run
            item = BadSample(index, row.image, f"{type(err).__name__}: {err}")
        if isinstance(item, BadSample):
            logger.warning("bad sample %d (%s): %s", item.index, item.path, item.reason)
        return item


def collate_image_report(samples: Sequence[dict[str, Any] | BadSample], image_size: int | None = None) -> dict[str, Any]:
    """Stack good samples into a batch and pass the bad ones through.

    Args:
        samples: items of :class:`ImageReportDataset` / ``ShardDataset``.
        image_size: side of the empty image tensor returned when every sample is bad (else inferred).

    Returns:
        ``{"images": (B, 3, S, S) uint8 (the items' dtype), "reports": list[str], "modality": (B,) long,
        "labels": list[list[str]], "index": (B,) long, "paths": list[str], "bad": list[BadSample]}`` with B
        the number of good samples (possibly 0).
    """
    good = [s for s in samples if not isinstance(s, BadSample)]
    bad = [s for s in samples if isinstance(s, BadSample)]
    if good:
        images = torch.stack([s["image"] for s in good])
    else:
        side = image_size or 0
        images = torch.empty((0, 3, side, side), dtype=torch.uint8)
    return {
        "images": images,
        "reports": [s["report"] for s in good],
        "modality": torch.tensor([s["modality"] for s in good], dtype=torch.long),
        "labels": [list(s["labels"]) for s in good],
        "index": torch.tensor([s["index"] for s in good], dtype=torch.long),
        "paths": [s["path"] for s in good],
        "bad": bad,
    }
