"""Reading what ``Task.training_step`` returns: the loss to optimise and the named values to log."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from medmoe.errors import InvalidInputError, MedMoEError


class NonFiniteLossError(MedMoEError):
    """Too many consecutive steps had a NaN or infinite loss; the run was stopped."""


def split_step_output(out: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """``(loss, values)`` from a training step's dict.

    ``loss`` is ``out["loss"]`` if given, else the sum of the ``*_loss`` terms. ``values`` maps every
    loggable name to a detached 0-d float tensor: each ``*_loss`` term, ``"loss"``, every other scalar,
    and ``name/i`` for each element of a 1-D tensor.

    Raises:
        InvalidInputError: not a dict, no loss at all, a loss that is not a 1-element tensor, or a value
            of more than one dimension.
    """
    if not isinstance(out, dict):
        raise InvalidInputError(f"training_step returned {type(out).__name__}: expected a dict of named tensors")
    terms = {k: v for k, v in out.items() if k.endswith("_loss")}
    if "loss" in out:
        loss = out["loss"]
    elif terms:
        for key, value in terms.items():
            if not isinstance(value, Tensor):
                raise InvalidInputError(f"training_step: '{key}' is {type(value).__name__}; expected a tensor")
        loss = sum(terms.values())
    else:
        raise InvalidInputError(
            f"training_step returned keys {sorted(out)}: expected loss terms named '*_loss' or a 'loss' key"
        )
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise InvalidInputError(f"training_step: the loss must be a 1-element tensor, got {shape}")
    values: dict[str, Tensor] = {}
    for key, value in out.items():
        if key == "loss":
            continue
        t = (value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)).float()
        if t.numel() == 1:
            values[key] = t.reshape(())
        elif t.dim() == 1:
            if key.endswith("_loss"):
                raise InvalidInputError(f"training_step: loss term '{key}' has shape {tuple(t.shape)}; expected a scalar")
            for i, v in enumerate(t):
                values[f"{key}/{i}"] = v
        else:
            raise InvalidInputError(
                f"training_step: '{key}' has shape {tuple(t.shape)}; expected a scalar or a 1-D tensor"
            )
    values["loss"] = loss.detach().float().reshape(())
    return loss.reshape(()), values


class StepAccumulator:
    """Sums the logged values of a step's micro-batches and averages them."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, Tensor]) -> None:
        if self.count and set(values) != set(self.sums):
            raise InvalidInputError(
                f"training_step returned keys {sorted(values)} after {sorted(self.sums)}: the keys must not change"
            )
        for key, value in values.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def vector(self, device: torch.device) -> tuple[list[str], Tensor]:
        """Sorted names and the per-micro-batch means as one float64 vector on ``device`` (for one all-reduce)."""
        keys = sorted(self.sums)
        if not keys:  # a step that trained on nothing (skipped)
            return keys, torch.zeros(0, dtype=torch.float64, device=device)
        return keys, torch.stack([self.sums[k].to(device, torch.float64) for k in keys]) / max(self.count, 1)


def all_finite(values: dict[str, float]) -> bool:
    return all(math.isfinite(v) for k, v in values.items() if k == "loss" or k.endswith("_loss"))
