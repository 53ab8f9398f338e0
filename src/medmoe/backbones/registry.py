"""Backbone kinds: ``backbone.kind`` in a model config -> the class that builds it.

Built-in kinds are imported only when asked for, so that naming a kind costs nothing and this module imports
no task package. A kind's class is a :class:`~medmoe.backbones.PyramidBackbone` subclass, built as
``cls(config, load_pretrained=...)``; its class attributes (``spatial_dims``, ``config_fields``,
``size_limits``, ``weight_fields``, ``weight_names``, ``may_leave_parameters_unused``) are what the configs,
:mod:`medmoe.model_checks` and the models ask of it.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from medmoe.backbones.pyramid import PyramidBackbone
from medmoe.errors import InvalidInputError

_BUILTIN: dict[str, str] = {
    "swin": "medmoe.backbones.swin:SwinPyramid",
    "effnet_lite0": "medmoe.backbones.effnet:EfficientNetLite0",
    "swinunetr": "medmoe.backbones.swinunetr:SwinUNETRFeatures",
    "segresnet": "medmoe.backbones.segresnet:SegResNetFeatures",
}
_REGISTERED: dict[str, type[PyramidBackbone]] = {}


def register_backbone(kind: str, cls: type[PyramidBackbone]) -> type[PyramidBackbone]:
    """Make ``kind`` buildable by :func:`build_backbone` (a backbone of one's own); returns ``cls``.

    Registering a kind again replaces it (a reloaded module); a built-in kind cannot be taken over.

    Raises:
        InvalidInputError: ``kind`` is empty or built in, or ``cls`` is not a ``PyramidBackbone`` subclass.
    """
    if not isinstance(kind, str) or not kind or kind in _BUILTIN:
        raise InvalidInputError(f"backbone kind {kind!r}: expected a new non-empty name (built in: {sorted(_BUILTIN)})")
    if not (isinstance(cls, type) and issubclass(cls, PyramidBackbone)):
        raise InvalidInputError(f"register_backbone({kind!r}): {cls!r} is not a medmoe.backbones.PyramidBackbone class")
    _REGISTERED[kind] = cls
    return cls


def backbone_kinds(spatial_dims: int | None = None) -> list[str]:
    """Every kind :func:`build_backbone` accepts (only the ``spatial_dims``-D ones when given; that imports
    the built-in kinds' modules)."""
    kinds = sorted({*_BUILTIN, *_REGISTERED})
    return (kinds if spatial_dims is None
            else [k for k in kinds if backbone_class(k).spatial_dims == spatial_dims])


def backbone_class(kind: str) -> type[PyramidBackbone]:
    """The class of ``kind``.

    Raises:
        InvalidInputError: an unknown kind, naming the known ones.
    """
    if kind in _REGISTERED:
        return _REGISTERED[kind]
    if kind not in _BUILTIN:
        raise InvalidInputError(f"backbone.kind {kind!r} is not a backbone kind; choose one of {backbone_kinds()}")
    module, name = _BUILTIN[kind].split(":")
    return getattr(importlib.import_module(module), name)


def check_backbone_config(config: Any, spatial_dims: int) -> type[PyramidBackbone]:
    """Refuse a backbone config section whose kind is unknown or of another dimension, that sets a field its
    kind does not read, or whose weight field holds a name the kind does not ship. Returns the kind's class.

    Raises:
        InvalidInputError: one line naming the field, the kind and what it accepts.
    """
    if config.kind not in backbone_kinds():
        raise InvalidInputError(
            f"backbone.kind {config.kind!r} is not a backbone kind; choose one of {backbone_kinds(spatial_dims)}")
    cls = backbone_class(config.kind)
    if cls.spatial_dims != spatial_dims:
        raise InvalidInputError(
            f"backbone.kind {config.kind!r} is a {cls.spatial_dims}-D backbone; this model needs a {spatial_dims}-D "
            f"one: {backbone_kinds(spatial_dims)}")
    for field in dataclasses.fields(config):
        if field.name == "kind" or field.name in cls.config_fields:
            continue
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        if _as_tuple(getattr(config, field.name)) != _as_tuple(default):
            readers = ", ".join(repr(k) for k in backbone_kinds(spatial_dims)
                                if field.name in backbone_class(k).config_fields)
            raise InvalidInputError(
                f"backbone.{field.name} applies to kind {readers or 'none'} only; remove it for kind {config.kind!r}")
    for name in cls.weight_fields:
        value = getattr(config, name)
        shippers = [k for k in backbone_kinds(spatial_dims) if value in backbone_class(k).weight_names]
        if value and shippers and config.kind not in shippers:
            raise InvalidInputError(
                f"backbone.{name} {value!r} exists for kind {', '.join(map(repr, shippers))} only, not {config.kind!r}")
    return cls


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def build_backbone(config: Any, *, load_pretrained: bool = True, **inputs: Any) -> PyramidBackbone:
    """The backbone ``config.kind`` names, built from ``config`` (its weights loaded if ``load_pretrained``);
    ``inputs`` describe the input a 3-D kind takes (``in_channels=``)."""
    return backbone_class(config.kind)(config, load_pretrained=load_pretrained, **inputs)
