"""Saved models: a directory with ``config.json`` + ``model.safetensors`` (+ ``text/`` tokenizer and
text-encoder config when the model has a text tower). Never pickle.

Writes are atomic: the directory is assembled next to its target and renamed into place, so an
interrupted save leaves either the old model or the new one, never a mix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model as _load_safetensors
from safetensors.torch import save_model as _save_safetensors
from torch import nn

from medmoe.config import config_from_dict, config_to_dict
from medmoe.errors import InvalidInputError, NotAModelDirectoryError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TEXT_DIR = "text"


def _version() -> str:
    from medmoe import __version__

    return __version__


class PretrainedMixin:
    """Adds ``save_pretrained`` to a model with ``config``, ``config_class`` and ``model_type``.

    A model with a ``text`` attribute exposing ``save_assets(directory)`` gets its tokenizer and
    encoder config saved under ``text/`` so the directory loads with no network and no other files.
    """

    config: Any
    config_class: type
    model_type: str

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the model to ``directory`` (created or replaced atomically); returns its path."""
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            meta = {"model_type": self.model_type, "medmoe_version": _version(), **config_to_dict(self.config)}
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
            text = getattr(self, "text", None)
            if text is not None and hasattr(text, "save_assets"):
                text.save_assets(tmp / TEXT_DIR)
            _save_safetensors(self, str(tmp / WEIGHTS_NAME))
            _swap_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def read_model_config(directory: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """``(model_type, config fields)`` of a saved model directory, with clear errors."""
    path = Path(directory)
    if not path.is_dir():
        raise NotAModelDirectoryError(f"{path}: not a directory (expected a saved medmoe model)")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise NotAModelDirectoryError(f"{path}: not a medmoe model directory (no {CONFIG_NAME})")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NotAModelDirectoryError(f"{cfg_path}: corrupt config ({err})") from err
    if not isinstance(meta, dict) or "model_type" not in meta:
        raise NotAModelDirectoryError(f"{cfg_path}: not a medmoe config (no 'model_type' field)")
    meta.pop("medmoe_version", None)
    return meta.pop("model_type"), meta


def load_model(directory: str | os.PathLike, *, device: str | None = None) -> nn.Module:
    """Load a model written by ``save_pretrained``; outputs equal the saved model's exactly.

    Raises:
        NotAModelDirectoryError: the directory, its config or its weights are missing or corrupt.
    """
    from medmoe.registry import model_class

    path = Path(directory)
    model_type, fields = read_model_config(path)
    try:
        cls = model_class(model_type)
        config = config_from_dict(cls.config_class, fields, where=str(path / CONFIG_NAME))
    except InvalidInputError as err:
        raise NotAModelDirectoryError(f"{path / CONFIG_NAME}: {err}") from err
    if (path / TEXT_DIR).is_dir() and dataclasses.is_dataclass(getattr(config, "text", None)):
        config = dataclasses.replace(config, text=dataclasses.replace(config.text, model=str(path / TEXT_DIR)))
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise NotAModelDirectoryError(f"{path}: not a medmoe model directory (no {WEIGHTS_NAME})")
    model = cls(config, load_pretrained=False)
    try:
        missing, unexpected = _load_safetensors(model, str(weights), strict=False)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise NotAModelDirectoryError(f"{weights}: cannot read weights ({err})") from err
    if missing or unexpected:
        raise NotAModelDirectoryError(
            f"{weights}: weights do not match the config (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    model.eval()
    return model.to(device) if device else model
