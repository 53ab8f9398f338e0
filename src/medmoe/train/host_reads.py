"""Count the places where a training step reads a tensor back to the host.

On a GPU every such read (``.item()``, ``.tolist()``, ``bool(t)``, ``nonzero``, a boolean-mask index, ...)
waits until the device has computed the tensor: the host stops queueing work and the GPU runs dry until
the host catches up. :class:`HostReadCounter` counts them wherever they happen, on any device, so that a
CPU test can hold a training step to a budget of reads that a GPU run would pay for::

    with HostReadCounter() as reads:
        task.training_step(model, batch)
    assert reads.total <= 1, reads.calls

A move to the CPU counts when it starts elsewhere (``.to("cpu")`` of a CUDA tensor) or is asked for
explicitly (``.cpu()``, ``.numpy()``); ``.to(device)`` of a tensor already on the CPU (a host-to-device copy
on a GPU run) does not.
"""

from __future__ import annotations

import traceback
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["HostReadCounter"]

# Tensor methods and torch functions whose result is only known once the device has finished.
_READS = {
    "item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu",
    "nonzero", "argwhere", "bincount", "unique", "unique_consecutive", "masked_select",
    "repeat_interleave",  # without output_size its length is read from the device
}


def _is_bool_index(args: tuple) -> bool:
    """``t[mask]`` with a boolean tensor (or a tuple holding one): the result's size is read from the device."""
    if len(args) < 2:
        return False
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)


def _moves_to_host(args: tuple, kwargs: dict) -> bool:
    """``t.to(...)`` that copies a non-CPU tensor to the CPU."""
    source = args[0] if args else None
    if not isinstance(source, torch.Tensor) or source.device.type == "cpu":
        return False
    targets = [*args[1:], kwargs.get("device")]
    return any((isinstance(t, str) and t.startswith("cpu")) or (isinstance(t, torch.device) and t.type == "cpu")
               for t in targets)


class HostReadCounter(TorchFunctionMode):
    """A torch function mode that counts device-to-host reads by name (:attr:`counts`), with where each
    happened (:attr:`calls`: ``"name at file:line"`` of the caller outside torch)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.calls: list[str] = []

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        counted = (name in _READS
                   or (name == "__getitem__" and _is_bool_index(args))
                   or (name == "to" and _moves_to_host(args, kwargs))
                   or (name == "where" and len(args) + len(kwargs) == 1))  # torch.where(cond): nonzero
        if counted:
            self.counts[name] += 1
            self.calls.append(f"{name} at {_caller()}")
        return func(*args, **kwargs)


def _caller() -> str:
    """The innermost frame outside torch and this module, as ``file:line``."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename and not frame.filename.endswith("host_reads.py"):
            return f"{frame.filename.rsplit('/src/', 1)[-1]}:{frame.lineno}"
    return "?"
