"""Model families and names -> JSON architecture configs -> models; ``create_model`` also loads saved folders.

Every architecture is a JSON file in ``model_configs/`` (or a dict given to :func:`register_model`) whose
``model_type`` names a family. A family is a model class with a ``config_class`` dataclass, built as
``cls(config, load_pretrained=...)``; it registers itself with :func:`register_family` (a subclass of
:class:`medmoe.saved_model.PretrainedMixin` that sets ``model_type`` does so when its class is defined, with its
``description`` and ``trained_settings`` attributes). The built-in families' modules are imported only when
a family is asked for, so that ``import medmoe`` stays light: :data:`BUILTIN_MODULES` names them.

Example (a third-party family)::

    class MyNet(PretrainedMixin, nn.Module):      # registers "mynet" when the class is defined
        config_class = MyNetConfig
        model_type = "mynet"
        description = "My nets"

    register_model("mynet-small", {"model_type": "mynet", "width": 64})
    model = create_model("mynet-small")
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmoe.config import config_from_dict, merge_overrides
from medmoe.errors import InvalidInputError

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

#: the built-in families: model_type -> the module whose import defines (and so registers) its class
BUILTIN_MODULES: dict[str, str] = {"medmoe": "medmoe.align.model", "mome": "medmoe.seg.model"}


@dataclasses.dataclass(frozen=True)
class Family:
    """A registered model family.

    Attributes:
        model_type: the name in ``config.json`` (``"medmoe"``).
        cls: the model class (``config_class``, ``cls(config, load_pretrained=...)``).
        description: how people call it (``"MedMoE image-report alignment"``).
        trained_settings: config fields (dotted for nested configs, ``"backbone.gradient_checkpointing"``)
            that :func:`create_model` may change on a saved, trained model: they change neither the weights'
            shapes nor their meaning (e.g. dense vs sparse dispatch, gradient checkpointing).
    """

    model_type: str
    cls: type
    description: str
    trained_settings: tuple[str, ...] = ()


_FAMILIES: dict[str, Family] = {}
_EXTRA_MODELS: dict[str, dict[str, Any]] = {}


def register_family(model_type: str, cls: type, *, description: str | None = None,
                    trained_settings: tuple[str, ...] | None = None) -> type:
    """Make ``model_type`` (the ``model_type`` of configs and saved folders) build ``cls``; returns ``cls``.

    Registering a class again under its name replaces the entry (a reloaded module); a built-in family
    cannot be taken over by a class of another module.

    Args:
        model_type: the family's name.
        cls: a model class with a ``config_class`` dataclass, built as ``cls(config, load_pretrained=...)``
            and saved with ``save_pretrained`` (:class:`medmoe.saved_model.PretrainedMixin`).
        description: how error messages name the family (default: the class's ``description`` attribute, or
            its name).
        trained_settings: see :class:`Family` (default: the class's ``trained_settings`` attribute, or none).

    Raises:
        InvalidInputError: ``model_type`` is not a non-empty string, ``cls`` has no dataclass
            ``config_class``, or it would replace a built-in family with another module's class.
    """
    if not isinstance(model_type, str) or not model_type:
        raise InvalidInputError(f"register_family: model_type {model_type!r}: expected a non-empty string")
    if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
        raise InvalidInputError(f"register_family({model_type!r}): {cls!r} has no dataclass `config_class`")
    builtin = BUILTIN_MODULES.get(model_type)
    if builtin is not None and cls.__module__ != builtin:
        raise InvalidInputError(
            f"register_family({model_type!r}): {model_type!r} is a built-in family ({builtin}); choose another name"
        )
    if trained_settings is None:
        trained_settings = tuple(getattr(cls, "trained_settings", ()))
    description = description or getattr(cls, "description", None) or cls.__name__
    _FAMILIES[model_type] = Family(model_type, cls, description, tuple(trained_settings))
    return cls


def family_names() -> list[str]:
    """The model_types that name a family (built-in or registered), sorted; nothing is imported."""
    return sorted(set(BUILTIN_MODULES) | set(_FAMILIES))


def get_family(model_type: str) -> Family:
    """The registered family ``model_type`` (a built-in one's module is imported on first use).

    Raises:
        InvalidInputError: no family of that name.
    """
    if isinstance(model_type, str) and model_type not in _FAMILIES and model_type in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[model_type])
    if not isinstance(model_type, str) or model_type not in _FAMILIES:
        raise InvalidInputError(f"unknown model_type {model_type!r}; known: {family_names()}")
    return _FAMILIES[model_type]


def model_class(model_type: str) -> type[nn.Module]:
    """The class implementing a model family."""
    return get_family(model_type).cls


def describe_family(model_type: str) -> str:
    """A model family as people call it, e.g. ``"MoME segmentation (mome)"`` (a built-in family's module is
    imported on first use); the repr of a name that is no family."""
    if not isinstance(model_type, str) or model_type not in family_names():
        return repr(model_type)
    return f"{get_family(model_type).description} ({model_type})"


def _config_dir() -> Path:
    return Path(str(resources.files("medmoe") / "model_configs"))


def register_model(name: str, config: dict[str, Any]) -> None:
    """Make ``name`` a registered model: ``config`` is its architecture, as a JSON config file holds it.

    Args:
        name: the name :func:`create_model` takes; not one of the bundled configs.
        config: ``{"model_type": FAMILY, **config fields}``; checked when the model is built.

    Raises:
        InvalidInputError: a bundled name, or a config that is not a mapping with a ``model_type``.
    """
    if not isinstance(name, str) or not name or os.sep in name:
        raise InvalidInputError(f"register_model: name {name!r}: expected a non-empty name without {os.sep!r}")
    if (_config_dir() / f"{name}.json").is_file():
        raise InvalidInputError(f"register_model: {name!r} is a bundled model; choose another name")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise InvalidInputError(f"register_model({name!r}): expected a mapping with a 'model_type' string")
    _EXTRA_MODELS[name] = copy.deepcopy(config)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted({p.stem for p in _config_dir().glob("*.json")} | set(_EXTRA_MODELS))


def get_model_config(name: str) -> dict[str, Any]:
    """The raw JSON config of a registered model (a fresh dict).

    Raises:
        InvalidInputError: ``name`` is not a registered model.
    """
    if name in _EXTRA_MODELS:
        return copy.deepcopy(_EXTRA_MODELS[name])
    path = _config_dir() / f"{name}.json"
    if not isinstance(name, str) or not path.is_file():
        raise InvalidInputError(f"{name}: neither a saved model directory nor a registered model name ({list_models()})")
    return json.loads(path.read_text())


def build_config(name: str, **overrides: Any):
    """The config dataclass of model ``name`` with ``overrides`` applied (by field name), its field types
    and size ranges checked (:func:`medmoe.model_checks.check_sizes`)."""
    from medmoe.model_checks import check_sizes

    raw = get_model_config(name)
    cls = model_class(raw.pop("model_type"))
    config = config_from_dict(cls.config_class, raw, where=name)
    config = merge_overrides(config, overrides, where=name) if overrides else config
    check_sizes(config, name)
    return config


def create_model(name_or_folder: str | os.PathLike, *, pretrained: bool = True, family: str | None = None,
                 device: str | torch.device | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model, or load one saved by ``save_pretrained``.

    Args:
        name_or_folder: one of :func:`list_models` (``"medmoe-nano"``), or a folder written by
            ``save_pretrained`` (a training run's ``RUN_DIR/model``), loaded by :func:`medmoe.load_model`.
        pretrained: a registered name: load the pretrained parts its config names from local files (e.g.
            the bundled MiniLM text weights); False builds everything randomly initialised. A folder's
            weights are always its own.
        family: the model family the caller needs (``"medmoe"``, ``"mome"``); a model of another family is
            refused with one line saying what it is.
        device: move the model there.
        **overrides: config fields by keyword, e.g. ``num_experts=6``; a dict updates a nested config. On a
            folder only the family's ``trained_settings`` (settings that leave the trained weights valid,
            e.g. ``dispatch="dense"``) may change; an architecture field is refused.

    Returns:
        The model: a registered name's in training mode (as ``nn.Module`` starts), a folder's in eval mode.

    Raises:
        InvalidInputError: a name that is neither registered nor a folder, a path that is a file, another
            family than ``family``, or an override the model has no field for or cannot take.
        NotAModelDirectoryError: a folder that is not a readable saved model.

    Example:
        >>> model = create_model("medmoe-nano", num_experts=1)
        >>> model.save_pretrained("out/nano")
        >>> again = create_model("out/nano", family="medmoe")
    """
    path = Path(name_or_folder)
    if path.is_dir():
        from medmoe.saved_model import load_model

        return load_model(path, device=device, family=family, **overrides)
    name = os.fspath(name_or_folder)
    if path.exists():
        raise InvalidInputError(f"{name}: is a file; expected a saved model directory or a registered name")
    if name not in list_models() and (os.sep in name or name.startswith(".")):
        raise InvalidInputError(f"{name}: no such model directory (and not a registered name: {list_models()})")
    model_type = get_model_config(name)["model_type"]
    if family is not None and model_type != family:
        raise InvalidInputError(
            f"{name}: a {describe_family(model_type)} model; this needs a {describe_family(family)} model"
        )
    config = build_config(name, **overrides)
    model = model_class(model_type)(config, load_pretrained=pretrained)
    model.model_name = name
    return model.to(device) if device is not None else model
