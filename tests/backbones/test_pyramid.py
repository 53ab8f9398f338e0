"""The shared feature-pyramid contract (medmoe.backbones): one level order, finest first, for both tasks."""

import pytest
import torch

from medmoe.backbones import FeatureInfo, Pyramid
from medmoe.errors import InvalidInputError


def test_feature_info_levels_and_validation():
    info = FeatureInfo(channels=(16, 32, 64), reductions=(4, 8, 16), pooled_channels=64)
    assert len(info) == 3 and info.level(4) == 0 and info.level(16) == 2
    with pytest.raises(InvalidInputError, match="no level at reduction 2"):
        info.level(2)
    with pytest.raises(InvalidInputError, match="finest level first"):
        FeatureInfo(channels=(64, 32), reductions=(16, 8), pooled_channels=64)
    with pytest.raises(InvalidInputError, match="one reduction per level"):
        FeatureInfo(channels=(16, 32), reductions=(4,), pooled_channels=32)


@pytest.mark.parametrize("shape", [(2, 8, 3, 5), (2, 8, 3, 5, 7)])
def test_pooled_is_the_spatial_mean_of_the_bottleneck(shape):
    bottleneck = torch.randn(*shape)
    pyramid = Pyramid([torch.zeros(2, 4, 6, 10)], bottleneck)
    assert torch.equal(pyramid.pooled, bottleneck.mean(dim=tuple(range(2, len(shape)))))
