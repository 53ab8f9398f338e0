import pytest
import torch
from testkit.align import REPORTS, tiny_model


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 64, 64, generator=g), list(REPORTS), torch.tensor([0, 1, 2, 3])
