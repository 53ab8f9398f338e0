"""Training from WebDataset-style tar shards (written by :func:`write_shards`, or by other tools).

Two datasets yield the same item dicts as :class:`~medmoe.data.dataset.ImageReportDataset`:

- :class:`ShardDataset` (``IterableDataset``) streams shards sequentially, giving each DDP rank and
  DataLoader worker its own shards (or, with fewer shards than readers, its own stride of samples), so that
  together they see every sample exactly once per epoch. The cheapest way through corpora of millions.
- :class:`IndexedShardDataset` (map-style) indexes the tar headers once and reads samples by seeking, so
  the trainer's resumable sampler, shuffling and exact resume work on shards as on a manifest.

The tar format itself (and :func:`write_shards`) lives in :mod:`medmoe.data.shard_files`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from medmoe.data.dataset import BadSample, build_item, sample_generator
from medmoe.data.manifest import normalize_split
from medmoe.data.readers import decode_image
from medmoe.data.shard_files import (
    IMAGE_EXTENSIONS,
    INDEX_NAME,
    SHARD_FORMAT,
    ShardWriteResult,
    iter_tar_samples,
    list_shards,
    read_members,
    scan_shard,
    write_shards,
)
from medmoe.data.transforms import ImageTransform
from medmoe.errors import CorruptFileError, InvalidInputError

__all__ = [
    "INDEX_NAME",
    "SHARD_FORMAT",
    "IndexedShardDataset",
    "ShardDataset",
    "ShardWriteResult",
    "distributed_position",
    "iter_tar_samples",
    "list_shards",
    "write_shards",
]

logger = logging.getLogger(__name__)


def distributed_position() -> tuple[int, int]:
    """(rank, world size) from an initialised torch.distributed group, else env RANK / WORLD_SIZE."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise InvalidInputError(f"RANK / WORLD_SIZE must be integers ({err})") from err
    if not 0 <= rank < world:
        raise InvalidInputError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


class _ShardSamples:
    """Shared by both shard datasets: options, epoch, and decoding one sample's members into an item."""

    def _setup(self, split, image_size, train, seed, transform, require_report) -> None:
        self.split = normalize_split(split)
        self.transform = transform or ImageTransform(image_size=image_size, train=train)
        self.seed = seed
        self.epoch = 0
        self.require_report = require_report

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream (and, for ShardDataset, the shard order) of ``epoch``."""
        self.epoch = int(epoch)

    def _wanted(self, meta: dict[str, Any]) -> bool:
        split = meta.get("split")
        return self.split is None or split is None or normalize_split(split) == self.split

    def _decode(
        self, shard: str, key: str, members: dict[str, bytes], index: int | None = None
    ) -> dict[str, Any] | BadSample | None:
        """``index`` None: the sample's own (metadata ``index``, else a hash of shard and key)."""
        name = f"{shard}#{key}"
        meta: dict[str, Any] = {}
        own = zlib.crc32(f"{os.path.basename(shard)}/{key}".encode()) & 0x7FFFFFFF
        try:
            if "json" in members:
                meta = json.loads(members["json"].decode("utf-8"))
                own = int(meta.get("index", own))
            index = own if index is None else index
            if not self._wanted(meta):
                return None
            ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
            if ext is None:
                return BadSample(index, name, f"no image member (have {sorted(members)})")
            image, image_meta = decode_image(members[ext], f"{name}.{ext}")
            labels = meta.get("labels") or []
            if not labels and "cls" in members:
                labels = [members["cls"].decode("utf-8").strip()]
            item = build_item(
                image=image,
                image_modality=image_meta.modality,
                raw_report=members.get("txt", b"").decode("utf-8", errors="replace"),
                row_modality=meta.get("modality"),
                labels=[str(v) for v in labels],
                index=index,
                path=str(meta.get("source") or name),
                transform=self.transform,
                generator=sample_generator(self.seed, self.epoch, index) if self.transform.train else None,
                require_report=self.require_report,
            )
        except Exception as err:  # any failure is a bad sample, never a dead run
            item = BadSample(own if index is None else index, name, f"{type(err).__name__}: {err}")
        if isinstance(item, BadSample):
            logger.warning("bad sample %s: %s", item.path, item.reason)
        return item


