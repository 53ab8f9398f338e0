"""Reading checkpoint files safely: safetensors, or ``torch.load(weights_only=True)``; never arbitrary pickles."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.weights.report import LoadReport

# container keys under which training scripts keep the model's state dict, most specific first
CONTAINERS = ("state_dict", "net", "model", "model_state_dict", "module")


def _tensors_only(state: dict) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, Tensor)}


def read_state_dict(source: str | os.PathLike, what: str = "weights") -> dict[str, Tensor]:
    """The tensors of a checkpoint file, unwrapped from a ``state_dict`` / ``net`` / ``model`` container.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True,
    map_location="cpu")``, which refuses pickled objects other than tensors and plain containers.

    Raises:
        InvalidInputError: ``source`` is not an existing file.
        CorruptFileError: the file is unreadable, not a checkpoint, or holds no tensor.
    """
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"{what} {str(source)!r}: no such file (local files only; hub names are not fetched)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is not a usable checkpoint
        raise CorruptFileError(f"{path}: not a readable checkpoint for {what} ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise CorruptFileError(f"{path}: expected a state dict for {what}, got {type(state).__name__}")
    state = next((inner for key in CONTAINERS
                  if isinstance(inner := state.get(key), dict) and _tensors_only(inner)), state)
    tensors = _tensors_only(state)
    if not tensors:
        raise CorruptFileError(f"{path}: holds no tensor (keys {sorted(map(str, state))[:8]}); not a checkpoint "
                               f"for {what}")
    return tensors


def strip_prefix(key: str) -> str:
    """``key`` without any number of leading ``module.`` (DataParallel / DDP wrap names in it)."""
    return re.sub(r"^(?:module\.)+", "", key)


def load_mapped(module: nn.Module, source: str | os.PathLike, state: dict[str, Tensor],
                rename, *, target: str, scope: tuple[str, ...] = ("",)) -> LoadReport:
    """Load ``state`` into ``module`` through ``rename`` and report what happened.

    Args:
        module: the module loaded into.
        source: the file ``state`` came from (for the report and errors).
        state: the file's tensors.
        rename: ``file key -> module key`` or None when the key has no place in ``module``.
        target: a readable name of what ``module`` is.
        scope: prefixes of the module keys this file is meant to fill; the others are not reported missing.

    Raises:
        CorruptFileError: no tensor of the file fits ``module`` (wrong architecture or not a checkpoint of it).
    """
    own = module.state_dict()
    report = LoadReport(str(source), target)
    usable: dict[str, Tensor] = {}
    for key, value in state.items():
        name = rename(key)
        if name is None or name not in own:
            report.unexpected.append(key)
        elif tuple(own[name].shape) != tuple(value.shape):
            report.mismatched.append((name, tuple(value.shape), tuple(own[name].shape)))
        else:
            usable[name] = value
    if not usable:
        raise CorruptFileError(
            f"{source}: no tensor matches {target} ({len(state)} tensors, e.g. {sorted(state)[:3]}; "
            f"{len(report.mismatched)} with a known name but another shape); wrong architecture or not such a checkpoint")
    module.load_state_dict(usable, strict=False)
    report.matched = sorted(usable)
    report.unexpected.sort()
    report.missing = sorted(k for k in own if k.startswith(scope) and k not in usable)
    return report
