"""``run_training(task, args)``: the one training loop behind ``medmoe align train`` and ``medmoe seg train``.

Run directory layout (``--out RUN_DIR``)::

    config.yaml          resolved settings (loads back with --config)
    metrics.jsonl        one JSON line per log step: step, epoch, train/<term>, train/lr, val/<metric>...
    tb/                  TensorBoard scalars (rank 0)
    checkpoints/         step_XXXXXXX.pt, the newest --keep-ckpts of them
    model/               task.export(model, RUN_DIR/model) at the end (save_pretrained by default)
    summary.json         steps, final losses, bad samples, non-finite steps, skipped steps (a batch some rank
                         could not train on), wall time, samples/s,
                         step_time_s, data_wait_s / data_wait_share (of this run's step time, the part spent
                         waiting for batches), compile (the torch.compile backend in use, or null)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import random
import socket
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import IterableDataset
from tqdm import tqdm

from medmoe.distributed import all_gather_objects, local_only
from medmoe.errors import DataLoadError, InvalidInputError
from medmoe.paths import write_text_atomic
from medmoe.train.args import resolved_config, save_resolved_config
from medmoe.train.checkpoint import (
    FORMAT,
    capture_rng_state,
    checkpoint_dir,
    checkpoint_path,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)
from medmoe.train.compile import compile_in_place, uncompile
from medmoe.train.config import TrainConfig
from medmoe.train.data import BatchStream, DataState, move_to_device
from medmoe.train.distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    broadcast_object,
    setup_distributed,
    teardown_distributed,
    unwrap_model,
    wrap_model,
)
from medmoe.train.interrupt import StopRequest, TrainingInterrupted
from medmoe.train.logs import RunLogger
from medmoe.train.optim import build_optimizer, build_scheduler, resolve_precision
from medmoe.train.outputs import NonFiniteLossError, StepAccumulator, all_finite, split_step_output
from medmoe.train.task import Task, call_export, export_model

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run reports (the same on every rank)."""

    run_dir: Path
    steps: int
    final_losses: dict[str, float]
    bad_samples: int
    nonfinite_steps: int
    wall_time_s: float
    samples_per_s: float
    checkpoint: Path | None
    model_dir: Path | None
    resumed_from: Path | None = None
    validation: dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0


@dataclass
class _Fetched:
    """The micro-batches of one optimiser step, read a step ahead, and what this rank found in them.

    Attributes:
        state: the data stream before these batches: what a checkpoint written before training on them records.
        problem: why this rank cannot train on them (the task's ``check_batch``), else None.
        error: why reading them failed on this rank (``"ErrorType: message"``), else None.
        waited: seconds spent waiting for them.
    """

    batches: list[dict[str, Any]]
    bad: list[Any]
    state: DataState
    problem: str | None = None
    error: str | None = None
    waited: float = 0.0

    def flags(self) -> list[float]:
        """What the other ranks must know before this step: [unusable, failed] as 0 / 1."""
        return [float(self.problem is not None), float(self.error is not None)]


def run_training(task: Task, args: argparse.Namespace | TrainConfig) -> TrainResult:
    """Train ``task``'s model as ``args`` says (flags of :func:`add_training_arguments`).

    Works unchanged in a single process and under ``torchrun`` (one process per GPU or gloo on CPU).

    Raises:
        InvalidInputError: a bad setting, a RUN_DIR holding another run's checkpoints without ``--resume``.
        CorruptFileError: ``--resume PATH`` names an unreadable checkpoint.
        NonFiniteLossError: ``--max-nonfinite-steps`` consecutive steps had a NaN/inf loss.
        TrainingInterrupted: SIGTERM or Ctrl-C; a checkpoint was written first.
    """
    cfg = args if isinstance(args, TrainConfig) else TrainConfig.from_namespace(args)
    env = setup_distributed(cfg.device, cfg.dist_timeout)
    try:
        result = _Run(task, cfg, env, args).run()
    except BaseException:
        teardown_distributed(env, synchronize=False)
        raise
    teardown_distributed(env)
    return result


