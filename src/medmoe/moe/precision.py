"""Float32 regions: where losses, logits and softmaxes run under autocast.

Autocast runs a matmul or einsum in its reduced dtype (bf16 / fp16) whatever its inputs' dtype, so casting
the inputs with ``.float()`` does not keep a loss in float32. The losses of the MoE core and of MedMoE are
decorated with :func:`full_precision`: each runs in one region where autocast is off, on inputs promoted to
at least float32 (float64 stays float64).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from medmoe.devices import autocast_off

F = TypeVar("F", bound=Callable)


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in float32 when it is in a narrower floating type; float32, float64 and non-float tensors as given."""
    return x.to(torch.promote_types(x.dtype, torch.float32)) if x.is_floating_point() else x


def full_precision(fn: F) -> F:
    """Run ``fn`` with autocast off on the device of its first tensor argument, its floating-point tensor
    arguments promoted by :func:`at_least_fp32` (integer and boolean tensors and other values unchanged)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = tuple(at_least_fp32(a) if isinstance(a, Tensor) else a for a in args)
        kwargs = {k: at_least_fp32(v) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        with contextlib.nullcontext() if first is None else autocast_off(first):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
