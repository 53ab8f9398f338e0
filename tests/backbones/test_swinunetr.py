"""The 3-D SwinUNETR backbone (``backbone.kind = "swinunetr"``): it is MONAI's SwinUNETR (parity with MONAI's own forward), its pyramid contract and
its size check."""

import pytest
import torch
from monai.networks.nets import SwinUNETR

from medmoe.backbones import Pyramid
from medmoe.backbones.swinunetr import SwinUNETRFeatures, norm_name
from medmoe.errors import InvalidInputError
from medmoe.seg.config import VolumeBackboneConfig

TINY = {"depths": (1, 1, 1, 1), "num_heads": (3, 6, 12, 24), "window_size": 4}


def _features(norm: str) -> SwinUNETRFeatures:
    return SwinUNETRFeatures(VolumeBackboneConfig(feature_size=12, norm=norm, **TINY), in_channels=1)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("norm", "side"), [("instance", 64), ("group", 32)])
def test_features_plus_monai_output_block_equal_monai_forward(norm, side):
    """medmoe's extractor with MONAI's weights copied in, followed by MONAI's output block, is MONAI's network."""
    torch.manual_seed(0)
    reference = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, norm_name=norm_name(norm, 12),
                          spatial_dims=3, **TINY).eval()
    torch.manual_seed(1)
    features = _features(norm).eval()
    own = {k: v for k, v in reference.state_dict().items() if not k.startswith("out.")}
    assert set(own) == set(features.net.state_dict())  # every MONAI weight but the output block has a home
    volume = torch.randn(2, 1, side, side, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(volume)
        assert not torch.allclose(reference.out(features(volume).features[0]), expected, atol=1e-3)
        features.net.load_state_dict(own, strict=True)
        pyramid = features(volume)
        torch.testing.assert_close(reference.out(pyramid.features[0]), expected, atol=1e-5, rtol=0)


def test_pyramid_follows_its_feature_info():
    torch.manual_seed(0)
    net = _features("group").eval()
    info = net.feature_info
    assert info.channels == (12, 12, 24, 48, 96) and info.reductions == (1, 2, 4, 8, 16)
    assert info.pooled_channels == 192 and info.level(2) == 1
    size = (32, 64, 96)
    with torch.no_grad():
        pyramid = net(torch.zeros(1, 1, *size))
    assert isinstance(pyramid, Pyramid) and len(pyramid.features) == len(info)
    for feat, channels, reduction in zip(pyramid.features, info.channels, info.reductions):
        assert feat.shape == (1, channels, *(s // reduction for s in size))
    assert pyramid.bottleneck.shape == (1, 192, 1, 2, 3)
    assert pyramid.pooled.shape == (1, 192)
    torch.testing.assert_close(pyramid.pooled, pyramid.bottleneck.mean(dim=(2, 3, 4)))


@pytest.mark.parametrize(
    ("norm", "size", "message"),
    [
        ("group", (32, 40, 32), r"\(32, 40, 32\) must be multiples of 32"),
        ("group", (0, 32, 32), "must be multiples of 32"),
        ("instance", (32, 32, 32), "single bottleneck voxel"),
        ("group", (32, 32), "takes 3-D inputs"),
    ],
)
def test_size_check_names_the_size_and_the_rule(norm, size, message):
    net = _features(norm)
    with pytest.raises(InvalidInputError, match=message):
        net.check_size(*size)


def test_sizes_that_fit_pass():
    _features("group").check_size(32, 32, 32)
    _features("instance").check_size(32, 64, 32)