def _as_if_inside_ddp(model: nn.Module) -> contextlib.AbstractContextManager:
    """Mark ``model`` (a DDP wrapper) as the active DDP module without running its forward: what Dynamo reads
    to compile with its DDP optimizer (``DistributedDataParallel._inside_ddp_forward``, the context DDP's own
    forward enters). Nothing for a model that is not DDP-wrapped."""
    inside = getattr(model, "_inside_ddp_forward", None) if isinstance(model, DistributedDataParallel) else None
    return inside() if inside is not None else contextlib.nullcontext()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


class _Run:
    def __init__(self, task: Task, cfg: TrainConfig, env: DistEnv, args: Any) -> None:
        self.task, self.cfg, self.env, self.args = task, cfg, env, args
        self.device = env.device
        self.run_dir = cfg.out
        self.ckpt_dir = checkpoint_dir(cfg.out)
        self.compiled: str | None = None  # the torch.compile backend in use
        self.data_wait_s = 0.0  # this run's time in next(stream), and in whole steps (rank-local)
        self.step_s = 0.0

    # ---- set-up -------------------------------------------------------------------------------------

    def _settings(self) -> argparse.Namespace:
        if isinstance(self.args, argparse.Namespace):
            return self.args
        return argparse.Namespace(**{k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self.cfg).items()})

    def _resume_state(self) -> tuple[Path | None, dict[str, Any] | None]:
        resume = self.cfg.resume
        if resume is None:
            if list_checkpoints(self.ckpt_dir):
                raise InvalidInputError(
                    f"--out {self.run_dir}: already holds checkpoints of a run; continue it with --resume latest "
                    "or choose a new run directory"
                )
            return None, None
        if resume == "latest":
            # Rank 0 chooses so that every rank resumes from the same file.
            found = find_latest_checkpoint(self.ckpt_dir) if self.env.is_main else None
            chosen = broadcast_object(str(found[0]) if found else None)
            if chosen is None:
                if self.env.is_main:
                    logger.info("--resume latest: no checkpoint in %s; starting from scratch", self.ckpt_dir)
                return None, None
            path = Path(chosen)
        else:
            path = Path(resume)
        self._check_visible(path)
        return path, load_checkpoint(path)

    def _check_visible(self, path: Path) -> None:
        """Every rank reads the checkpoint it resumes from, which rank 0 alone wrote: refuse, on every rank and
        with the hosts that cannot see it, when some rank cannot (a run directory on a node's local disk)."""
        hosts = all_gather_objects(None if path.is_file() else socket.gethostname())
        blind = sorted({f"rank {r} on {host}" for r, host in enumerate(hosts) if host is not None})
        if blind and self.env.world_size > 1 and len(blind) < self.env.world_size:
            raise InvalidInputError(
                f"--resume: {path} is not visible to {', '.join(blind)}; a run on several nodes resumes from a "
                "run directory on a filesystem every node shares (put --out there, or copy the checkpoint to the "
                "same path on every node)")

    # ---- checkpoints --------------------------------------------------------------------------------

    def _save(self, step: int) -> Path:
        # One gather: every rank's RNG states, and the counts of its streaming readers (exact resume).
        epoch, position, consumed_here = self._data_state()
        parts = all_gather_objects((capture_rng_state(self.device), consumed_here))
        path = checkpoint_path(self.run_dir, step)
        if self.env.is_main:
            state = {
                "format": FORMAT,
                "model": unwrap_model(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": step,
                "epoch": epoch,
                "position": position,
                "consumed": {reader: n for part in parts for reader, n in part[1].items()},
                "rng": [part[0] for part in parts],
                "world_size": self.env.world_size,
                "batch_size": self.cfg.batch_size,
                "accum_steps": self.cfg.accum_steps,
                "bad_samples": self.bad_total,
                "nonfinite_steps": self.nonfinite,
                "skipped_steps": self.skipped,
                "final_losses": dict(self.last_values),
            }
            save_checkpoint(state, path)
            for old in prune_checkpoints(self.ckpt_dir, self.cfg.keep_ckpts):
                logger.debug("removed old checkpoint %s", old)
            logger.info("checkpoint %s", path)
        self.last_ckpt_step = step
        return path

    def _restore(self, path: Path, state: dict[str, Any]) -> tuple[int, int, dict[int, int]]:
        """Load ``state``; returns (epoch, position, per-reader counts of a streaming dataset)."""
        unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.bad_total = int(state.get("bad_samples", 0))
        self.nonfinite = int(state.get("nonfinite_steps", 0))
        self.skipped = int(state.get("skipped_steps", 0))
        self.last_values = {k: float(v) for k, v in state.get("final_losses", {}).items()}
        epoch, position = int(state["epoch"]), int(state["position"])
        saved = (state.get("world_size"), state.get("batch_size"), state.get("accum_steps"))
        layout = (self.env.world_size, self.cfg.batch_size, self.cfg.accum_steps)
        if saved != layout:
            if self.env.is_main:
                logger.warning(
                    "%s was written with world_size=%s batch_size=%s accum_steps=%s; now %s/%s/%s: "
                    "continuing, but not exactly as the original run would have", path, *saved, *layout)
            # the stream continues at the same fraction of the epoch (with no reader counts of another layout)
            seen = position * int(state.get("batch_size", self.cfg.batch_size)) * int(state.get("world_size", 1))
            position = seen // (self.cfg.batch_size * self.env.world_size)
        consumed = (state.get("consumed") or {}) if saved == layout else {}
        rng = state["rng"]
        if isinstance(rng, list) and len(rng) == self.env.world_size:
            restore_rng_state(rng[self.env.rank], self.device)
        else:
            _seed_everything(self.cfg.seed + 1_000_003 * self.env.rank + int(state["step"]))
        if self.env.is_main:
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, state["step"], epoch, position)
        return epoch, position, {int(k): int(v) for k, v in consumed.items()}

    # ---- torch.compile ------------------------------------------------------------------------------

    def _compile(self, dataset: Any) -> str | None:
        """Compile the model in place and try it on a trial step; the backend, or None after falling back.

        Compilation happens at the first call, so a missing C compiler or an operation the backend cannot
        handle shows up only then: the trial step finds out before training starts, instead of failing the
        run at its first step. The trial runs the bare model as if inside the DDP wrapper's forward (see
        :func:`_as_if_inside_ddp`), so that Dynamo compiles the graphs with its DDP optimizer (it splits them at
        the gradient buckets, so that their all-reduce overlaps the backward; the graphs are then reused inside
        DDP's forward), and without any collective (no DDP reducer, :func:`medmoe.distributed.local_only` for
        the task's own gathers): a rank whose compiler fails halfway leaves no other rank waiting. The ranks
        then decide together: a failure on any rank makes every rank run eagerly.
        """
        backend = self.cfg.compile_backend
        targets = compile_in_place(unwrap_model(self.model), backend)
        started = time.perf_counter()
        failure: Exception | None = None
        try:
            self._trial_step(dataset)
        except Exception as err:  # noqa: BLE001 - whatever the compiler raised, training goes on eagerly
            failure = err
        if all_reduce_sum(1.0 if failure is not None else 0.0) == 0:
            if self.env.is_main:
                logger.info("--compile: %s compiled %d module(s) in %.1f s (trial step)", backend, len(targets),
                            time.perf_counter() - started)
            return backend
        uncompile(targets)
        if self.env.is_main:
            reason = "on another rank" if failure is None else f"{type(failure).__name__}: {failure}"
            logger.warning("--compile: backend %s failed on the trial step (%s); training without torch.compile",
                           backend, " ".join(reason.split())[:600])
        return None

    def _trial_step(self, dataset: Any) -> None:
        """Forward and backward of the dataset's first batch, leaving no trace: gradients, buffers (BatchNorm
        statistics) and RNG states are as before, the data stream is not touched and no rank communicates."""
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
            samples = list(itertools.islice(iter(dataset), self.cfg.batch_size))
        else:
            samples = [dataset[i] for i in range(min(len(dataset), self.cfg.batch_size))]
        batch = self.task.collate(samples)
        if isinstance(batch, dict):
            batch.pop("bad", None)
        batch = move_to_device(batch, self.device)
        rng = capture_rng_state(self.device)
        bare = unwrap_model(self.model)
        buffers = [(b, b.detach().clone()) for b in bare.buffers()]
        try:
            with _as_if_inside_ddp(self.model), local_only():
                with self.precision.autocast():
                    out = self.task.training_step(bare, batch)
                loss, _ = split_step_output(out)
                loss.backward()
        finally:
            bare.zero_grad(set_to_none=True)
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            restore_rng_state(rng, self.device)

    # ---- steps --------------------------------------------------------------------------------------

    def _report_bad(self, bad: list[Any]) -> None:
        for item in bad:
            path, reason = getattr(item, "path", "?"), getattr(item, "reason", "?")
            if self.env.is_main:
                logger.warning("bad sample skipped: %s (%s)", path, reason)
            else:
                logger.debug("rank %d: bad sample skipped: %s (%s)", self.env.rank, path, reason)

    def _fetch(self) -> _Fetched:
        """The next step's micro-batches, read on the host. Never raises: whatever went wrong travels to every
        rank with the next all-reduce (:meth:`_train_step`), so that no rank stops, skips or trains alone
        while the others wait for it in a collective."""
        fetched = _Fetched([], [], self.stream.state())
        started = time.perf_counter()
        check = getattr(self.task, "check_batch", None)
        try:
            for _ in range(self.cfg.accum_steps):
                batch = next(self.stream)
                if not isinstance(batch, dict):
                    raise InvalidInputError(f"collate returned {type(batch).__name__}: expected a dict batch")
                fetched.bad += list(batch.pop("bad", None) or [])
                if fetched.problem is None and check is not None:
                    fetched.problem = check(batch)
                fetched.batches.append(batch)
        except Exception as err:  # noqa: BLE001 - every rank stops together, with this message
            fetched.error = f"{type(err).__name__}: {err}"
            logger.exception("rank %d: reading the batches of step %d failed", self.env.rank, self.step + 2)
        fetched.waited = time.perf_counter() - started
        return fetched

    def _data_state(self) -> DataState:
        """Where the data stream stands after the batches trained so far (the next ones are read ahead)."""
        return self.next.state if self.next is not None else self.stream.state()

    def _flags_tensor(self, values: list[float]) -> torch.Tensor:
        """``values`` as a float64 tensor on the training device (where NCCL reduces), copied without waiting
        for the device."""
        flags = torch.tensor(values, dtype=torch.float64)
        return flags.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else flags

    def _agreed(self, unusable: float, failed: float) -> None:
        """What the ranks' summed flags say of the next step: train on it, or skip it / stop (some rank cannot)."""
        self.next_trainable, self.next_failed = unusable == 0 and failed == 0, failed > 0

    def _clip(self) -> torch.Tensor | None:
        """Unscale and clip the gradients; their norm as a device tensor (not read here), or None."""
        if self.cfg.clip_grad <= 0:
            return None
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(unwrap_model(self.model).parameters(), self.cfg.clip_grad)
        return norm.reshape(1).to(self.device, torch.float64)

    def _train_step(self, stop: StopRequest) -> tuple[dict[str, float] | None, bool]:
        """One optimiser step on the batches read ahead; ``(logged values, or None for a skipped step, stop)``.

        The host reads the device once, at the end: one all-reduce carries the step's logged values, the
        bad-sample count, a stop request and whether every rank can train on the next step's batches (read
        while the device still works on this step), and one copy brings them back with the gradient norm.
        """
        cfg = self.cfg
        started = time.perf_counter()
        current, trainable = self.next, self.next_trainable
        acc = StepAccumulator()
        norm = None
        self._report_bad(current.bad)
        if trainable:
            ddp = isinstance(self.model, DistributedDataParallel)
            for micro, batch in enumerate(current.batches):
                batch = move_to_device(batch, self.device)
                final = micro == len(current.batches) - 1
                with contextlib.nullcontext() if final or not ddp else self.model.no_sync():
                    with self.precision.autocast():
                        out = self.task.training_step(self.model, batch)
                    loss, values = split_step_output(out)
                    self.scaler.scale(loss / cfg.accum_steps).backward()
                acc.add(values)
            self.samples_local += cfg.batch_size * cfg.accum_steps
            norm = self._clip()
        else:
            self._report_skip(current)
        self.next = self._fetch() if self.step + 1 < cfg.steps else None

        keys, vec = acc.vector(self.device)
        flags = [float(len(current.bad)), float(bool(stop.requested)), *(self.next.flags() if self.next else [0.0, 0.0])]
        total = all_reduce_sum(torch.cat([vec, self._flags_tensor(flags)]))
        reduced = (total if norm is None else torch.cat([total, norm])).tolist()  # the step's one host read
        n = len(keys)
        bad, stop_now, unusable, failed = reduced[n:n + 4]
        self.bad_total += int(round(bad))
        self._agreed(unusable, failed)
        values = None
        if trainable:
            values = {k: v / self.env.world_size for k, v in zip(keys, reduced[:n])}
            values["lr"] = float(self.optimizer.param_groups[0]["lr"])
            values["data_wait_s"] = current.waited  # this rank's: where loading falls behind, it does so rank by rank
            if norm is not None:
                values["grad_norm"] = reduced[-1]
            self._optimizer_step(values, unscaled=norm is not None)
        else:
            self.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # A skipped first step makes torch warn about the call order; the schedule stays tied to steps.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.data_wait_s += current.waited
        self.step_s += time.perf_counter() - started
        return values, stop_now > 0

    def _optimizer_step(self, values: dict[str, float], *, unscaled: bool) -> None:
        """Step the optimiser unless the loss is not finite (then count it, and stop after too many in a row)."""
        if all_finite(values):
            self.consecutive_nonfinite = 0
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return
        if unscaled:
            self.scaler.update()  # ends the unscale_ of this step (fp16: lowers the scale)
        self.nonfinite += 1
        self.consecutive_nonfinite += 1
        if self.env.is_main:
            logger.warning("step %d: non-finite loss %s; step skipped", self.step + 1,
                           {k: v for k, v in values.items() if k == "loss" or k.endswith("_loss")})
        if self.consecutive_nonfinite >= self.cfg.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} consecutive steps with a non-finite loss (up to step "
                f"{self.step + 1}); stopping. Lower --lr, enable --clip-grad or check the data"
            )

    def _report_skip(self, skipped: _Fetched) -> None:
        """Log why every rank skips this step: this rank's reason, or (rank 0) that another rank had one."""
        if skipped.problem is not None:
            logger.warning("rank %d: step %d skipped on every rank: %s", self.env.rank, self.step + 1, skipped.problem)
        elif self.env.is_main:
            logger.warning("step %d skipped on every rank: another rank's batch cannot be trained on (see its log)",
                           self.step + 1)

    def _stop_on_data_error(self) -> None:
        """Every rank: write a checkpoint of the steps done, then raise one error naming the ranks that failed."""
        errors = all_gather_objects(self.next.error if self.next is not None else None)
        path = self._save(self.step)
        where = "; ".join(f"rank {r}: {e}" for r, e in enumerate(errors) if e)
        raise DataLoadError(f"training stopped after step {self.step}: reading the next batches failed ({where}); "
                            f"checkpoint {path}; fix the data and continue with --resume latest")

    def _validate_and_log(self, run_log: RunLogger) -> dict[str, float]:
        """The task's validation metrics of the current model (none without ``validate``), logged if any."""
        validate = getattr(self.task, "validate", None)
        if validate is None:
            return {}
        bare = unwrap_model(self.model)
        rng = capture_rng_state(self.device)  # validation must not shift the training's random stream
        bare.eval()
        try:
            with torch.no_grad(), self.precision.autocast():
                metrics = validate(bare) or {}
        finally:
            bare.train()
            restore_rng_state(rng, self.device)
        validation = {k: float(v) for k, v in metrics.items()}
        if validation:
            run_log.log(self.step, validation, prefix="val")
        return validation

    # ---- the run ------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Set up, train up to ``--steps`` (logging, validating, checkpointing, stopping on a signal), then
        export the model and write the summary."""
        started = time.perf_counter()
        resumed_from, state = self._prepare_run_dir()
        model, dataset = self._build()
        # Before the data stream exists, so that the trial step cannot disturb it.
        self.compiled = self._compile(dataset) if self.cfg.compile else None
        self._open_stream(dataset, self._start_counts(resumed_from, state))
        if self.env.is_main:
            logger.info(
                "training %s for %d steps on %s x%d (%s precision), global batch %d",
                type(model).__name__, self.cfg.steps, self.device, self.env.world_size, self.precision.name,
                self.cfg.batch_size * self.cfg.accum_steps * self.env.world_size,
            )
        start_step = self.step
        result = self._finish(started, resumed_from, self._train_to_the_end(), start_step)
        barrier()  # every rank returns once the exported model and summary exist
        return result

    def _prepare_run_dir(self) -> tuple[Path | None, dict[str, Any] | None]:
        """Create RUN_DIR (rank 0), choose the checkpoint to resume from, write ``config.yaml`` (rank 0)."""
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.ckpt_dir)
        resumed_from, state = self._resume_state()
        if self.env.is_main:
            save_resolved_config(self._settings(), self.run_dir / "config.yaml")
        return resumed_from, state

    def _build(self) -> tuple[nn.Module, Any]:
        """The task's model on the device (the same initial weights on every rank) and its training dataset;
        sets the precision, optimiser, schedule, gradient scaler and ``self.model`` (DDP-wrapped if distributed)."""
        cfg = self.cfg
        if self.device.type == "cuda":
            # Training shapes are fixed (image size, patch size): let cuDNN pick its fastest convolutions once.
            # TF32 stays as PyTorch sets it (convolutions yes, matmuls no), so fp32 loss regions stay fp32.
            torch.backends.cudnn.benchmark = True
        _seed_everything(cfg.seed)
        model = self.task.build_model()
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"build_model returned {type(model).__name__}: expected a torch.nn.Module")
        to_device = getattr(self.task, "to_device", None)
        model = to_device(model, self.device) if to_device is not None else model.to(self.device)
        dataset = self.task.train_dataset()
        # Ranks share the initial weights but need their own random streams (dropout, jitter).
        _seed_everything(cfg.seed + 1_000_003 * self.env.rank)
        self.precision = resolve_precision(cfg.amp, self.device)
        self.optimizer = build_optimizer(model, self.task, lr=cfg.lr, weight_decay=cfg.weight_decay, device=self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
        self.scaler = self.precision.grad_scaler()
        self.model = wrap_model(model, self.env, self.task)
        return model, dataset

    def _start_counts(self, resumed_from: Path | None, state: dict[str, Any] | None) -> DataState:
        """Set the step and the run's counters: from the checkpoint resumed from, else zero. Returns where the
        data stream starts (epoch, position, per-reader counts)."""
        self.bad_total = 0
        self.nonfinite = 0
        self.skipped = 0
        self.consecutive_nonfinite = 0
        self.last_values: dict[str, float] = {}
        self.samples_local = 0
        if state is None:
            self.step, self.last_ckpt_step = 0, -1
            return 0, 0, {}
        self.step = self.last_ckpt_step = int(state["step"])
        return self._restore(resumed_from, state)

    def _open_stream(self, dataset: Any, data_state: DataState) -> None:
        """Start the data stream at ``data_state``, read the first step's batches and agree on them with the
        other ranks."""
        cfg, env = self.cfg, self.env
        epoch, position, consumed = data_state
        self.stream = BatchStream(
            dataset, self.task.collate, batch_size=cfg.batch_size, rank=env.rank,
            world_size=env.world_size, seed=cfg.seed, workers=cfg.workers,
            pin_memory=self.device.type == "cuda", epoch=epoch, position=position, consumed=consumed,
        )
        self.model.train()
        self.next = self._fetch() if self.step < cfg.steps else None
        # Before the first step: whether every rank can train on its first batches (one all-reduce).
        flags = self.next.flags() if self.next is not None else [0.0, 0.0]
        self._agreed(*all_reduce_sum(self._flags_tensor(flags)).tolist())

    def _train_to_the_end(self) -> dict[str, float]:
        """Train up to ``--steps``, write the last checkpoint and validate the final model (unless the last
        step did); the last validation metrics. Closes the logs, the progress bar and the data stream."""
        cfg = self.cfg
        run_log = RunLogger(self.run_dir, enabled=self.env.is_main, start_step=self.step)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (self.env.is_main and cfg.progress))
        try:
            with StopRequest() as stop:
                validation, last_val_step = self._steps(stop, run_log, bar)
            if self.last_ckpt_step != self.step:
                self._save(self.step)
            if last_val_step != self.step and hasattr(self.task, "validate"):
                validation = self._validate_and_log(run_log)
        finally:
            bar.close()
            run_log.close()
            self.stream.close()
        return validation

    def _steps(self, stop: StopRequest, run_log: RunLogger, bar: tqdm) -> tuple[dict[str, float], int]:
        """The training steps up to ``--steps``, each followed by its log line, validation and checkpoint when
        due; (the last validation metrics, the step they were measured at, -1 if none)."""
        cfg = self.cfg
        validation: dict[str, float] = {}
        last_val_step = -1
        before_step = getattr(self.task, "before_step", None)
        while self.step < cfg.steps:
            if before_step is not None:
                before_step(unwrap_model(self.model), self.step)
            if self.next_failed:
                self._stop_on_data_error()
            values, stop_now = self._train_step(stop)
            self.step += 1
            self._log_step(values, run_log, bar)
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                validation = self._validate_and_log(run_log)
                last_val_step = self.step
            if stop_now:
                self._stop_on_signal(stop, run_log)
            if self.step % cfg.ckpt_every == 0:
                self._save(self.step)
        return validation, last_val_step

    def _log_step(self, values: dict[str, float] | None, run_log: RunLogger, bar: tqdm) -> None:
        """Keep a trained step's values, log them every ``--log-every`` steps and at the last, advance the bar."""
        if values is not None:
            self.last_values = values
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                run_log.log(self.step, values, extra={"epoch": self._data_state()[0]})
            bar.set_postfix(loss=f"{values['loss']:.4g}", lr=f"{values['lr']:.2e}", refresh=False)
        bar.update(1)

    def _stop_on_signal(self, stop: StopRequest, run_log: RunLogger) -> NoReturn:
        """Every rank: write a checkpoint of the steps done, then raise :class:`TrainingInterrupted`."""
        path = self._save(self.step)
        run_log.flush()
        raise TrainingInterrupted(
            f"stopped by {stop.requested or 'a signal on another rank'} after step {self.step}; "
            f"checkpoint {path}; continue with --resume latest",
            step=self.step, checkpoint=path,
        )

    def _finish(self, started: float, resumed_from: Path | None, validation: dict[str, float],
                start_step: int) -> TrainResult:
        """Export the model (rank 0), then the run's result; rank 0 writes ``summary.json`` and logs it."""
        wall = time.perf_counter() - started
        samples = self.samples_local * self.env.world_size
        result = TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            final_losses={k: v for k, v in self.last_values.items() if k == "loss" or k.endswith("_loss")},
            bad_samples=self.bad_total,
            nonfinite_steps=self.nonfinite,
            wall_time_s=wall,
            samples_per_s=samples / wall if wall > 0 else 0.0,
            checkpoint=checkpoint_path(self.run_dir, self.step),
            model_dir=self._export(validation) if self.env.is_main else None,
            resumed_from=resumed_from,
            validation=validation,
            skipped_steps=self.skipped,
        )
        if self.env.is_main:
            self._write_summary(result, start_step, samples)
            logger.info(
                "done: %d steps, loss %.4g, %d bad samples, %d non-finite and %d skipped steps, %.1f s, %.1f samples/s",
                result.steps, result.final_losses.get("loss", math.nan), result.bad_samples,
                result.nonfinite_steps, result.skipped_steps, wall, result.samples_per_s,
            )
        return result

    def _export(self, validation: dict[str, float]) -> Path:
        """Export the trained model with its card to RUN_DIR/model (the task's ``export``, else the default)."""
        model_dir = self.run_dir / "model"
        export = getattr(self.task, "export", None)
        card = {"training": self._card_training(), "metrics": validation}
        call_export(export or export_model, unwrap_model(self.model), model_dir, card)
        return model_dir

    def _card_training(self) -> dict[str, Any]:
        """The training facts of the exported model's card (``README.md``): data, steps, batch, seed, date."""
        settings, task_config = self._settings(), getattr(self.task, "config", None)
        # the command line, else the task's config
        data = {key: str(value) for key in ("model", "data", "split", "val_data")
                if (value := getattr(settings, key, None) or getattr(task_config, key, None))}
        return {**data, "steps": self.step, "batch_size": self.cfg.batch_size,
                "global_batch_size": self.cfg.batch_size * self.cfg.accum_steps * self.env.world_size,
                "lr": self.cfg.lr, "seed": self.cfg.seed, "bad_samples": self.bad_total,
                "nonfinite_steps": self.nonfinite, "world_size": self.env.world_size,
                "date": datetime.now(UTC).isoformat(timespec="seconds")}

    def _write_summary(self, result: TrainResult, start_step: int, samples: int) -> None:
        summary = {
            "steps": result.steps,
            "steps_this_run": result.steps - start_step,
            "final_losses": {k: v if math.isfinite(v) else None for k, v in result.final_losses.items()},
            "bad_samples": result.bad_samples,
            "nonfinite_steps": result.nonfinite_steps,
            "skipped_steps": result.skipped_steps,
            "wall_time_s": round(result.wall_time_s, 3),
            "samples_this_run": samples,
            "samples_per_s": round(result.samples_per_s, 3),
            "world_size": self.env.world_size,
            "device": str(self.device),
            "precision": self.precision.name,
            "compile": self.compiled,
            "step_time_s": round(self.step_s, 3),
            "data_wait_s": round(self.data_wait_s, 3),
            "data_wait_share": round(self.data_wait_s / self.step_s, 4) if self.step_s > 0 else None,
            "resumed_from": str(result.resumed_from) if result.resumed_from else None,
            "checkpoint": str(result.checkpoint),
            "model_dir": str(result.model_dir),
            "validation": result.validation,
            "config": resolved_config(self._settings()),
        }
        write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
