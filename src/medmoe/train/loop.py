"""``run_training(task, args)``: the one training loop behind ``medmoe align train`` and ``medmoe seg train``.

Run directory layout (``--out RUN_DIR``)::

    config.yaml          resolved settings (loads back with --config)
    metrics.jsonl        one JSON line per log step: step, epoch, train/<term>, train/lr, val/<metric>...
    tb/                  TensorBoard scalars (rank 0)
    checkpoints/         step_XXXXXXX.pt, the newest --keep-ckpts of them
    model/               task.export(model, RUN_DIR/model) at the end (save_pretrained by default)
    summary.json         steps, final losses, bad samples, non-finite steps, wall time, samples/s,
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
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import IterableDataset
from tqdm import tqdm

from medmoe.errors import InvalidInputError
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
from medmoe.train.data import BatchStream, move_to_device
from medmoe.train.distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    broadcast_object,
    gather_objects,
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
    env = setup_distributed(cfg.device)
    try:
        result = _Run(task, cfg, env, args).run()
    except BaseException:
        teardown_distributed(env, synchronize=False)
        raise
    teardown_distributed(env)
    return result


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

    def _write_config(self) -> None:
        save_resolved_config(self._settings(), self.run_dir / "config.yaml")

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
            chosen = None
            if self.env.is_main:
                found = find_latest_checkpoint(self.ckpt_dir)
                chosen = str(found[0]) if found else None
            chosen = broadcast_object(chosen)
            if chosen is None:
                if self.env.is_main:
                    logger.info("--resume latest: no checkpoint in %s; starting from scratch", self.ckpt_dir)
                return None, None
            path = Path(chosen)
        else:
            path = Path(resume)
        return path, load_checkpoint(path)

    # ---- checkpoints --------------------------------------------------------------------------------

    def _save(self, step: int) -> Path:
        # One gather: every rank's RNG states, and the counts of its streaming readers (exact resume).
        parts = gather_objects((capture_rng_state(self.device), self.stream.consumed))
        rng = [part[0] for part in parts]
        consumed = {reader: n for part in parts for reader, n in part[1].items()}
        path = checkpoint_path(self.run_dir, step)
        if self.env.is_main:
            state = {
                "format": FORMAT,
                "model": unwrap_model(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": step,
                "epoch": self.stream.epoch,
                "position": self.stream.position,
                "consumed": consumed,
                "rng": rng,
                "world_size": self.env.world_size,
                "batch_size": self.cfg.batch_size,
                "accum_steps": self.cfg.accum_steps,
                "bad_samples": self.bad_total,
                "nonfinite_steps": self.nonfinite,
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
        self.last_values = {k: float(v) for k, v in state.get("final_losses", {}).items()}
        epoch, position = int(state["epoch"]), int(state["position"])
        same = (
            state.get("world_size") == self.env.world_size
            and state.get("batch_size") == self.cfg.batch_size
            and state.get("accum_steps") == self.cfg.accum_steps
        )
        if not same and self.env.is_main:
            logger.warning(
                "%s was written with world_size=%s batch_size=%s accum_steps=%s; now %s/%s/%s: continuing, "
                "but not exactly as the original run would have",
                path, state.get("world_size"), state.get("batch_size"), state.get("accum_steps"),
                self.env.world_size, self.cfg.batch_size, self.cfg.accum_steps,
            )
        consumed = {int(k): int(v) for k, v in (state.get("consumed") or {}).items()}
        if not same:
            seen = position * int(state.get("batch_size", self.cfg.batch_size)) * int(state.get("world_size", 1))
            position = seen // (self.cfg.batch_size * self.env.world_size)
            consumed = {}  # readers of another layout: the stream continues at the same fraction of the epoch
        rng = state["rng"]
        if isinstance(rng, list) and len(rng) == self.env.world_size:
            restore_rng_state(rng[self.env.rank], self.device)
        else:
            _seed_everything(self.cfg.seed + 1_000_003 * self.env.rank + int(state["step"]))
        if self.env.is_main:
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, state["step"], epoch, position)
        return epoch, position, consumed

    # ---- torch.compile ------------------------------------------------------------------------------

    def _compile(self, model: nn.Module, dataset: Any) -> str | None:
        """Compile ``model`` in place and try it on a trial step; the backend, or None after falling back.

        Compilation happens at the first call, so a missing C compiler or an operation the backend cannot
        handle shows up only then: the trial step finds out before training starts, instead of failing the
        run at its first step. Ranks decide together (a failure on any rank makes every rank run eagerly),
        assuming that a compiler failure stops every rank before the step's collectives.
        """
        backend = self.cfg.compile_backend
        targets = compile_in_place(model, backend)
        started = time.perf_counter()
        failure: Exception | None = None
        try:
            self._trial_step(model, dataset)
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

    def _trial_step(self, model: nn.Module, dataset: Any) -> None:
        """Forward and backward of the dataset's first batch on the bare model, leaving no trace: gradients,
        buffers (BatchNorm statistics) and RNG states are as before, and the data stream is not touched."""
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
            samples = list(itertools.islice(iter(dataset), self.cfg.batch_size))
        else:
            samples = [dataset[i] for i in range(min(len(dataset), self.cfg.batch_size))]
        batch = self.task.collate(samples)
        if isinstance(batch, dict):
            batch.pop("bad", None)
        batch = move_to_device(batch, self.device)
        rng = capture_rng_state(self.device)
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        try:
            with self.precision.autocast():
                out = self.task.training_step(model, batch)
            loss, _ = split_step_output(out)
            loss.backward()
        finally:
            model.zero_grad(set_to_none=True)
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

    def _train_step(self, stop: StopRequest) -> tuple[dict[str, float], bool]:
        cfg = self.cfg
        started = time.perf_counter()
        waited = 0.0
        acc = StepAccumulator()
        bad_here = 0
        ddp = isinstance(self.model, DistributedDataParallel)
        for micro in range(cfg.accum_steps):
            before = time.perf_counter()
            batch = next(self.stream)
            waited += time.perf_counter() - before
            if not isinstance(batch, dict):
                raise InvalidInputError(f"collate returned {type(batch).__name__}: expected a dict batch")
            bad = list(batch.pop("bad", None) or [])
            bad_here += len(bad)
            self._report_bad(bad)
            batch = move_to_device(batch, self.device)
            final = micro == cfg.accum_steps - 1
            sync = contextlib.nullcontext() if final or not ddp else self.model.no_sync()
            with sync:
                with self.precision.autocast():
                    out = self.task.training_step(self.model, batch)
                loss, values = split_step_output(out)
                self.scaler.scale(loss / cfg.accum_steps).backward()
            acc.add(values)
        self.samples_local += cfg.batch_size * cfg.accum_steps

        # One all-reduce per step: the logged values (averaged), bad-sample count and stop request.
        keys, vec = acc.vector(self.reduce_device)
        flags = torch.tensor([float(bad_here), 1.0 if stop.requested else 0.0], dtype=torch.float64,
                             device=self.reduce_device)
        total = all_reduce_sum(torch.cat([vec, flags]))
        reduced = total.tolist()
        values = {k: v / self.env.world_size for k, v in zip(keys, reduced[: len(keys)])}
        self.bad_total += int(round(reduced[-2]))
        values["lr"] = float(self.optimizer.param_groups[0]["lr"])
        values["data_wait_s"] = waited  # this rank's: where loading falls behind, it does so rank by rank

        if all_finite(values):
            self.consecutive_nonfinite = 0
            if cfg.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)
                norm = torch.nn.utils.clip_grad_norm_(unwrap_model(self.model).parameters(), cfg.clip_grad)
                values["grad_norm"] = float(norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.nonfinite += 1
            self.consecutive_nonfinite += 1
            if self.env.is_main:
                logger.warning("step %d: non-finite loss %s; step skipped", self.step + 1,
                               {k: v for k, v in values.items() if k == "loss" or k.endswith("_loss")})
            if self.consecutive_nonfinite >= cfg.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{self.consecutive_nonfinite} consecutive steps with a non-finite loss (up to step "
                    f"{self.step + 1}); stopping. Lower --lr, enable --clip-grad or check the data"
                )
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # A skipped first step makes torch warn about the call order; the schedule stays tied to steps.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.data_wait_s += waited
        self.step_s += time.perf_counter() - started
        return values, reduced[-1] > 0

    def _validate(self) -> dict[str, float]:
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
        return {k: float(v) for k, v in metrics.items()}

    # ---- the run ------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg, env = self.cfg, self.env
        started = time.perf_counter()
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.ckpt_dir)
        resumed_from, state = self._resume_state()
        if env.is_main:
            self._write_config()

        _seed_everything(cfg.seed)
        model = self.task.build_model()
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"build_model returned {type(model).__name__}: expected a torch.nn.Module")
        model.to(self.device)
        dataset = self.task.train_dataset()
        # Ranks share the initial weights but need their own random streams (dropout, jitter).
        _seed_everything(cfg.seed + 1_000_003 * env.rank)
        self.precision = resolve_precision(cfg.amp, self.device)
        self.optimizer = build_optimizer(model, self.task, lr=cfg.lr, weight_decay=cfg.weight_decay, device=self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
        self.scaler = self.precision.grad_scaler()
        # Before the data stream exists, so that the trial step cannot disturb it.
        self.compiled = self._compile(model, dataset) if cfg.compile else None
        self.model = model
        self.bad_total = 0
        self.nonfinite = 0
        self.consecutive_nonfinite = 0
        self.last_values: dict[str, float] = {}
        self.samples_local = 0
        self.step, epoch, position = 0, 0, 0
        consumed: dict[int, int] = {}
        if state is not None and resumed_from is not None:
            epoch, position, consumed = self._restore(resumed_from, state)
            self.step = int(state["step"])
        self.last_ckpt_step = self.step if state is not None else -1
        self.reduce_device = self.device if self.device.type == "cuda" and env.world_size > 1 else torch.device("cpu")

        self.stream = BatchStream(
            dataset, self.task.collate, batch_size=cfg.batch_size, rank=env.rank,
            world_size=env.world_size, seed=cfg.seed, workers=cfg.workers,
            pin_memory=self.device.type == "cuda", epoch=epoch, position=position, consumed=consumed,
        )
        self.model = wrap_model(model, env, self.task)
        self.model.train()
        if env.is_main:
            logger.info(
                "training %s for %d steps on %s x%d (%s precision), global batch %d",
                type(model).__name__, cfg.steps, self.device, env.world_size, self.precision.name,
                cfg.batch_size * cfg.accum_steps * env.world_size,
            )
        run_log = RunLogger(self.run_dir, enabled=env.is_main, start_step=self.step)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (env.is_main and cfg.progress))
        validation: dict[str, float] = {}
        last_val_step = -1
        start_step = self.step
        before_step = getattr(self.task, "before_step", None)
        try:
            with StopRequest() as stop:
                while self.step < cfg.steps:
                    if before_step is not None:
                        before_step(unwrap_model(self.model), self.step)
                    values, stop_now = self._train_step(stop)
                    self.step += 1
                    self.last_values = values
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        run_log.log(self.step, values, extra={"epoch": self.stream.epoch})
                    bar.update(1)
                    bar.set_postfix(loss=f"{values['loss']:.4g}", lr=f"{values['lr']:.2e}", refresh=False)
                    if cfg.eval_every and self.step % cfg.eval_every == 0:
                        validation = self._validate()
                        last_val_step = self.step
                        if validation:
                            run_log.log(self.step, validation, prefix="val")
                    if stop_now:
                        path = self._save(self.step)
                        run_log.flush()
                        raise TrainingInterrupted(
                            f"stopped by {stop.requested or 'a signal on another rank'} after step {self.step}; "
                            f"checkpoint {path}; continue with --resume latest",
                            step=self.step, checkpoint=path,
                        )
                    if self.step % cfg.ckpt_every == 0:
                        self._save(self.step)
            if self.last_ckpt_step != self.step:
                self._save(self.step)
            if last_val_step != self.step and hasattr(self.task, "validate"):
                validation = self._validate()
                if validation:
                    run_log.log(self.step, validation, prefix="val")
        finally:
            bar.close()
            run_log.close()
            self.stream.close()

        wall = time.perf_counter() - started
        samples = self.samples_local * env.world_size
        model_dir = None
        if env.is_main:
            model_dir = self.run_dir / "model"
            export = getattr(self.task, "export", None)
            card = {"training": self._card_training(), "metrics": validation}
            call_export(export or export_model, unwrap_model(self.model), model_dir, card)
        result = TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            final_losses={k: v for k, v in self.last_values.items() if k == "loss" or k.endswith("_loss")},
            bad_samples=self.bad_total,
            nonfinite_steps=self.nonfinite,
            wall_time_s=wall,
            samples_per_s=samples / wall if wall > 0 else 0.0,
            checkpoint=checkpoint_path(self.run_dir, self.step),
            model_dir=model_dir,
            resumed_from=resumed_from,
            validation=validation,
        )
        if env.is_main:
            self._write_summary(result, start_step, samples)
            logger.info(
                "done: %d steps, loss %.4g, %d bad samples, %d non-finite steps, %.1f s, %.1f samples/s",
                result.steps, result.final_losses.get("loss", math.nan), result.bad_samples,
                result.nonfinite_steps, wall, result.samples_per_s,
            )
        barrier()  # every rank returns once the exported model and summary exist
        return result

    def _card_training(self) -> dict[str, Any]:
        """The training facts of the exported model's card (``README.md``): data, steps, batch, seed, date."""
        settings, task_config = self._settings(), getattr(self.task, "config", None)
        data = {}
        for key in ("model", "data", "split", "val_data"):  # the command line, else the task's config
            value = getattr(settings, key, None) or getattr(task_config, key, None)
            if value:
                data[key] = str(value)
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
        path = self.run_dir / "summary.json"
        tmp = path.with_name(".summary.json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        tmp.replace(path)
