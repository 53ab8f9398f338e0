"""MONAI SwinUNETR as a feature pyramid: the five decoder outputs (finest first) over the bottleneck."""

from __future__ import annotations

from monai.networks.nets import SwinUNETR
from torch import Tensor, nn

from medmoe.backbones import FeatureInfo, Pyramid, PyramidBackbone
from medmoe.errors import InvalidInputError
from medmoe.seg.config import NORMS
from medmoe.weights.monai_swin import load_swinunetr
from medmoe.weights.report import LoadReport


def _norm_name(norm: str, feature_size: int) -> str | tuple:
    if norm not in NORMS:
        raise InvalidInputError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "group":
        # every SwinUNETR width is a multiple of feature_size, itself a multiple of 12
        return ("group", {"num_groups": 4 if feature_size % 4 == 0 else 3})
    return norm


class SwinUNETRFeatures(PyramidBackbone):
    """MONAI's SwinUNETR encoder and decoder, returning the decoder pyramid instead of logits.

    The MONAI network is kept whole (``self.net``) so its weights load from MONAI checkpoints; only its
    output block is replaced by an identity because MoME's heads take its place: level 0 of the pyramid is
    what MONAI's output block would read (tests/seg/test_backbone.py checks that against MONAI's forward).

    Args:
        in_channels: image channels.
        feature_size: F, a multiple of 12.
        depths, num_heads, window_size, use_checkpoint, drop_path_rate: passed to MONAI.
        norm: ``instance``, ``group`` or ``batch`` for the conv blocks.

    Shapes:
        volume: (B, C, D, H, W), sides multiples of 32 (:meth:`check_size`) -> :class:`~medmoe.backbones.Pyramid`
        with features (B, F, /1), (B, F, /2), (B, 2F, /4), (B, 4F, /8), (B, 8F, /16) (F = feature_size; the
        decoder outputs, finest first) and bottleneck (B, 16F, /32), the encoder10 output.

    Example:
        >>> feats = SwinUNETRFeatures(1, 12)(torch.zeros(1, 1, 64, 64, 64))
        >>> [tuple(f.shape[1:]) for f in feats.features][-1]
        (96, 4, 4, 4)
    """

    spatial_dims = 3

    def __init__(self, in_channels: int, feature_size: int, *, depths: tuple[int, ...] = (2, 2, 2, 2),
                 num_heads: tuple[int, ...] = (3, 6, 12, 24), window_size: int = 7, norm: str = "instance",
                 use_checkpoint: bool = False, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if feature_size <= 0 or feature_size % 12:
            raise InvalidInputError(f"feature_size must be a positive multiple of 12, got {feature_size}")
        if len(depths) != 4 or len(num_heads) != 4:
            raise InvalidInputError(f"depths and num_heads need 4 stages, got {depths} and {num_heads}")
        self.net = SwinUNETR(in_channels=in_channels, out_channels=1, feature_size=feature_size, depths=depths,
                             num_heads=num_heads, window_size=window_size, norm_name=_norm_name(norm, feature_size),
                             use_checkpoint=use_checkpoint, dropout_path_rate=drop_path_rate, spatial_dims=3)
        self.net.out = nn.Identity()
        self.in_channels = in_channels
        self.feature_size = feature_size
        self.norm = norm
        f = feature_size
        self.feature_info = FeatureInfo(channels=(f, f, 2 * f, 4 * f, 8 * f), reductions=(1, 2, 4, 8, 16),
                                        pooled_channels=16 * f)

    def smallest_size(self) -> tuple[int, int, int]:
        """32^3, or 64 x 32 x 32 with instance norm (which needs more than one bottleneck voxel)."""
        return (64, 32, 32) if self.norm == "instance" else (32, 32, 32)

    def check_size(self, *size: int) -> None:
        """Raise unless a (D, H, W) volume fits: every side a multiple of 32 (SwinUNETR downsamples 5 times),
        and with instance norm more than one bottleneck voxel (it cannot normalise a single one)."""
        self._check_dims(size)
        if any(side <= 0 or side % 32 for side in size):
            raise InvalidInputError(
                f"volume spatial size {tuple(size)} must be multiples of 32 (SwinUNETR downsamples 5 times)")
        if self.norm == "instance" and all(side == 32 for side in size):
            raise InvalidInputError(
                f"volume {tuple(size)} leaves a single bottleneck voxel, which instance norm cannot "
                "normalise; use at least 64 voxels along one axis (or a model with norm='group')")

    def load_weights(self, source: str, part: str = "encoder") -> LoadReport:
        """Load a MONAI SwinUNETR checkpoint: ``"encoder"`` fills the Swin ViT (MONAI's self-supervised
        ``model_swinvit.pt``), ``"full"`` the Swin ViT, conv encoders and decoders (a whole SwinUNETR or a
        Universal-Model checkpoint). The report is logged and returned; see :mod:`medmoe.weights.monai_swin`.
        """
        return load_swinunetr(self.net, source, part).log()

    def forward(self, volume: Tensor) -> Pyramid:
        """The pyramid of a (B, C, D, H, W) volume (size not checked here: MoME checks it with its advice)."""
        net = self.net
        hidden = net.swinViT(volume, net.normalize)
        enc0 = net.encoder1(volume)
        enc1 = net.encoder2(hidden[0])
        enc2 = net.encoder3(hidden[1])
        enc3 = net.encoder4(hidden[2])
        bottleneck = net.encoder10(hidden[4])
        dec3 = net.decoder5(bottleneck, hidden[3])
        dec2 = net.decoder4(dec3, enc3)
        dec1 = net.decoder3(dec2, enc2)
        dec0 = net.decoder2(dec1, enc1)
        out = net.decoder1(dec0, enc0)
        return Pyramid([out, dec0, dec1, dec2, dec3], bottleneck)
