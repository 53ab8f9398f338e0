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

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as _load_safetensors
from safetensors.torch import save_model as _save_safetensors
from torch import nn

from medmoe.config import config_from_dict, config_to_dict
from medmoe.errors import InvalidInputError, NotAModelDirectoryError
from medmoe.registry import describe_family

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TEXT_DIR = "text"


class PretrainedMixin:
    """Adds ``save_pretrained`` to a model with ``config``, ``config_class`` and ``model_type``.

    A model with a ``text`` attribute exposing ``save_assets(directory)`` gets its tokenizer and
    encoder config saved under ``text/`` so the directory loads with no network and no other files.
    """

    config: Any
    config_class: type
    model_type: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A class that names its own family registers it (medmoe.registry.register_family) when it is defined.
        super().__init_subclass__(**kwargs)
        if "model_type" in cls.__dict__:
            from medmoe.registry import register_family

            register_family(cls.model_type, cls)

    def save_pretrained(self, directory: str | os.PathLike, *, card: dict[str, Any] | None = None) -> Path:
        """Write the model to ``directory`` (created or replaced atomically); returns its path.

        An existing ``directory`` is replaced only when it is empty or a model medmoe saved (see
        :func:`check_replaceable`): never a folder holding other files. The folder gets a model card,
        ``README.md`` (:func:`medmoe.model_card.write_model_card`); ``card`` gives what the model cannot
        know itself: ``{"training": {...}, "metrics": {...}}`` (the trainer passes them).
        """
        target = Path(directory)
        check_replaceable(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            from medmoe import __version__ as version

            meta = {"model_type": self.model_type, "medmoe_version": version, **config_to_dict(self.config)}
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
            text = getattr(self, "text", None)
            if text is not None and hasattr(text, "save_assets"):
                text.save_assets(tmp / TEXT_DIR)
            _save_safetensors(self, str(tmp / WEIGHTS_NAME))
            from medmoe.model_card import write_model_card

            write_model_card(tmp, self, **(card or {}))
            _swap_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target


_MODEL_ENTRIES = {CONFIG_NAME, WEIGHTS_NAME, TEXT_DIR, "README.md"}  # README.md: the model card


def check_replaceable(target: str | os.PathLike) -> None:
    """Refuse to replace ``target`` unless it is absent, an empty folder, or a model folder medmoe wrote
    (``config.json`` with ``medmoe_version``, and nothing but ``config.json``, ``model.safetensors``, ``text/``, ``README.md``).

    Raises:
        InvalidInputError: naming the folder and what in it medmoe did not write.
    """
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise InvalidInputError(f"{target}: exists and is not a model folder medmoe saved; refusing to replace it")
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return
    foreign = [name for name in entries if name not in _MODEL_ENTRIES]
    try:
        ours = "medmoe_version" in json.loads((target / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        ours = False
    if foreign or not ours:
        what = f"files medmoe did not write ({foreign[:5]})" if foreign else "no config.json written by medmoe"
        raise InvalidInputError(
            f"{target}: holds {what}; refusing to replace it. Move them away or choose another output folder"
        )


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


MAX_CONFIG_BYTES = 2**20


def read_model_config(directory: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """``(model_type, config fields)`` of a saved model directory, with clear errors.

    Raises:
        NotAModelDirectoryError: no directory, no or an unreadable ``config.json`` (over 1 MiB, not JSON,
            not an object), or a ``model_type`` that is not the name of a model family.
    """
    from medmoe.registry import family_names

    path = Path(directory)
    if not path.is_dir():
        raise NotAModelDirectoryError(f"{path}: not a directory (expected a saved medmoe model)")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise NotAModelDirectoryError(f"{path}: not a medmoe model directory (no {CONFIG_NAME})")
    try:
        if cfg_path.stat().st_size > MAX_CONFIG_BYTES:
            raise NotAModelDirectoryError(f"{cfg_path}: {cfg_path.stat().st_size:,} bytes; a config is under 1 MiB")
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise NotAModelDirectoryError(f"{cfg_path}: corrupt config ({type(err).__name__}: {err})") from err
    except OSError as err:
        raise NotAModelDirectoryError(f"{cfg_path}: cannot read ({err.strerror or err})") from err
    if not isinstance(meta, dict) or "model_type" not in meta:
        raise NotAModelDirectoryError(f"{cfg_path}: not a medmoe config (no 'model_type' field)")
    model_type = meta.pop("model_type")
    if not isinstance(model_type, str) or model_type not in family_names():
        raise NotAModelDirectoryError(
            f"{cfg_path}: model_type {model_type!r} is not a medmoe model family; expected one of {family_names()}"
        )
    meta.pop("medmoe_version", None)
    return model_type, meta


def load_model(directory: str | os.PathLike, *, device: str | torch.device | None = None, family: str | None = None,
               **settings: Any) -> nn.Module:
    """Load a model written by ``save_pretrained``; outputs equal the saved model's exactly.

    Before any tensor of the model is allocated, the config is checked (field types, size ranges,
    :mod:`medmoe.model_checks`) and the safetensors header is read and compared with the shapes the config
    gives (the model built on the ``meta`` device), so a hand-edited or hostile directory fails in one
    line. Weights are read with safetensors only: never pickle. ``medmoe.create_model(directory)`` calls this.

    Args:
        directory: the saved model.
        device: move the model there.
        family: the model family the caller needs (``"medmoe"`` alignment, ``"mome"`` segmentation);
            another family is refused with a message saying what the directory holds.
        **settings: config fields to change before the model is built, only among the family's
            ``trained_settings`` (see :class:`medmoe.registry.Family`), e.g. ``dispatch="dense"``; a value
            equal to the saved one is accepted for any field.

    Raises:
        NotAModelDirectoryError: the directory, its config or its weights are missing, corrupt, do not
            match each other, or hold another family than ``family``.
        InvalidInputError: a setting the config has no field for, or one a trained model cannot change.
    """
    from medmoe.model_checks import (
        check_sizes,
        check_text_config,
        compare_with_header,
        expected_shapes,
        read_safetensors_header,
    )
    from medmoe.registry import get_family

    path = Path(directory)
    model_type, fields = read_model_config(path)
    if family is not None and model_type != family:
        raise NotAModelDirectoryError(
            f"{path}: holds a {describe_family(model_type)} model; this needs a {describe_family(family)} model"
        )
    try:
        found = get_family(model_type)
        cls = found.cls
        config = config_from_dict(cls.config_class, fields, where=str(path / CONFIG_NAME))
        check_sizes(config, str(path / CONFIG_NAME))
    except InvalidInputError as err:
        raise NotAModelDirectoryError(str(err)) from err
    if settings:
        config = _apply_trained_settings(config, settings, found.trained_settings, path)
    if (path / TEXT_DIR).is_dir() and dataclasses.is_dataclass(getattr(config, "text", None)):
        try:
            if (path / TEXT_DIR / CONFIG_NAME).is_file():
                check_text_config(path / TEXT_DIR / CONFIG_NAME)
        except InvalidInputError as err:
            raise NotAModelDirectoryError(str(err)) from err
        config = dataclasses.replace(config, text=dataclasses.replace(config.text, model=str(path / TEXT_DIR)))
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise NotAModelDirectoryError(f"{path}: not a medmoe model directory (no {WEIGHTS_NAME})")
    header = read_safetensors_header(weights)
    compare_with_header(*expected_shapes(cls, config), header, str(weights))
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
    return model.to(device) if device is not None else model


def _apply_trained_settings(config: Any, settings: dict[str, Any], allowed: tuple[str, ...], path: Path) -> Any:
    """``config`` with ``settings`` merged, refusing a changed field that is not in ``allowed``."""
    from medmoe.config import merge_overrides

    # unknown fields and bad types fail here
    merged = merge_overrides(config, settings, where=str(path / CONFIG_NAME))
    saved, wanted = config_to_dict(config), config_to_dict(merged)
    for key in _dotted_keys(settings):
        before, after = _lookup(saved, key), _lookup(wanted, key)
        if before != after and key not in allowed and not any(key.startswith(f"{a}.") for a in allowed):
            can = f"only {', '.join(allowed)} can change" if allowed else "no setting can change"
            raise InvalidInputError(
                f"{path}: cannot change {key} of a trained model ({before!r} -> {after!r}); on a saved model {can} "
                f"(start from a registered name to change it)"
            )
    return merged


def _dotted_keys(settings: dict[str, Any], prefix: str = "") -> list[str]:
    return [dotted for key, value in settings.items()
            for dotted in (_dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict)
                           else [f"{prefix}{key}"])]


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data
