"""The Task interface: everything model-specific the trainer needs, and nothing else.

A task (alignment, segmentation, a test toy) tells the trainer how to build the model, where the
training data is, how to turn samples into a batch and how to compute the losses of a batch. The trainer
owns the rest: devices, DDP, sampling, accumulation, AMP, clipping, optimiser, schedule, logging,
checkpoints, resume, export.

Required methods::

    build_model() -> nn.Module
    train_dataset() -> torch.utils.data.Dataset          # map-style: __len__ and __getitem__
    collate(samples: list) -> dict[str, Any]              # may carry "bad": list of objects with .path/.reason
    training_step(model, batch) -> dict[str, Tensor]      # "*_loss" terms (+ optional "loss", scalars)

Optional methods (the trainer checks with ``getattr``; :class:`TaskBase` provides defaults)::

    to_device(model, device) -> nn.Module                 # the built model on the training device, before
                                                          # DDP wraps it (a memory format); default model.to
    before_step(model, step: int) -> None                 # every rank, bare module, before each step
    check_batch(batch) -> str | None                      # why a host batch cannot be trained on, or None
    validate(model) -> dict[str, float]                   # every rank, bare module, eval mode, no_grad
    param_groups(model) -> list[dict]                     # AdamW groups; default: no decay on biases/norms
    export(model, directory: Path, card=None) -> None     # rank 0, bare module; default save_pretrained
                                                          # (card: the model card's training facts and
                                                          # metrics; an export without it still works)
    may_leave_parameters_unused(model) -> bool            # DDP's find_unused_parameters, for tasks whose loss
                                                          # weights leave parameters idle; default: the model's

Optional attributes of the model that ``build_model()`` returns::

    may_leave_parameters_unused: bool     # False: every step uses every trainable parameter (DDP skips
                                          # its search for unused ones); absent: True, the safe default
    compile_targets: list[nn.Module]      # what --compile compiles (its tensor-only parts); absent: all

Contract details:

* ``build_model()`` and ``train_dataset()`` are called once per run, on every rank, right after the RNGs
  are seeded with ``--seed`` (so every rank builds the same initial weights).
* ``training_step(model, batch)`` runs under autocast when AMP is on. Under DDP ``model`` is the
  ``DistributedDataParallel`` wrapper: call it as ``model(...)`` exactly once per batch (only its
  forward synchronises gradients) and compute every loss from that call's outputs; a parameter used
  outside the forward (e.g. a penalty on ``unwrap_model(model).weight``) breaks DDP. Reach attributes
  through :func:`medmoe.train.unwrap_model`. Randomness in the step (dropout, router jitter, a random
  prompt template) may use the global Python/NumPy/torch RNGs: checkpoints restore them on every rank.
  Return a dict of tensors:
  keys ending in ``_loss`` are loss terms, already weighted by the task; the optimised loss is their sum,
  unless the dict has a ``"loss"`` key, which is then used as is. Every term is logged by name. Other
  keys are logged as scalars (a 1-element tensor or a float) or as one scalar per element
  (a 1-D tensor, e.g. expert usage -> ``usage/0``, ``usage/1``...). Every rank must return the same keys
  with the same shapes in every step (the values are averaged across ranks in one all-reduce).
* ``before_step(model, step)`` is called with the bare module and the number of steps already done, on
  every rank, before each step, resumed runs included (the first call after ``--resume`` gets the
  checkpoint's step). A schedule that changes the model at step N (sparse upcycling, unfreezing) must do
  so when called with ``step == N`` and derive any other state from ``step`` alone, so that resume stays
  exact; a change of the weights must be the same on every rank.
* ``validate(model)`` runs every ``--eval-every`` steps and once at the end, on *every* rank (so that no
  rank sits in a collective while another evaluates), with the bare module in eval mode under
  ``torch.no_grad()``; only rank 0's dict is logged (``val/<name>``) and put in ``summary.json``. A task
  may shard its validation set by ``medmoe.distributed.rank()`` and all-reduce, or compute the same thing
  on every rank. The RNG states are saved before and restored after, so validation never changes training.
* Batches are dicts; tensors in them are moved to the device by the trainer, other values (lists of
  report strings, file names) are passed as they are. ``batch["bad"]`` (if present) is removed before
  ``training_step`` and counted: a list of objects with ``.path`` and ``.reason`` for samples that
  failed to load. Each is logged (rank 0) with its path and reason; counts are summed across ranks and
  reported in ``summary.json``. ``collate`` must still return a usable batch from the remaining samples.
  With ``--workers > 0`` ``collate`` runs in worker processes: it must not rely on side effects on the
  task, and what it returns (bad-sample objects included) must be picklable.
* Batches have a fixed size on every rank (the trainer drops incomplete batches), so features can be
  gathered across ranks with :func:`medmoe.distributed.gather_with_grad`.
* ``check_batch(batch)`` sees each micro-batch on the host (CPU tensors, ``"bad"`` removed) when the trainer
  reads it, one step ahead. A batch that cannot be trained on (too many samples failed to load, one rank's
  batch shorter than the others', whose features could not be gathered) gets a reason instead of None; then
  *every* rank skips that step (counted as ``skipped_steps``), because a rank that raised or skipped alone
  would leave the others waiting in DDP's all-reduce. ``training_step`` must therefore not raise for a
  property of one rank's data. A rank that cannot read its next batches at all (an exception from the data
  pipeline) stops every rank after the current step with one :class:`~medmoe.errors.DataLoadError`, after
  writing a checkpoint.

Dataset contract for exact resume (``--resume latest`` reproduces an uninterrupted run's losses):

* The trainer fixes the order: the permutation of epoch ``e`` depends only on ``(seed, e)`` and a
  resumed run restarts mid-epoch at the same position.
* Random augmentation must therefore be a function of ``(seed, epoch, index)``, not of a global or
  per-worker RNG stream. Give the dataset ``set_epoch(epoch)``; the trainer calls it before each epoch
  (and before the resumed one), in the main process before workers start. In ``__getitem__(index)``
  derive a generator, e.g.::

      rng = np.random.default_rng([self.seed, self.epoch, index])
      g = torch.Generator().manual_seed(int(rng.integers(2**63)))
      # MONAI: transform.set_random_state(seed=int(rng.integers(2**31)))

* Exactness also needs the same number of ranks, ``--batch-size`` and ``--accum-steps`` as the
  interrupted run (otherwise the run continues at the same sample count with a warning). ``--steps``
  is the total of the whole run, so the resumed command is the original one plus ``--resume latest``.
* A sample that cannot be loaded is returned as an object with ``.path`` and ``.reason`` (never raise,
  never drop silently); ``collate`` moves it to ``batch["bad"]``.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)


@runtime_checkable
class BadSampleLike(Protocol):
    """A sample that failed to load: where it came from and why it was skipped."""

    path: Any
    reason: str


@runtime_checkable
class Task(Protocol):
    """What the trainer calls; see the module docstring for the full contract."""

    def build_model(self) -> nn.Module: ...

    def train_dataset(self) -> Dataset: ...

    def collate(self, samples: list[Any]) -> dict[str, Any]: ...

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]: ...


class TaskBase:
    """Optional base class giving the optional methods their default behaviour."""

    def before_step(self, model: nn.Module, step: int) -> None:
        """Nothing to change before a step by default."""

    def validate(self, model: nn.Module) -> dict[str, float]:
        """No validation by default (an empty dict is not logged)."""
        return {}

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return default_param_groups(model)

    def export(self, model: nn.Module, directory: str | os.PathLike, card: dict[str, Any] | None = None) -> None:
        export_model(model, directory, card=card)


def default_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels (ndim >= 2); none on biases, norms, scalars, embeddings' gains.

    Groups without ``weight_decay`` get the run's ``--weight-decay``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2]},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def export_model(model: nn.Module, directory: str | os.PathLike, card: dict[str, Any] | None = None) -> None:
    """``model.save_pretrained(directory, card=card)``; a plain module without it gets ``model.safetensors``."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory, **({"card": card} if card is not None else {}))
        return
    from safetensors.torch import save_model

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path / "model.safetensors"))
    logger.info("%s has no save_pretrained; wrote its weights to %s", type(model).__name__, path)


def call_export(export: Callable[..., None], model: nn.Module, directory: str | os.PathLike,
                card: dict[str, Any] | None) -> None:
    """``export(model, directory, card=card)``, or without ``card`` for a task whose export does not take it."""
    try:
        params = inspect.signature(export).parameters.values()
    except (TypeError, ValueError):
        params = []
    if any(p.name == "card" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        export(model, directory, card=card)
    else:
        export(model, directory)
