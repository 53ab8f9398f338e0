"""Training checkpoints: written atomically, read with ``weights_only=True``, validated, pruned.

A checkpoint is ``RUN_DIR/checkpoints/step_XXXXXXX.pt``: a dict of tensors and plain containers holding
the model, optimiser, scheduler and grad-scaler states, the step, the data position (epoch, micro-batches
consumed in it) and the RNG states of every rank. It is first written to a hidden temporary file in the
same directory, flushed to disk and then renamed over its final name, so a file with the final name is
always complete; a crash leaves at most a temporary file, which the next run deletes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmoe.errors import CorruptFileError, InvalidInputError

logger = logging.getLogger(__name__)

FORMAT = "medmoe.train.checkpoint/1"
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "scaler", "step", "epoch", "position", "rng")
_NAME = re.compile(r"^step_(\d{7,})\.pt$")
_TMP_PREFIX = ".tmp-"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:07d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete-named checkpoints in ``directory``, oldest first."""
    return sorted((int(match.group(1)), path) for path in Path(directory).glob("step_*.pt")
                  if (match := _NAME.match(path.name)) and path.is_file())


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise InvalidInputError(f"checkpoint state for {path}: missing keys {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows opening (or syncing) a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and validate a checkpoint (on CPU).

    Raises:
        InvalidInputError: ``path`` does not exist.
        CorruptFileError: the file is truncated, corrupt or not a medmoe training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"checkpoint {path}: no such file (expected a step_XXXXXXX.pt training checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CorruptFileError(
            f"checkpoint {path}: cannot be read, truncated or corrupt ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CorruptFileError(f"checkpoint {path}: not a medmoe training checkpoint (format {found!r}, expected {FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CorruptFileError(f"checkpoint {path}: incomplete, missing {missing}")
    return state


def find_latest_checkpoint(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` that loads; corrupt ones are skipped with a warning."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except CorruptFileError as err:
            logger.warning("skipping unusable checkpoint: %s", err)
    return None


def prune_checkpoints(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; returns the deleted paths."""
    found = list_checkpoints(directory)
    doomed = [p for _, p in found[:-keep]] if keep > 0 else [p for _, p in found]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporary files left by an interrupted save."""
    stale = list(Path(directory).glob(f"{_TMP_PREFIX}*"))
    for path in stale:
        path.unlink(missing_ok=True)
        logger.info("removed incomplete checkpoint file %s", path)
    return stale


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """Python, NumPy (global), torch CPU and CUDA RNG states as tensors and numbers."""
    version, words, gauss = random.getstate()
    np_key, np_words, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    return {
        "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "key": np_key,
            "state": torch.from_numpy(np.asarray(np_words, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(w) for w in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["key"], npy["state"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
