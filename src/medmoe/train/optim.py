"""AdamW with linear warm-up and cosine decay, and the mixed-precision settings of a device."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medmoe.devices import AMP_DTYPES, cuda_autocast_dtype
from medmoe.errors import InvalidInputError
from medmoe.train.distributed import is_main
from medmoe.train.task import default_param_groups

logger = logging.getLogger(__name__)


def warmup_cosine(steps: int, warmup_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier for step ``s`` (0-based): linear ramp to 1 over ``warmup_steps``, cosine to ``min_ratio``."""

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        progress = min(1.0, (s - warmup_steps) / max(1, steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(
    model: nn.Module, task: Any, *, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over ``task.param_groups(model)`` (if the task has it) or the default decay/no-decay split.

    Groups may set their own ``lr`` / ``weight_decay``, or an ``lr_scale`` (their ``lr`` is then ``lr_scale``
    times the run's); the others get the run's values.
    """
    groups_fn = getattr(task, "param_groups", None)
    groups = list(groups_fn(model)) if groups_fn is not None else default_param_groups(model)
    if not groups:
        raise InvalidInputError(f"{type(task).__name__}: no trainable parameters in the model")
    for g in groups:
        g.setdefault("weight_decay", weight_decay)
        if "lr_scale" in g:
            g["lr"] = lr * g.pop("lr_scale")
    # The fused kernel on both devices: one launch per step on a GPU, and no host read of the step counters
    # (the for-loop version reads each parameter's step with .item(); measured on the CPU: 3x faster).
    fused = True if device.type in ("cuda", "cpu") else None
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, steps: int, warmup_steps: int, min_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, warmup_steps, min_ratio))


@dataclass(frozen=True)
class Precision:
    """Autocast dtype on a device (``None``: full precision) and whether fp16 loss scaling is needed."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def name(self) -> str:
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_scaler(self) -> bool:
        return self.dtype is torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """``auto``: bf16 on CUDA where native (see :func:`cuda_autocast_dtype`), else fp16; off on CPU.

    ``fp16`` needs CUDA. The choice of ``auto`` is logged with its reason (on rank 0).
    """
    if amp == "fp16" and device.type != "cuda":
        raise InvalidInputError(f"--amp {amp}: fp16 autocast needs a CUDA device "
                                f"(on {device.type} use bf16 or off)")
    if amp != "auto" or device.type != "cuda":
        return Precision(device.type, AMP_DTYPES.get(amp))
    capability = torch.cuda.get_device_capability(device)
    hip = bool(torch.version.hip)
    precision = Precision("cuda", cuda_autocast_dtype(capability, hip=hip))
    where = "ROCm" if hip else f"compute capability {capability[0]}.{capability[1]}"
    why = "native bf16" if precision.dtype is torch.bfloat16 else "no native bf16: fp16 with loss scaling"
    (logger.info if is_main() else logger.debug)("--amp auto: %s on %s (%s)", precision.name, where, why)
    return precision
