"""The 3-D SegResNet backbone (``backbone.kind = "segresnet"``): MONAI's SegResNet (Myronenko 2018, without its
VAE branch) as a feature pyramid, its decoder outputs (finest first) over the encoder bottleneck."""

from __future__ import annotations

from monai.networks.nets import SegResNet
from torch import Tensor, nn

from medmoe.backbones.pyramid import FeatureInfo, Pyramid
from medmoe.backbones.swinunetr import VolumePyramid, norm_name
from medmoe.errors import InvalidInputError


class SegResNetFeatures(VolumePyramid):
    """MONAI's SegResNet encoder and decoder, returning the decoder pyramid instead of logits.

    The MONAI network is kept whole (``self.net``) so that its state dict keeps MONAI's names; its final
    norm / conv block is replaced by an identity because MoME's heads take its place: level 0 is what that
    block would read (tests/backbones/test_mome_backbones.py checks it against MONAI's forward).

    Args:
        config: MoME's :class:`~medmoe.seg.config.VolumeBackboneConfig` with ``feature_size`` (F, SegResNet's ``init_filters``), ``depths`` (residual blocks per encoder
            level, MONAI's ``blocks_down``; L = len(depths) levels, at least 2) and ``norm`` (``instance``,
            ``group`` or ``batch``). No pretrained weights: random initialisation.
        in_channels: image channels.
        load_pretrained: accepted for the backbone contract; there is nothing to load.

    Shapes:
        volume: (B, C, D, H, W), sides multiples of 2^(L-1) -> :class:`~medmoe.backbones.Pyramid` with
        features (B, F, /1), (B, 2F, /2), ..., (B, 2^(L-1) F, /2^(L-1)): the L-1 decoder outputs, finest first,
        then the encoder bottleneck, which is also the pyramid's bottleneck.

    Example:
        >>> net = SegResNetFeatures(VolumeBackboneConfig(kind="segresnet", feature_size=8, depths=(1, 2, 2, 4)))
        >>> [tuple(f.shape[1:]) for f in net(torch.zeros(1, 1, 32, 32, 32)).features]
        [(8, 32, 32, 32), (16, 16, 16, 16), (32, 8, 8, 8), (64, 4, 4, 4)]
    """

    config_fields = ("feature_size", "depths", "norm")
    size_limits = {"feature_size": (1, 1024), "depths": (1, 48)}
    weight_fields = ()
    # every decoder output is a level and the bottleneck is the last one: all parameters take part
    may_leave_parameters_unused = False

    def __init__(self, config, *, in_channels: int = 1, load_pretrained: bool = True) -> None:
        f, depths = config.feature_size, tuple(config.depths)
        levels = len(depths)
        super().__init__(config.norm, 2 ** (levels - 1), f"this SegResNet downsamples {levels - 1} times",
                         "or norm='group'")
        if f <= 0:
            raise InvalidInputError(f"backbone.feature_size must be positive, got {f}")
        if len(depths) < 2:
            raise InvalidInputError(f"backbone.depths needs at least 2 levels for kind 'segresnet', got {depths}")
        self.net = SegResNet(spatial_dims=3, init_filters=f, in_channels=in_channels, out_channels=1,
                             norm=norm_name(config.norm, f), blocks_down=depths,
                             blocks_up=(1,) * (len(depths) - 1))
        self.net.conv_final = nn.Identity()
        self.feature_info = FeatureInfo(channels=tuple(f * 2**i for i in range(levels)),
                                        reductions=tuple(2**i for i in range(levels)),
                                        pooled_channels=f * 2 ** (levels - 1))

    def forward(self, volume: Tensor) -> Pyramid:
        """The pyramid of a (B, C, D, H, W) volume (size not checked here: MoME checks it with its advice)."""
        bottleneck, down = self.net.encode(volume)
        down.reverse()
        x, levels = bottleneck, [bottleneck]
        for i, (up, block) in enumerate(zip(self.net.up_samples, self.net.up_layers)):
            x = block(up(x) + down[i + 1])
            levels.append(x)
        return Pyramid(levels[::-1], bottleneck)
