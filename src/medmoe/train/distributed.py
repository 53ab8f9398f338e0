"""torchrun detection, process-group set-up, DDP wrapping and a resumable distributed sampler.

One code path serves a single process and ``torchrun --nproc_per_node N``: torchrun sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; without them the run is a single process with rank 0.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from medmoe import distributed as _library
from medmoe.devices import resolve_device
from medmoe.distributed import all_reduce_sum, barrier, is_distributed, rank
from medmoe.errors import InvalidInputError

__all__ = [
    "DistEnv",
    "ResumableSampler",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "close_process_group",
    "is_main",
    "may_leave_parameters_unused",
    "setup_distributed",
    "teardown_distributed",
    "unwrap_model",
    "wrap_model",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank among ``world_size``, its device."""

    rank: int
    world_size: int
    device: torch.device
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs and writes files."""
    return rank() == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError as err:
        raise InvalidInputError(f"environment variable {name}={value!r}: expected an integer") from err


# Collectives of a training step finish in milliseconds; what may keep the other ranks waiting in one is a
# checkpoint being written by rank 0 or an uneven validation share. NCCL's own default is 10 minutes.
DEFAULT_TIMEOUT_MIN = 60.0
_RUNS = itertools.count()  # process groups this process has set up


def setup_distributed(device: str = "auto", timeout_min: float = DEFAULT_TIMEOUT_MIN) -> DistEnv:
    """Read torchrun's environment, pick the device and initialise the process group if needed.

    Uses gloo on CPU and nccl on CUDA, with ``timeout_min`` minutes before a collective that some rank
    never joins aborts the run (``--dist-timeout``; NCCL's watchdog then stops every rank instead of
    letting them hang). Long waits that are not collectives of a step (preprocessing, index builds) use
    :func:`medmoe.distributed.barrier`, which has a timeout of its own. A process group that already exists
    (set up by the caller) is reused and left alone at teardown.
    """
    if not timeout_min > 0:
        raise InvalidInputError(f"--dist-timeout {timeout_min!r}: expected a positive number of minutes")
    world = _env_int("WORLD_SIZE", 1)
    rank_ = _env_int("RANK", 0)
    dev = resolve_device(device, local_rank=_env_int("LOCAL_RANK", 0))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        timeout = timedelta(minutes=timeout_min)
        # A fresh key prefix per run: torchrun's store outlives a destroyed group, and destroy_process_group
        # resets torch's group counter, so a second run in the same processes would otherwise read the first
        # group's keys (the addresses of closed sockets) and fail to connect or wait forever.
        store, _, _ = next(dist.rendezvous("env://", rank_, world, timeout=timeout))
        store = dist.PrefixStore(f"medmoe/run{next(_RUNS)}", store)
        dist.init_process_group(backend=backend, store=store, rank=rank_, world_size=world, timeout=timeout)
        logger.debug("rank %d/%d initialised (%s) on %s", rank_, world, backend, dev)
    if dist.is_available() and dist.is_initialized():
        rank_, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank=rank_, world_size=world, device=dev, owns_process_group=owns)


def close_process_group(*, synchronize: bool = True) -> None:
    """Destroy the default process group so that the process can exit cleanly.

    Two races abort a rank at the end of a run (SIGABRT, "terminate called without an active exception"):
    one rank closing its gloo sockets while another still talks to it, which the barrier prevents
    (``synchronize=False`` skips it when leaving on an error, since other ranks may never reach it); and a
    DDP wrapper that outlives the group. DDP's reducer hooks into the wrapped module's parameters and holds
    the process group; left alive, it is destroyed during interpreter shutdown, where gloo aborts. So drop
    every reference to DDP-wrapped modules (the wrapper and the module inside) before calling this;
    unreachable ones in reference cycles are collected here while the group is still valid.
    """
    if not dist.is_initialized():
        return
    gc.collect()
    if synchronize:
        dist.barrier()
    _library.drop_wait_group()
    dist.destroy_process_group()


def teardown_distributed(env: DistEnv, *, synchronize: bool = True) -> None:
    """Destroy the process group if :func:`setup_distributed` created it (see :func:`close_process_group`)."""
    if env.owns_process_group:
        close_process_group(synchronize=synchronize)


# The attribute a model declares (a bool, usually a property) to tell DDP whether a training step can
# leave one of its trainable parameters without a gradient.
UNUSED_PARAMETERS_ATTR = "may_leave_parameters_unused"


def may_leave_parameters_unused(model: nn.Module, task: object | None = None) -> bool:
    """Whether DDP must look for parameters that a step did not use (``find_unused_parameters``).

    A task that weights the losses (and so knows which terms are off) answers through its
    ``may_leave_parameters_unused(model)`` method when it has one; otherwise the model answers.

    A model answers through its ``may_leave_parameters_unused`` attribute: True when some step can leave a
    trainable parameter out of the graph (a Mixture-of-Experts expert that no local sample chose, a router
    that is never called, a branch whose loss is switched off), False when every trainable parameter
    takes part in every step (a static graph, where the search is a wasted graph traversal per step).
    A model that does not declare it gets True: slower but correct, whereas a wrong False makes DDP fail
    at the next step with "Expected to have finished reduction in the prior iteration".

    Raises:
        InvalidInputError: the attribute is present but not a bool.
    """
    ask = getattr(task, UNUSED_PARAMETERS_ATTR, None)
    if callable(ask):
        declared, who = ask(model), f"{type(task).__name__}.{UNUSED_PARAMETERS_ATTR}(model)"
    else:
        declared, who = getattr(model, UNUSED_PARAMETERS_ATTR, None), f"{type(model).__name__}.{UNUSED_PARAMETERS_ATTR}"
    if declared is None:
        return True
    if not isinstance(declared, bool):
        raise InvalidInputError(f"{who} is {declared!r}: expected True or False")
    return declared


def wrap_model(model: nn.Module, env: DistEnv, task: object | None = None) -> nn.Module:
    """DDP-wrap ``model`` when distributed; otherwise return it unchanged.

    ``find_unused_parameters`` follows :func:`may_leave_parameters_unused` (the task's answer, else the
    model's): a Mixture-of-Experts expert
    that no local sample chose gets no gradient on that rank in that step, and DDP must still take part in
    its all-reduce; a model whose every parameter is used in every step skips that search.
    """
    if env.world_size <= 1:
        return model
    find_unused = may_leave_parameters_unused(model, task)
    if env.is_main:
        who = type(task if callable(getattr(task, UNUSED_PARAMETERS_ATTR, None)) else model).__name__
        logger.info("DDP over %d ranks, find_unused_parameters=%s (%s.%s)", env.world_size, find_unused,
                    who, UNUSED_PARAMETERS_ATTR)
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (picklable objects; identity when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class ResumableSampler(Sampler[int]):
    """Shuffled, rank-partitioned indices that can restart mid-epoch at the same permutation.

    The permutation of epoch ``e`` depends only on ``(seed, e)``; rank ``r`` takes every
    ``num_replicas``-th index starting at ``r``. The tail that does not divide evenly among ranks is
    dropped so that every rank yields the same number of indices (DDP needs equal step counts).

    Args:
        num_samples: length of the dataset.
        num_replicas: number of ranks.
        rank: this rank.
        seed: base seed shared by all ranks.
    """

    def __init__(
        self, num_samples: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        if num_samples < num_replicas:
            raise InvalidInputError(
                f"dataset has {num_samples} samples: expected at least one per rank ({num_replicas} ranks)"
            )
        if not 0 <= rank < num_replicas:
            raise InvalidInputError(f"rank {rank}: expected 0 <= rank < {num_replicas}")
        self.num_samples = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start = 0
        self.per_rank = num_samples // num_replicas

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select epoch ``epoch``'s permutation and skip this rank's first ``start`` indices."""
        if not 0 <= start <= self.per_rank:
            raise InvalidInputError(f"sampler start {start}: expected 0..{self.per_rank}")
        self.epoch = epoch
        self.start = start

    def indices(self) -> list[int]:
        """This rank's full index list of the current epoch (ignoring ``start``)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g).tolist()
        total = self.per_rank * self.num_replicas
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start
