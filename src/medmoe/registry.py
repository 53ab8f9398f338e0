"""Model names -> JSON architecture configs -> models.

Every architecture is a JSON file in ``model_configs/`` whose ``model_type`` names a family; the family's
class has a ``config_class`` dataclass and is built as ``cls(config, load_pretrained=...)``.
"""

from __future__ import annotations

import importlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from medmoe.config import config_from_dict, merge_overrides
from medmoe.errors import InvalidInputError

# model_type -> "module:Class". Imported lazily so that `import medmoe` stays light.
FAMILIES: dict[str, str] = {
    "medmoe": "medmoe.align.model:MedMoE",
    "mome": "medmoe.seg.model:MoME",
}


def _config_dir() -> Path:
    return Path(str(resources.files("medmoe") / "model_configs"))


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(p.stem for p in _config_dir().glob("*.json"))


def get_model_config(name: str) -> dict[str, Any]:
    """The raw JSON config of a registered model (a fresh dict)."""
    path = _config_dir() / f"{name}.json"
    if not path.is_file():
        raise InvalidInputError(f"unknown model {name!r}; registered models: {list_models()}")
    return json.loads(path.read_text())


def model_class(model_type: str) -> type[nn.Module]:
    """The class implementing a model family."""
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise InvalidInputError(f"unknown model_type {model_type!r}; known: {sorted(FAMILIES)}")
    module_name, class_name = FAMILIES[model_type].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_config(name: str, **overrides: Any):
    """The config dataclass of model ``name`` with ``overrides`` applied (by field name), its field types
    and size ranges checked (:func:`medmoe.model_checks.check_sizes`)."""
    from medmoe.model_checks import check_sizes

    raw = get_model_config(name)
    model_type = raw.pop("model_type")
    cls = model_class(model_type)
    config = config_from_dict(cls.config_class, raw, where=name)
    config = merge_overrides(config, overrides, where=name) if overrides else config
    check_sizes(config, name)
    return config


def create_model(name: str, *, pretrained: bool = True, **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of :func:`list_models`, e.g. ``"medmoe-nano"``.
        pretrained: load the pretrained parts the config names from local files (e.g. the bundled
            MiniLM text weights); False builds everything randomly initialised.
        **overrides: config fields by keyword, e.g. ``num_experts=6``. A dict updates a nested config.

    Example:
        >>> model = create_model("medmoe-nano", num_experts=1)
    """
    config = build_config(name, **overrides)
    cls = model_class(get_model_config(name)["model_type"])
    model = cls(config, load_pretrained=pretrained)
    model.model_name = name
    return model
