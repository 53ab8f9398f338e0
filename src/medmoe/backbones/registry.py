"""Backbone kinds: ``backbone.kind`` in a model config -> the class that builds it.

Built-in kinds are imported only when built, so that naming a kind costs nothing and this module imports
no task package. A builder is called as ``builder(config, load_pretrained=...)`` and returns a
:class:`~medmoe.backbones.PyramidBackbone`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from medmoe.backbones.pyramid import PyramidBackbone
from medmoe.errors import InvalidInputError

Builder = Callable[..., PyramidBackbone]

_BUILTIN: dict[str, str] = {
    "swin": "medmoe.align.backbone:SwinPyramid",
    "effnet_lite0": "medmoe.backbones.effnet:EfficientNetLite0",
}
_REGISTERED: dict[str, Builder] = {}


def register_backbone(kind: str, builder: Builder) -> None:
    """Make ``kind`` buildable by :func:`build_backbone` (e.g. a backbone of one's own)."""
    if not isinstance(kind, str) or not kind or kind in _BUILTIN:
        raise InvalidInputError(f"backbone kind {kind!r}: expected a new non-empty name (built in: {sorted(_BUILTIN)})")
    _REGISTERED[kind] = builder


def backbone_kinds() -> list[str]:
    """Every kind :func:`build_backbone` accepts."""
    return sorted({*_BUILTIN, *_REGISTERED})


def backbone_class(kind: str) -> Builder:
    """The builder of ``kind``.

    Raises:
        InvalidInputError: an unknown kind, naming the known ones.
    """
    if kind in _REGISTERED:
        return _REGISTERED[kind]
    if kind not in _BUILTIN:
        raise InvalidInputError(f"backbone.kind {kind!r} is not a backbone kind; choose one of {backbone_kinds()}")
    module, name = _BUILTIN[kind].split(":")
    return getattr(importlib.import_module(module), name)


def build_backbone(config: Any, *, load_pretrained: bool = True) -> PyramidBackbone:
    """The backbone ``config.kind`` names, built from ``config`` (its weights loaded if ``load_pretrained``)."""
    return backbone_class(config.kind)(config, load_pretrained=load_pretrained)