class ShardDataset(_ShardSamples, IterableDataset):
    """Stream image-report samples from tar shards; items are the same dicts as
    :class:`~medmoe.data.dataset.ImageReportDataset` (or :class:`BadSample`), ``index`` being the
    sample's metadata index (its manifest position when written by :func:`write_shards`).

    Readers are the DDP ranks (torch.distributed if initialised, else env ``RANK`` / ``WORLD_SIZE``) times
    the DataLoader workers. With at least as many shards as readers each reader gets whole shards
    (``shard i -> reader i mod R``); otherwise every reader scans all shards and keeps every R-th sample,
    so no rank is left idle. Either way each sample is read by exactly one reader. Ranks may get different
    sample counts when shard sizes differ; keep shards equal-sized (``write_shards`` does, except the last).

    Args:
        source: directory of shards, glob pattern, shard file or list of shard files.
        split: keep samples whose metadata split is this (samples without metadata are kept).
        image_size, train, seed, transform, require_report: as for ImageReportDataset.
        shuffle: shuffle the shard order each epoch by (seed, epoch) (default: ``train``).

    Example:
        >>> ds = ShardDataset("shards/", train=True)
        >>> loader = DataLoader(ds, batch_size=32, num_workers=2, collate_fn=collate_image_report)
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        split: str | None = None,
        image_size: int = 224,
        train: bool = False,
        seed: int = 0,
        transform: ImageTransform | None = None,
        require_report: bool = True,
        shuffle: bool | None = None,
    ) -> None:
        super().__init__()
        self.shards = list_shards(source)
        self._setup(split, image_size, train, seed, transform, require_report)
        self.shuffle = self.transform.train if shuffle is None else shuffle

    def reader_position(self) -> tuple[int, int]:
        """(this reader's id, number of readers) over ranks x DataLoader workers."""
        rank, world = distributed_position()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def epoch_shards(self) -> list[str]:
        """All shards in this epoch's order (the same on every reader)."""
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def __iter__(self) -> Iterator[dict[str, Any] | BadSample]:
        reader, readers = self.reader_position()
        order = self.epoch_shards()
        if len(order) >= readers:
            mine, stride = order[reader::readers], 1
        else:
            mine, stride = order, readers
        position = 0
        for shard in mine:
            try:
                for key, members in iter_tar_samples(shard):
                    if stride > 1:
                        take = position % stride == reader
                        position += 1
                        if not take:
                            continue
                    item = self._decode(shard, key, members)
                    if item is not None:
                        yield item
            except CorruptFileError as err:
                logger.warning("%s", err)
                yield BadSample(-1, shard, str(err))


class IndexedShardDataset(_ShardSamples, Dataset):
    """Map-style random access to the samples of uncompressed tar shards.

    At construction the tar headers are scanned (no image data is read) to record where each member's bytes
    are; ``__getitem__`` seeks there. ``index`` in the items is the position in this dataset, exactly as for
    :class:`~medmoe.data.dataset.ImageReportDataset`, so augmentation depends on (seed, epoch, index) and any
    sampler (shuffling, DDP, exact resume) works unchanged.

    Args:
        source: directory of shards, glob pattern, shard file or list of shard files.
        split: keep samples whose metadata split is this; this reads every ``.json`` member once at
            construction (write one split per shard folder to avoid it).
        image_size, train, seed, transform, require_report: as for ImageReportDataset.
        progress: tqdm progress bar while indexing.

    Raises:
        CorruptFileError: a shard is unreadable or compressed.
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        split: str | None = None,
        image_size: int = 224,
        train: bool = False,
        seed: int = 0,
        transform: ImageTransform | None = None,
        require_report: bool = True,
        progress: bool = False,
    ) -> None:
        self.shards = list_shards(source)
        self._setup(split, image_size, train, seed, transform, require_report)
        self.samples: list[tuple[int, str, dict[str, tuple[int, int]]]] = []
        for shard_id, shard in enumerate(tqdm(self.shards, desc="indexing shards", disable=not progress)):
            entries = scan_shard(shard)
            if self.split is not None:
                with open(shard, "rb") as handle:
                    entries = [e for e in entries if "json" not in e[1] or self._wanted(self._meta(handle, e[1]))]
            self.samples += [(shard_id, key, members) for key, members in entries]
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    @staticmethod
    def _meta(handle, members: dict[str, tuple[int, int]]) -> dict[str, Any]:
        try:
            return json.loads(read_members(handle, {"json": members["json"]})["json"])
        except (ValueError, CorruptFileError):
            return {}  # unreadable metadata: keep the sample; loading it will report the problem

    def __len__(self) -> int:
        return len(self.samples)

    def _handle(self, shard_id: int):
        if os.getpid() != self._pid:  # a forked DataLoader worker must not share the parent's file offsets
            self._handles, self._pid = {}, os.getpid()
        if shard_id not in self._handles:
            self._handles[shard_id] = open(self.shards[shard_id], "rb")
        return self._handles[shard_id]

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.samples)}")
        shard_id, key, members = self.samples[index]
        shard = self.shards[shard_id]
        try:
            data = read_members(self._handle(shard_id), members)
        except (OSError, CorruptFileError) as err:
            bad = BadSample(index, f"{shard}#{key}", f"{type(err).__name__}: {err}")
            logger.warning("bad sample %s: %s", bad.path, bad.reason)
            return bad
        item = self._decode(shard, key, data, index=index)
        # the split was applied while indexing; a sample never disappears here
        return item if item is not None else BadSample(index, f"{shard}#{key}", "split changed after indexing")

    def close(self) -> None:
        """Close the shard files this process opened."""
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # open files do not pickle (spawned workers open their own)
        return state
