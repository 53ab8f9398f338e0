"""The trainer's settings as one dataclass, built from the parsed command line and validated early."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmoe.errors import InvalidInputError

AMP_MODES = ("auto", "off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Settings of one training run. ``steps`` counts optimiser steps of the whole run (also when resumed).

    One optimiser step consumes ``accum_steps`` micro-batches of ``batch_size`` samples on each rank:
    the global batch is ``batch_size * accum_steps * world_size``.

    ``compile`` runs ``torch.compile`` with ``compile_backend`` on the model's ``compile_targets`` (see
    :mod:`medmoe.train.compile`); a backend that fails on the trial step falls back to eager with a warning.

    Attributes:
        out: run directory: checkpoints/, tb/, metrics.jsonl, summary.json, model/.
        steps: optimiser steps of the whole run.
        batch_size: samples per micro-batch per rank.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up, then cosine decay.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        accum_steps: micro-batches per optimiser step.
        clip_grad: max gradient norm (0: no clipping).
        amp: mixed precision: auto = bf16 where the GPU computes it natively (compute capability >= 8), else
            fp16 with loss scaling; off on CPU.
        device: one of auto, cpu, cuda or cuda:N.
        workers: data-loading worker processes per rank (started once, kept for the whole run).
        seed: seed of the model's initialisation, data order and augmentation.
        ckpt_every: checkpoint every N steps (and at the end).
        keep_ckpts: keep the newest N checkpoints.
        log_every: metrics.jsonl / TensorBoard every N steps.
        eval_every: validate every N steps (0: only at the end, if the task validates).
        resume: continue from the newest complete checkpoint in RUN_DIR (latest) or from PATH.
        progress: tqdm progress bars.
        max_nonfinite_steps: abort after this many consecutive steps with a non-finite loss.
        compile: torch.compile the model (its compile_targets); falls back to eager if compiling fails.
        compile_backend: torch.compile backend: inductor, aot_eager, eager (debugging), ...
        dist_timeout: under torchrun: minutes before a collective that some rank never joins stops every rank
            (NCCL's own default is 10).
    """

    out: Path = field(metadata={"metavar": "RUN_DIR"})
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    accum_steps: int = 1
    clip_grad: float = 1.0
    amp: str = field(default="auto", metadata={"choices": AMP_MODES})
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    ckpt_every: int = 500
    keep_ckpts: int = 3
    log_every: int = 10
    eval_every: int = 0
    resume: str | None = field(default=None, metadata={"metavar": "latest|PATH"})
    progress: bool = True
    max_nonfinite_steps: int = 10
    compile: bool = False
    compile_backend: str = field(default="inductor", metadata={"metavar": "NAME"})
    dist_timeout: float = field(default=60.0, metadata={"metavar": "MINUTES"})

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        positive = ("steps", "batch_size", "accum_steps", "ckpt_every", "keep_ckpts", "log_every",
                    "max_nonfinite_steps")
        for name in (*positive, "warmup_steps", "workers", "eval_every"):
            value, low = getattr(self, name), int(name in positive)
            if not isinstance(value, int) or value < low:
                raise InvalidInputError(f"--{name.replace('_', '-')} {value!r}: expected an integer >= {low}")
        if not self.dist_timeout > 0:
            raise InvalidInputError(f"--dist-timeout {self.dist_timeout!r}: expected a positive number of minutes")
        if not self.lr > 0:
            raise InvalidInputError(f"--lr {self.lr!r}: expected a positive learning rate")
        for name in ("weight_decay", "clip_grad"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: expected >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise InvalidInputError(f"--min-lr-ratio {self.min_lr_ratio!r}: expected a value in [0, 1]")
        if self.amp not in AMP_MODES:
            raise InvalidInputError(f"--amp {self.amp!r}: expected one of {AMP_MODES}")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise InvalidInputError(f"--compile-backend {self.compile_backend!r}: expected a backend name")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise InvalidInputError(f"--device {self.device!r}: expected one of {DEVICES} or 'cuda:N'")

    @classmethod
    def from_namespace(cls, args: argparse.Namespace | dict[str, Any]) -> TrainConfig:
        """Pick the trainer's fields from parsed arguments; task-specific ones are ignored. ``out`` is required."""
        data = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
        if data.get("out") in (None, ""):
            raise InvalidInputError("--out: a run directory is required")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names and v is not None})
