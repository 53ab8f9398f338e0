"""An endless, resumable stream of micro-batches over epochs, and moving batches to a device."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from medmoe.errors import InvalidInputError
from medmoe.train.distributed import ResumableSampler

logger = logging.getLogger(__name__)


class BatchStream:
    """Yields micro-batches forever, epoch after epoch, and knows where it is.

    ``epoch`` and ``position`` (micro-batches of the current epoch already yielded) are what a
    checkpoint stores; a stream built with the same arguments and started at them yields the same
    batches the original stream would have yielded next.

    Args:
        dataset: map-style dataset; ``set_epoch(epoch)`` is called on it before every epoch if it has one.
        collate: turns a list of samples into a batch dict.
        batch_size: samples per micro-batch on this rank (incomplete batches are dropped).
        rank, world_size: this process's share of every epoch.
        seed: shuffling seed (the permutation of epoch ``e`` depends on ``(seed, e)`` only).
        workers: DataLoader worker processes.
        pin_memory: pin host memory for faster copies to CUDA.
        epoch, position: where to start.
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
    ) -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise InvalidInputError(
                f"train_dataset(): got {type(dataset).__name__}; expected a map-style Dataset with __len__ "
                "and __getitem__ (needed for exact resume)"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = ResumableSampler(len(dataset), num_replicas=world_size, rank=rank, seed=seed)
        self.batches_per_epoch = self.sampler.per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise InvalidInputError(
                f"dataset of {len(dataset)} samples over {world_size} rank(s) gives {self.sampler.per_rank} per "
                f"rank: fewer than one batch of {batch_size}; lower --batch-size or add data"
            )
        # An explicit generator keeps DataLoader from drawing worker seeds from the global torch RNG,
        # which would make the model's random stream depend on where epochs start.
        self._generator = torch.Generator()
        self._generator.manual_seed(seed)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            drop_last=True,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=pin_memory,
            generator=self._generator,
        )
        self.epoch = epoch
        self.position = position
        if not 0 <= position <= self.batches_per_epoch:
            raise InvalidInputError(f"data position {position}: expected 0..{self.batches_per_epoch} in an epoch")
        self._iter: Iterator[dict[str, Any]] | None = None

    def _start_epoch(self) -> None:
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, start=self.position * self.batch_size)
        self._iter = iter(self.loader)

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
            return batch

    def close(self) -> None:
        """Stop worker processes of the current epoch."""
        self._iter = None


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
