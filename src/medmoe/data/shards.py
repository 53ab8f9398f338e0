"""Training and evaluating straight from WebDataset-style tar shards, local or remote.

:class:`ShardDataset` streams shards (samples grouped by WebDataset's ``group_by_keys`` behind medmoe's
member checks; see :mod:`medmoe.data.shard_files` for both and for the sources it accepts) and yields the
same item dicts as :class:`~medmoe.data.dataset.ImageReportDataset`.

Readers are the DDP ranks times the DataLoader workers. In epoch ``e`` the shard list is shuffled by
``(seed, e)`` and reader ``r`` of ``R`` takes shards ``r, r + R, ...``; with fewer shards than readers
every reader scans all shards and keeps every ``R``-th sample. Each sample is read by exactly one reader.
This split is ours, not WebDataset's ``split_by_node`` / ``split_by_worker``: those slice the shard list
only, so with fewer shards than readers a rank gets nothing and its collectives hang the others, and they
take the worker from the DataLoader, whereas a resumed DataLoader restarts its round robin at worker 0 and
worker ``w`` has to continue the stream of reader ``(w + start) % workers`` (see ``__iter__``).

For training, :meth:`ShardDataset.configure` fixes the batch size and reader layout. An epoch is then
``Q`` batches per reader, ``Q`` being the smallest reader's sample count over the batch size, so that
every rank takes the same number of steps; the samples of the larger readers beyond ``Q`` batches (at most
the size difference of their shards) wait for the next epoch's shard order. Within a reader WebDataset's
``shuffle`` stage mixes samples across its shards, drawing from a ``random.Random`` seeded by
``(seed, epoch, reader, pass)``, so that the order is the same every time the epoch is read. A bad sample
(unreadable image, empty report) is reported with the next good item and its slot is filled by the next
sample, so batches stay full. Resume is exact per sample: the trainer records how many samples each
reader had consumed, and a resumed reader re-reads that many without decoding them (the bytes of its
current epoch so far are read again, the images are not decoded).
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import random
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, Unpack

import torch
import webdataset
from torch.utils.data import IterableDataset, get_worker_info

from medmoe.data.dataset import BadSample, ItemOptions, apply_item_options, dataset_item
from medmoe.data.manifest import normalize_split
from medmoe.data.readers import decode_image
from medmoe.data.shard_files import (
    IMAGE_EXTENSIONS,
    iter_tar_samples,
    list_shards,
    looks_like_shards,
    sample_metadata,
    shard_sample_counts,
    write_shards,
)
from medmoe.errors import CorruptFileError, InvalidInputError

__all__ = [
    "ShardDataset",
    "distributed_position",
    "iter_tar_samples",
    "list_shards",
    "looks_like_shards",
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


DEFAULT_SHUFFLE_BUFFER = 256


class ShardDataset(IterableDataset):
    """Stream image-report samples from tar shards; items are the dicts of
    :class:`~medmoe.data.dataset.ImageReportDataset` (``index`` is the sample's metadata index: its
    manifest position when written by :func:`write_shards`).

    Without :meth:`configure` (evaluation, embedding) a pass yields every sample of the split once, in shard
    order, with :class:`BadSample` objects for what cannot be read. After :meth:`configure` (training; the
    trainer calls it) every reader yields exactly the epoch's quota of good items, see the module docstring.

    Args:
        source: folder of shards, glob, brace pattern, URL, shard file or list (:func:`list_shards`).
        split: keep samples whose metadata split is this (samples without a split are kept).
        image_size, train, seed, transform, require_report: as for ImageReportDataset.
        shuffle: shuffle the shard order by (seed, epoch) and mix samples in a buffer (default: ``train``).
        shuffle_buffer: samples held per reader for mixing (default 256 when shuffling; 0 = off).
        progress: progress bar while counting the samples of shards that ``index.json`` does not list.
        by_rank: without :meth:`configure`, each torch.distributed rank reads its own share of the samples
            (True) or every rank reads all of them (False: validation that must see the whole set).

    Example:
        >>> ds = ShardDataset("corpus/shard-{000000..000999}.tar", split="train", train=True)
        >>> loader = DataLoader(ds, batch_size=32, num_workers=4, collate_fn=collate_image_report)
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        split: str | None = None,
        *,
        shuffle: bool | None = None,
        shuffle_buffer: int | None = None,
        progress: bool = False,
        by_rank: bool = True,
        **options: Unpack[ItemOptions],
    ) -> None:
        super().__init__()
        self.shards = list_shards(source)
        self.by_rank = by_rank
        apply_item_options(self, split, **options)
        self.shuffle = self.transform.train if shuffle is None else shuffle
        if shuffle_buffer is not None and shuffle_buffer < 0:
            raise InvalidInputError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.shuffle_buffer = (DEFAULT_SHUFFLE_BUFFER if self.shuffle else 0) if shuffle_buffer is None else shuffle_buffer
        self.progress = progress
        self._layout: tuple[int, int, int, int] | None = None
        # Epoch and start batch live in shared memory: persistent DataLoader workers keep their own copy of
        # the dataset and read them there when the next epoch's iteration begins.
        self._shared = multiprocessing.RawArray("q", 2)
        self._resume: dict[int, int] = {}
        self._resume_epoch = -1

    @property
    def epoch(self) -> int:
        """The epoch being read (shared memory: persistent workers see the one the trainer set)."""
        return int(self._shared[0])

    # ---- sizes -------------------------------------------------------------------------------------
    @functools.cached_property
    def counts(self) -> list[int]:
        """Samples of ``split`` in each shard (from ``index.json``, else counted once)."""
        return shard_sample_counts(self.shards, self.split, progress=self.progress)

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def epoch_shards(self, epoch: int | None = None) -> list[str]:
        """All shards in the order of ``epoch`` (default: the current one), the same on every reader."""
        return [self.shards[i] for i in self._order(self.epoch if epoch is None else epoch)]

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def _plan(self, epoch: int, reader: int, readers: int) -> tuple[list[int], int, int]:
        """(shard indices, sample stride, offset) of one reader in one epoch."""
        order = self._order(epoch)
        if len(order) >= readers:
            return order[reader::readers], 1, 0
        return order, readers, reader

    def _reader_samples(self, epoch: int, reader: int, readers: int) -> int:
        shards, stride, offset = self._plan(epoch, reader, readers)
        return len(range(offset, sum(self.counts[i] for i in shards), stride))

    # ---- the training protocol (BatchStream) ----------------------------------------------------------
    def configure(self, batch_size: int, *, rank: int | None = None, world_size: int | None = None,
                  workers: int = 0) -> None:
        """Fix the batch size and reader layout of training (ranks x DataLoader workers) and count samples.

        Raises:
            InvalidInputError: the smallest reader gets fewer samples than one batch.
        """
        if rank is None or world_size is None:
            rank, world_size = distributed_position()
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        self._layout = (batch_size, rank, world_size, max(1, workers))
        self.batches_per_epoch(0)

    def batches_per_epoch(self, epoch: int) -> int:
        """Batches this rank takes in ``epoch`` (the same on every rank)."""
        if self._layout is None:
            raise InvalidInputError("call configure() before batches_per_epoch()")
        batch_size, _, world, workers = self._layout
        readers = world * workers
        quota = min(self._reader_samples(epoch, r, readers) for r in range(readers)) // batch_size
        if quota == 0:
            raise InvalidInputError(
                f"{len(self.shards)} shard(s) with {self.num_samples} samples of split {self.split!r} over {readers} "
                f"reader(s) ({world} rank(s) x {workers} worker(s)): some reader gets less than one batch of "
                f"{batch_size}; lower --batch-size or --workers, or write more (equal-sized) shards"
            )
        return quota * workers

    def set_epoch(self, epoch: int, start: int = 0, consumed: dict[int, int] | None = None) -> None:
        """Select ``epoch`` (shard order, augmentation), starting after ``start`` batches of this rank.

        Args:
            consumed: per reader, the samples it had consumed when the checkpoint was written (bad ones
                included); makes a resumed epoch continue exactly. Without it, ``start`` batches per worker
                are skipped, which is exact when no bad sample had been met.
        """
        self._shared[0], self._shared[1] = int(epoch), int(start)
        if consumed:
            self._resume, self._resume_epoch = {int(k): int(v) for k, v in consumed.items()}, int(epoch)

    def __iter__(self) -> Iterator[dict[str, Any] | BadSample]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start = int(self._shared[0]), int(self._shared[1])
        if self._layout is None:
            rank, world = distributed_position() if self.by_rank else (0, 1)
            reader, readers = rank * workers + worker, world * workers
            for item in self._samples(epoch, reader, readers):
                yield item if isinstance(item, BadSample) else self._decode(epoch, *item)
            return
        batch_size, rank, world, configured = self._layout
        if workers != configured:
            raise InvalidInputError(f"ShardDataset configured for {configured} loader worker(s), iterated by {workers}")
        # A resumed DataLoader starts its round robin at worker 0; the original run's next batch came from
        # worker start % workers, so worker w plays the part of worker (w + start) % workers.
        role = (worker + start) % workers
        done = len(range(role, start, workers))
        reader = rank * workers + role
        skip = done * batch_size
        if start and epoch == self._resume_epoch:
            skip = self._resume.get(reader, skip)
        wanted = (self.batches_per_epoch(epoch) // workers - done) * batch_size
        yield from self._quota(epoch, reader, world * workers, skip, wanted)

    # ---- reading ------------------------------------------------------------------------------------
    def _samples(self, epoch: int, reader: int, readers: int, cycle: int = 0) -> Iterator[Any]:
        """``(shard, key, members, meta)`` of one reader's samples through the shuffle buffer;
        a shard that breaks becomes a :class:`BadSample`."""
        shards, stride, offset = self._plan(epoch, reader, readers)

        def raw() -> Iterator[Any]:
            position = 0
            for i in shards:
                url = self.shards[i]
                try:
                    for key, members in iter_tar_samples(url):
                        meta = sample_metadata(members)
                        if not self._wanted(meta):
                            continue
                        if position % stride == offset:  # stride 1, offset 0: every sample
                            yield url, key, members, meta
                        position += 1
                except CorruptFileError as err:
                    logger.warning("%s", err)
                    yield BadSample(-1, url, str(err))

        if self.shuffle_buffer <= 1:  # mixing off
            return raw()
        rng = random.Random(f"{self.seed}:{epoch}:{reader}:{cycle}")
        return webdataset.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(raw())

    def _quota(self, epoch: int, reader: int, readers: int, skip: int, wanted: int) -> Iterator[dict[str, Any]]:
        """``wanted`` good items after the first ``skip`` samples (not decoded); bad samples ride along in
        the next good item's ``"bad"`` list and each carries ``"stream": (reader, samples consumed)``."""
        consumed, yielded, cycle = 0, 0, 0
        pending: list[BadSample] = []
        while yielded < wanted:
            good_in_cycle = read_in_cycle = 0
            for sample in self._samples(epoch, reader, readers, cycle):
                if isinstance(sample, BadSample):
                    pending.append(sample)
                    continue
                read_in_cycle += 1
                consumed += 1
                if consumed <= skip:
                    continue
                item = self._decode(epoch, *sample)
                if isinstance(item, BadSample):
                    pending.append(item)
                    continue
                good_in_cycle += 1
                item["bad"], pending = pending, []
                item["stream"] = (reader, consumed)
                yield item
                yielded += 1
                if yielded == wanted:
                    return
            if good_in_cycle == 0 and (read_in_cycle == 0 or consumed > skip):  # every shard broken, or no good sample
                raise CorruptFileError(
                    f"reader {reader}: no readable sample in its shards {self._plan(epoch, reader, readers)[0]} "
                    f"of {self.shards[0]}..."
                )
            cycle += 1
            logger.warning("epoch %d, reader %d: its shards ran out %d item(s) before the epoch's quota (bad "
                           "samples, or fewer samples than counted); reading them again", epoch, reader,
                           wanted - yielded)

    def _wanted(self, meta: dict[str, Any]) -> bool:
        return self.split is None or normalize_split(meta.get("split")) in (None, self.split)

    def _decode(self, epoch: int, shard: str, key: str, members: dict[str, bytes],
                meta: dict[str, Any]) -> dict[str, Any] | BadSample:
        name = f"{shard}#{key}"
        index = zlib.crc32(f"{os.path.basename(shard)}/{key}".encode()) & 0x7FFFFFFF
        try:
            if "json" in members and not meta:
                json.loads(members["json"].decode("utf-8"))  # raises with the reason for a broken one
            index = int(meta.get("index", index))
            ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
            if ext is None:
                return self._bad(BadSample(index, name, f"no image member (have {sorted(members)})"))
            image, image_meta = decode_image(members[ext], f"{name}.{ext}", target_size=self.transform.decode_size)
            labels = meta.get("labels") or []
            if not labels and "cls" in members:
                labels = [members["cls"].decode("utf-8").strip()]
            report = members.get("txt", b"").decode("utf-8", errors="replace")
            item = dataset_item(self, epoch, index, path=str(meta.get("source") or name), image=image,
                                image_modality=image_meta.modality, raw_report=report,
                                row_modality=meta.get("modality"), labels=[str(v) for v in labels])
        except Exception as err:  # any failure is a bad sample, never a dead run
            item = BadSample(index, name, f"{type(err).__name__}: {err}")
        return self._bad(item) if isinstance(item, BadSample) else item

    @staticmethod
    def _bad(item: BadSample) -> BadSample:
        logger.warning("bad sample %s: %s", item.path, item.reason)
        return item
