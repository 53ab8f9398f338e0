"""Image backbones as feature pyramids, shared by MedMoE (align) and MoME (seg): the contract
(:class:`FeatureInfo`, :class:`Pyramid`, :class:`PyramidBackbone`); level 0 is the finest level."""

from medmoe.backbones.pyramid import FeatureInfo, Pyramid, PyramidBackbone

__all__ = ["FeatureInfo", "Pyramid", "PyramidBackbone"]
