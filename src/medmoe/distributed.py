"""The distributed helpers library code needs: gathering features across ranks with gradient, sums, barriers.

Contrastive losses (the global InfoNCE of MedMoE) compare every image with every report of the *global*
batch. Each rank gathers the others' features; ``torch.distributed.all_gather`` returns tensors detached
from the graph, so the local tensor is put back in its own slot and its gradient flows. Each rank then
back-propagates through its own samples only; DDP's gradient averaging completes the global gradient.

Everything else distributed (process-group set-up, samplers, DDP wrapping) lives in ``medmoe.train``;
library code (align/, seg/) imports only this module.

Waiting for other ranks (:func:`barrier`) happens on a gloo group of its own with a timeout of
:data:`WAIT_TIMEOUT`, not on the NCCL group: NCCL's watchdog aborts a collective after the process
group's timeout (``--dist-timeout``), while the work a barrier waits for (one rank building a search
index, ranks preprocessing unequal shares of a CT collection) can take hours.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from medmoe.errors import InvalidInputError

_local_only = False


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised (and not inside :func:`local_only`)."""
    return not _local_only and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Run library code as a single process would: :func:`gather_with_grad` returns the local tensor and no
    helper of this module enters a collective. For work that some rank may abandon halfway (a trial step
    that a compiler error stops on one rank only), where a collective would leave the others waiting."""
    global _local_only
    previous, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = previous


def world_size() -> int:
    """Number of ranks: the process group's, else torchrun's ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE") or 1)


def rank() -> int:
    """This process's rank: the process group's, else torchrun's ``RANK`` (also before the group is set up
    and after it is destroyed, e.g. once ``run_training`` returned), else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK") or 0)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping the gradient of the local part.

    Args:
        x: (B, ...) local features. Every rank must pass the same shape (the trainer drops
            incomplete batches so that this holds).

    Returns:
        (world_size * B, ...) tensor; rows ``rank * B : (rank + 1) * B`` are ``x`` itself (so gradients
        reach it), the other rows are detached copies of the other ranks' tensors. Identity (the very same
        tensor) when not distributed.

    Example:
        >>> feats = torch.randn(4, 8, requires_grad=True)
        >>> gather_with_grad(feats) is feats  # single process
        True
    """
    if not is_distributed():
        return x
    if x.dim() == 0:
        raise InvalidInputError(f"gather_with_grad: expected a (B, ...) tensor, got a 0-d tensor {tuple(x.shape)}")
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's picklable ``obj`` in rank order (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# How long a rank waits in :func:`barrier` for the others before giving up.
WAIT_TIMEOUT = timedelta(hours=24)
_wait_groups: dict[int, object] = {}


def _wait_group():
    """The gloo group :func:`barrier` waits on, created on first use (by every rank, inside a barrier)."""
    key = id(dist.group.WORLD)  # a new default group (after destroy and init) gets its own wait group
    if key not in _wait_groups:
        _wait_groups.clear()
        _wait_groups[key] = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return _wait_groups[key]


def drop_wait_group() -> None:
    """Forget the wait group (the process group it belongs to is being destroyed)."""
    _wait_groups.clear()


def barrier() -> None:
    """Wait for every rank, up to :data:`WAIT_TIMEOUT` (no-op when not distributed).

    Runs on a gloo group of its own, so that a long wait (another rank building an index or preprocessing
    volumes) is not under the NCCL watchdog's timeout.
    """
    if is_distributed():
        dist.barrier(group=_wait_group())


def all_reduce_sum(value: torch.Tensor | float | int) -> torch.Tensor | float:
    """``value`` summed over ranks: a tensor comes back on its own device (``value`` itself when not
    distributed; NCCL reduces on this rank's GPU), a number as a float."""
    if not is_distributed():
        return value if isinstance(value, torch.Tensor) else float(value)
    if not isinstance(value, torch.Tensor):
        return float(all_reduce_sum(torch.tensor([float(value)], dtype=torch.float64))[0])
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = value.detach().to(device).clone()
    dist.all_reduce(out)
    return out.to(value.device)


def share(n: int) -> range:
    """This rank's share of ``n`` work items (``rank, rank + world, ...``); all of them when not distributed."""
    if not is_distributed():
        return range(n)
    return range(dist.get_rank(), n, dist.get_world_size())
