"""The feature-pyramid contract every image backbone meets, for both tasks.

A backbone maps an image (B, C, *size) to a :class:`Pyramid`: feature maps ordered **finest first** (level 0
has the highest resolution; each later level is deeper and coarser, as in timm and torchvision) plus a
``bottleneck``, the deepest map, which ``pooled`` averages into one vector per image. Its
:class:`FeatureInfo` says, without running it, the channels and reduction (input pixels or voxels per
feature pixel, per axis) of every level and the width of the pooled feature, so that heads never hard-code
channels. Each backbone checks an input size in its own terms (:meth:`PyramidBackbone.check_size`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from medmoe.errors import InvalidInputError


@dataclass(frozen=True)
class FeatureInfo:
    """The static shape of a pyramid.

    Attributes:
        channels: channels of each level, finest first.
        reductions: stride of each level relative to the input (level l is ``size / reductions[l]``),
            strictly increasing.
        pooled_channels: channels of the bottleneck map and of the pooled feature.

    Example:
        >>> info = FeatureInfo(channels=(96, 192, 384, 768), reductions=(4, 8, 16, 32), pooled_channels=768)
        >>> info.level(16), len(info)
        (2, 4)
    """

    channels: tuple[int, ...]
    reductions: tuple[int, ...]
    pooled_channels: int

    def __post_init__(self) -> None:
        if not self.channels or len(self.channels) != len(self.reductions):
            raise InvalidInputError(
                f"a pyramid needs one reduction per level, got channels {self.channels} and reductions "
                f"{self.reductions}")
        if any(b <= a for a, b in zip(self.reductions, self.reductions[1:])):
            raise InvalidInputError(f"pyramid reductions must increase (finest level first), got {self.reductions}")

    def __len__(self) -> int:
        return len(self.channels)

    def level(self, reduction: int) -> int:
        """Index of the level at ``reduction`` (e.g. 1: the input's resolution).

        Raises:
            InvalidInputError: no level has that reduction.
        """
        if reduction not in self.reductions:
            raise InvalidInputError(f"this pyramid has no level at reduction {reduction}; levels: {self.reductions}")
        return self.reductions.index(reduction)


@dataclass
class Pyramid:
    """A backbone's output for B inputs of spatial size ``size`` (2-D or 3-D).

    Attributes:
        features: L maps, finest first: level l is (B, channels[l], *size / reductions[l]).
        bottleneck: (B, pooled_channels, *coarse) the deepest map (for a Swin, the last level itself; for
            SwinUNETR, the encoder bottleneck below the decoder levels).
    """

    features: list[Tensor]
    bottleneck: Tensor

    @property
    def pooled(self) -> Tensor:
        """(B, pooled_channels) the bottleneck's mean over its spatial axes."""
        return self.bottleneck.mean(dim=tuple(range(2, self.bottleneck.dim())))


class PyramidBackbone(nn.Module):
    """Base of the backbones: sets :attr:`feature_info`, checks input sizes, returns a :class:`Pyramid`.

    A subclass is built as ``cls(config, load_pretrained=...)`` from its model's backbone config section
    (MedMoE's ``BackboneConfig`` for 2-D kinds, MoME's ``VolumeBackboneConfig`` for 3-D ones), sets
    ``self.feature_info`` in ``__init__`` and implements :meth:`check_size`, :meth:`smallest_size` and
    ``forward``. Its class attributes declare what the rest of the code asks of a kind, so that nothing
    outside the backbone tests its kind's name: the config checks (:func:`medmoe.backbones.check_backbone_config`),
    the size limits of a saved config (:mod:`medmoe.model_checks`) and DDP's ``find_unused_parameters``
    (the models' ``may_leave_parameters_unused``).
    """

    feature_info: FeatureInfo
    #: 2 for images, 3 for volumes: the config section that can name the kind
    spatial_dims: int = 2
    #: fields of the config section this kind reads besides ``kind``; every other field must keep its default
    config_fields: tuple[str, ...] = ()
    #: (minimum, maximum) of each integer config field (or of each element of a tuple field) this kind
    #: accepts, checked before it is built (:func:`medmoe.model_checks.check_sizes`)
    size_limits: dict[str, tuple[int, int]] = {}
    #: where pretrained weights come from: the config fields naming a local weights file, or named weights
    #: this kind ships (``weight_names``); empty: random initialisation only
    weight_fields: tuple[str, ...] = ()
    #: names a weight field may hold instead of a path, e.g. ``("imagenet",)``
    weight_names: tuple[str, ...] = ()
    #: True when some parameters reach the output only through the bottleneck (:attr:`Pyramid.bottleneck`):
    #: a step whose loss does not read it (MedMoE with its image router detached) leaves them without a
    #: gradient, so DDP must look for unused parameters
    may_leave_parameters_unused: bool = False

    def check_size(self, *size: int) -> None:
        """Raise :class:`~medmoe.errors.InvalidInputError` unless an input of spatial ``size`` fits.

        Each backbone states its own rule (a Swin's windows, a U-Net's downsampling), with the fix in the
        message.
        """
        raise NotImplementedError

    def smallest_size(self) -> tuple[int, ...]:
        """The smallest spatial size :meth:`check_size` accepts (for smoke tests and size advice)."""
        raise NotImplementedError

    @property
    def compile_target(self) -> nn.Module:
        """The tensor-only part that ``--compile`` compiles (default: the whole backbone)."""
        return self

    def _rgb_batch(self, images: Tensor) -> Tensor:
        """A 2-D backbone's input checked and made (B, 3, H, W) float, normalised with ImageNet mean / std.

        Args:
            images: (B, 3, H, W) or (B, 1, H, W) (grey is repeated over the three channels), either uint8
                in 0..255 (normalised here, on their device) or float already normalised that way.

        Raises:
            InvalidInputError: another shape, or a size :meth:`check_size` refuses.
        """
        # Imported here: medmoe.data is not otherwise needed by the backbones.
        from medmoe.data.transforms import normalize_uint8_batch

        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise InvalidInputError(f"images must be (B, 3, H, W) or (B, 1, H, W), got shape {tuple(images.shape)}")
        self.check_size(images.shape[-2], images.shape[-1])
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.dtype == torch.uint8:
            images = normalize_uint8_batch(images)
        return images

    def _check_dims(self, size: tuple[int, ...]) -> None:
        if len(size) != self.spatial_dims:
            raise InvalidInputError(
                f"{type(self).__name__} takes {self.spatial_dims}-D inputs, got spatial size {tuple(size)}")
