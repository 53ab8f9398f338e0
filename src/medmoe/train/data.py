"""An endless, resumable stream of micro-batches over epochs, and moving batches to a device.

Two kinds of dataset feed it:

- map-style (``__len__`` + ``__getitem__``): a :class:`ResumableSampler` orders each epoch; every index
  travels with its epoch, so that persistent DataLoader workers (which keep their own dataset copy) apply
  the right epoch's augmentation;
- streaming (an ``IterableDataset`` with ``configure(batch_size, rank=, world_size=, workers=)``,
  ``batches_per_epoch(epoch)`` and ``set_epoch(epoch, start, consumed)``, e.g.
  :class:`medmoe.data.shards.ShardDataset`): the dataset splits itself among ranks and workers. Its items
  may carry ``"bad"`` (samples it skipped) and ``"stream": (reader, consumed)``; the stream collects both
  and keeps, per reader, how many samples were consumed, which a checkpoint stores for an exact resume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from medmoe.errors import InvalidInputError
from medmoe.train.distributed import ResumableSampler

logger = logging.getLogger(__name__)

STREAMING_METHODS = ("configure", "batches_per_epoch", "set_epoch")

# (epoch, position, consumed): where a BatchStream is, as a checkpoint stores it (see BatchStream.state).
DataState = tuple[int, int, dict[int, int]]


class _EpochIndexed(Dataset):
    """A map-style dataset addressed by ``(epoch, index)``: calls ``set_epoch`` when the epoch changes."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if epoch != self.epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.epoch = epoch
        return self.dataset[index]


class _EpochTagged(Sampler):
    """Yields ``(epoch, index)`` for each index of a :class:`ResumableSampler`."""

    def __init__(self, sampler: ResumableSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class _StreamCollate:
    """Takes the streaming bookkeeping (``bad``, ``stream``) out of the items before the task's collate."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]]) -> None:
        self.collate = collate

    def __call__(self, samples: list[Any]) -> dict[str, Any]:
        bad: list[Any] = []
        consumed: dict[int, int] = {}
        for sample in samples:
            if isinstance(sample, dict):
                bad += sample.pop("bad", None) or []
                if "stream" in sample:
                    reader, count = sample.pop("stream")
                    consumed[reader] = max(count, consumed.get(reader, 0))
        batch = self.collate(samples)
        if isinstance(batch, dict):
            batch["bad"] = list(batch.get("bad") or []) + bad
            batch["stream_consumed"] = consumed
        return batch


def is_streaming(dataset: Any) -> bool:
    """Whether ``dataset`` follows the streaming protocol (see the module docstring)."""
    return isinstance(dataset, IterableDataset) and all(hasattr(dataset, m) for m in STREAMING_METHODS)


class BatchStream:
    """Yields micro-batches forever, epoch after epoch, and knows where it is.

    ``epoch``, ``position`` (micro-batches of the current epoch already yielded) and, for a streaming
    dataset, ``consumed`` (per reader, samples consumed in this epoch) are what a checkpoint stores; a
    stream built with the same arguments and started at them yields the same batches the original stream
    would have yielded next.

    Args:
        dataset: map-style dataset (``set_epoch(epoch)`` is used if it has one) or a streaming dataset.
        collate: turns a list of samples into a batch dict.
        batch_size: samples per micro-batch on this rank (incomplete batches are dropped).
        rank, world_size: this process's share of every epoch.
        seed: shuffling seed (the permutation of epoch ``e`` depends on ``(seed, e)`` only).
        workers: DataLoader worker processes (persistent: started once for the whole run).
        pin_memory: pin host memory for faster copies to CUDA.
        epoch, position: where to start.
        consumed: a streaming dataset's per-reader counts at ``position`` (from a checkpoint).
    """

    def __init__(
        self,
        dataset: Dataset,
        collate: Callable[[list[Any]], dict[str, Any]],
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        workers: int = 0,
        pin_memory: bool = False,
        epoch: int = 0,
        position: int = 0,
        consumed: dict[int, int] | None = None,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.streaming = is_streaming(dataset)
        # An explicit generator keeps DataLoader from drawing worker seeds from the global torch RNG,
        # which would make the model's random stream depend on where epochs start.
        common = dict(batch_size=batch_size, drop_last=True, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))
        if self.streaming:
            dataset.configure(batch_size, rank=rank, world_size=world_size, workers=workers)
            self.sampler = None
            self.loader = DataLoader(dataset, collate_fn=_StreamCollate(collate), **common)
        else:
            if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
                raise InvalidInputError(
                    f"train_dataset(): got {type(dataset).__name__}; expected a map-style Dataset (__len__ and "
                    f"__getitem__) or a streaming dataset with {', '.join(STREAMING_METHODS)} (e.g. ShardDataset)"
                )
            self.sampler = ResumableSampler(len(dataset), num_replicas=world_size, rank=rank, seed=seed)
            if self.sampler.per_rank // batch_size == 0:
                raise InvalidInputError(
                    f"dataset of {len(dataset)} samples over {world_size} rank(s) gives {self.sampler.per_rank} "
                    f"per rank: fewer than one batch of {batch_size}; lower --batch-size or add data"
                )
            self.loader = DataLoader(_EpochIndexed(dataset), sampler=_EpochTagged(self.sampler), collate_fn=collate,
                                     **common)
        self.epoch = epoch
        self.position = position
        self.consumed: dict[int, int] = dict(consumed or {})
        if self.streaming and position > self.batches_per_epoch:
            # a resume with another layout (ranks, workers, batch size) can land past this layout's epoch
            logger.warning("data position %d is past this epoch's %d batches: starting the next epoch",
                           position, self.batches_per_epoch)
            self.position = position = self.batches_per_epoch
        if not 0 <= position <= self.batches_per_epoch:
            raise InvalidInputError(f"data position {position}: expected 0..{self.batches_per_epoch} in an epoch")
        self._iter: Iterator[dict[str, Any]] | None = None

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches this rank takes in the current epoch."""
        if self.streaming:
            return self.dataset.batches_per_epoch(self.epoch)
        return self.sampler.per_rank // self.batch_size

    def _start_epoch(self) -> None:
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self.consumed = {}
        if self.streaming:
            self.dataset.set_epoch(self.epoch, start=self.position, consumed=self.consumed if self.position else None)
        else:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            self.sampler.set_epoch(self.epoch, start=self.position * self.batch_size)
        self._iter = iter(self.loader)

    def state(self) -> DataState:
        """``(epoch, position, consumed)``: where the stream is, as a checkpoint stores it."""
        return self.epoch, self.position, dict(self.consumed)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iter is None:
            self._start_epoch()
        while True:
            try:
                batch = next(self._iter)
            except StopIteration:
                self.position = self.batches_per_epoch
                self._start_epoch()
                continue
            self.position += 1
            if self.streaming and isinstance(batch, dict):
                for reader, count in batch.pop("stream_consumed", {}).items():
                    self.consumed[reader] = max(count, self.consumed.get(reader, 0))
            return batch

    def close(self) -> None:
        """Stop the (persistent) worker processes."""
        self._iter = None
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors (also inside dicts, lists, tuples) to ``device``; everything else unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple) and any(isinstance(v, torch.Tensor | dict | list | tuple) for v in batch):
        moved = [move_to_device(v, device) for v in batch]
        if hasattr(batch, "_fields"):
            return type(batch)(*moved)
        return tuple(moved) if isinstance(batch, tuple) else moved
    return batch
