"""Image backbones as feature pyramids, shared by MedMoE (align) and MoME (seg): the contract
(:class:`FeatureInfo`, :class:`Pyramid`, :class:`PyramidBackbone`; level 0 is the finest level) and the
backbone kinds a config's ``backbone.kind`` names (:func:`build_backbone`): 2-D ``swin`` and ``effnet_lite0``
for MedMoE, 3-D ``swinunetr`` and ``segresnet`` for MoME. See docs/backbones.md."""

from medmoe.backbones.pyramid import FeatureInfo, Pyramid, PyramidBackbone
from medmoe.backbones.registry import (
    backbone_class,
    backbone_kinds,
    build_backbone,
    check_backbone_config,
    register_backbone,
)

__all__ = ["FeatureInfo", "Pyramid", "PyramidBackbone", "backbone_class", "backbone_kinds", "build_backbone",
           "check_backbone_config", "register_backbone"]
