"""The 3-D SwinUNETR backbone (``backbone.kind = "swinunetr"``): MONAI's SwinUNETR as a feature pyramid, the
five decoder outputs (finest first) over the encoder bottleneck."""

from __future__ import annotations

from monai.networks.nets import SwinUNETR
from torch import Tensor, nn

from medmoe.backbones.pyramid import FeatureInfo, Pyramid, PyramidBackbone
from medmoe.errors import InvalidInputError
from medmoe.weights.monai_swin import load_swinunetr
from medmoe.weights.report import LoadReport

#: the normalisations of the MONAI conv blocks (``backbone.norm``)
NORMS = ("instance", "group", "batch")


def norm_name(norm: str, feature_size: int) -> str | tuple:
    """MONAI's ``norm_name`` of ``backbone.norm`` for a network whose widths are multiples of ``feature_size``
    (group norm: 4 groups when ``feature_size`` is a multiple of 4, else 3, else 1)."""
    if norm not in NORMS:
        raise InvalidInputError(f"backbone.norm must be one of {NORMS}, got {norm!r}")
    if norm == "group":
        return ("group", {"num_groups": next(g for g in (4, 3, 1) if feature_size % g == 0)})
    return norm


class VolumePyramid(PyramidBackbone):
    """Base of the MONAI 3-D backbones: a volume fits when every side is a multiple of the deepest stride
    and, with instance norm (which cannot normalise a single voxel), the bottleneck has more than one voxel.

    Args:
        norm: ``backbone.norm``.
        stride: the deepest stride.
        downsampling: what the size message says of the network's downsampling.
        group_advice: what the single-voxel message suggests besides a larger volume.
    """

    spatial_dims = 3

    def __init__(self, norm: str, stride: int, downsampling: str, group_advice: str) -> None:
        super().__init__()
        self.norm = norm
        self._stride = stride
        self._downsampling = downsampling
        self._group_advice = group_advice

    def smallest_size(self) -> tuple[int, int, int]:
        """The deepest stride per side, doubled along one axis with instance norm (more than one bottleneck
        voxel)."""
        r = self._stride
        return (2 * r, r, r) if self.norm == "instance" else (r, r, r)

    def check_size(self, *size: int) -> None:
        """Raise unless every side of a (D, H, W) volume is a multiple of the deepest stride, and with instance
        norm the bottleneck has more than one voxel."""
        self._check_dims(size)
        r = self._stride
        if any(side <= 0 or side % r for side in size):
            raise InvalidInputError(
                f"volume spatial size {tuple(size)} must be multiples of {r} ({self._downsampling})")
        if self.norm == "instance" and all(side == r for side in size):
            raise InvalidInputError(
                f"volume {tuple(size)} leaves a single bottleneck voxel, which instance norm cannot "
                f"normalise; use at least {2 * r} voxels along one axis ({self._group_advice})")


class SwinUNETRFeatures(VolumePyramid):
    """MONAI's SwinUNETR encoder and decoder, returning the decoder pyramid instead of logits.

    The MONAI network is kept whole (``self.net``) so its weights load from MONAI checkpoints; only its
    output block is replaced by an identity because MoME's heads take its place: level 0 of the pyramid is
    what MONAI's output block would read (tests/seg/test_backbone.py checks that against MONAI's forward).

    Args:
        config: MoME's :class:`~medmoe.seg.config.VolumeBackboneConfig` with ``feature_size`` (F, a multiple of 12), ``depths``, ``num_heads``, ``window_size``,
            ``use_checkpoint``, ``drop_path_rate`` (passed to MONAI), ``norm`` (``instance``, ``group`` or
            ``batch`` for the conv blocks) and the weight files ``init_weights`` / ``encoder_weights``.
        in_channels: image channels.
        load_pretrained: load the weight files the config names (False: random, as before loading a saved
            model).

    Shapes:
        volume: (B, C, D, H, W), sides multiples of 32 (:meth:`check_size`) -> :class:`~medmoe.backbones.Pyramid`
        with features (B, F, /1), (B, F, /2), (B, 2F, /4), (B, 4F, /8), (B, 8F, /16) (F = feature_size; the
        decoder outputs, finest first) and bottleneck (B, 16F, /32), the encoder10 output.

    Example:
        >>> feats = SwinUNETRFeatures(VolumeBackboneConfig(feature_size=12))(torch.zeros(1, 1, 64, 64, 64))
        >>> [tuple(f.shape[1:]) for f in feats.features][-1]
        (96, 4, 4, 4)
    """

    config_fields = ("feature_size", "depths", "num_heads", "window_size", "norm", "use_checkpoint",
                     "drop_path_rate", "init_weights", "encoder_weights")
    size_limits = {"feature_size": (1, 1024), "depths": (0, 48), "num_heads": (1, 256),
                   "window_size": (1, 64)}
    #: MONAI SwinUNETR checkpoints: a whole network (``init_weights``) and the self-supervised Swin ViT
    #: (``encoder_weights``), see :mod:`medmoe.weights.monai_swin`
    weight_fields = ("init_weights", "encoder_weights")
    # every decoder output is a level and the bottleneck feeds the decoder: all parameters take part
    may_leave_parameters_unused = False

    def __init__(self, config, *, in_channels: int = 1, load_pretrained: bool = True) -> None:
        super().__init__(config.norm, 32, "SwinUNETR downsamples 5 times", "or a model with norm='group'")
        f = config.feature_size
        if f <= 0 or f % 12:
            raise InvalidInputError(f"backbone.feature_size must be a positive multiple of 12, got {f}")
        if len(config.depths) != 4 or len(config.num_heads) != 4:
            raise InvalidInputError(
                f"backbone.depths and backbone.num_heads need 4 stages, got {config.depths} and {config.num_heads}")
        self.net = SwinUNETR(in_channels=in_channels, out_channels=1, feature_size=f,
                             depths=tuple(config.depths), num_heads=tuple(config.num_heads),
                             window_size=config.window_size, norm_name=norm_name(config.norm, f),
                             use_checkpoint=config.use_checkpoint, dropout_path_rate=config.drop_path_rate,
                             spatial_dims=3)
        self.net.out = nn.Identity()
        self.feature_info = FeatureInfo(channels=(f, f, 2 * f, 4 * f, 8 * f), reductions=(1, 2, 4, 8, 16),
                                        pooled_channels=16 * f)
        #: what the weight files filled, logged (empty when none or not ``load_pretrained``)
        self.weight_reports: list[LoadReport] = [
            self.load_weights(source, part) for source, part in ((config.init_weights, "full"),
                                                                 (config.encoder_weights, "encoder"))
            if load_pretrained and source]

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
        return Pyramid([net.decoder1(dec0, enc0), dec0, dec1, dec2, dec3], bottleneck)
