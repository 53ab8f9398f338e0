"""Resumable sampling, the batch stream, and gather_with_grad in a single process."""

from __future__ import annotations

import pytest
import torch
from testkit.train import ToyTask

from medmoe.distributed import gather_with_grad
from medmoe.errors import InvalidInputError
from medmoe.train.data import BatchStream, move_to_device
from medmoe.train.distributed import ResumableSampler


def test_gather_with_grad_is_identity_and_keeps_the_gradient_in_one_process():
    x = torch.randn(4, 3, requires_grad=True)
    y = gather_with_grad(x)
    assert y is x
    (y * torch.arange(12.0).view(4, 3)).sum().backward()
    assert torch.equal(x.grad, torch.arange(12.0).view(4, 3))


def test_sampler_partitions_each_epoch_and_reshuffles_between_epochs():
    samplers = [ResumableSampler(11, num_replicas=3, rank=r, seed=5) for r in range(3)]
    parts = [list(s) for s in samplers]
    assert all(len(p) == 3 for p in parts)  # 11 // 3, the tail dropped so ranks stay in step
    flat = [i for p in parts for i in p]
    assert len(set(flat)) == 9 and set(flat) <= set(range(11))
    for s in samplers:
        s.set_epoch(1)
    assert [list(s) for s in samplers] != parts
    again = ResumableSampler(11, num_replicas=3, rank=1, seed=5)
    again.set_epoch(1, start=2)
    assert list(again) == list(samplers[1])[2:] and len(again) == 1
    with pytest.raises(InvalidInputError, match="start"):
        again.set_epoch(0, start=4)
    with pytest.raises(InvalidInputError, match="at least one per rank"):
        ResumableSampler(2, num_replicas=3, rank=0)


def test_batch_stream_restarted_at_its_position_yields_the_same_batches():
    task = ToyTask(n=30)
    stream = BatchStream(task.train_dataset(), task.collate, batch_size=4, seed=3)
    assert stream.batches_per_epoch == 7
    for _ in range(9):
        next(stream)
    epoch, position = stream.epoch, stream.position
    assert (epoch, position) == (1, 2)
    upcoming = [next(stream) for _ in range(8)]  # crosses into epoch 2
    restarted = BatchStream(task.train_dataset(), task.collate, batch_size=4, seed=3, epoch=epoch, position=position)
    for a, b in zip(upcoming, [next(restarted) for _ in range(8)]):
        assert a["index"] == b["index"] and torch.equal(a["x"], b["x"])
    assert (restarted.epoch, restarted.position) == (2, 3)
    # Augmentation noise differs between epochs for the same item.
    ds = task.train_dataset()
    first = ds[0]["x"]
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0]["x"])


def test_batch_stream_rejects_a_dataset_smaller_than_a_batch():
    task = ToyTask(n=6, bad=())
    with pytest.raises(InvalidInputError, match="fewer than one batch"):
        BatchStream(task.train_dataset(), task.collate, batch_size=4, world_size=2, rank=0)


def test_move_to_device_keeps_non_tensors():
    batch = {"x": torch.zeros(2), "names": ["a", "b"], "nested": (torch.ones(1), "c")}
    moved = move_to_device(batch, torch.device("cpu"))
    assert moved["names"] == ["a", "b"] and isinstance(moved["nested"], tuple) and moved["nested"][1] == "c"
