"""Resize/pad, channels, normalisation and seeded augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmoe.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, resize_pad, rotate, to_tensor
from medmoe.errors import InvalidInputError

pytestmark = pytest.mark.timeout(60)


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


def test_resize_pad_keeps_aspect_and_centres():
    image = torch.ones(1, 100, 50)  # tall: 2:1
    out = resize_pad(image, 64)
    assert out.shape == (1, 64, 64)
    columns = out[0].sum(0) > 0
    assert columns.sum() == 32  # width halves with the aspect ratio kept
    assert columns[16:48].all() and not columns[:16].any() and not columns[48:].any()
    assert torch.allclose(out[0, :, 16:48], torch.ones(64, 32), atol=1e-5)


def test_eval_transform_grey_to_normalised_three_channels():
    image = np.full((30, 60), 0.5, np.float32)
    out = ImageTransform(image_size=32)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    restored = _unnormalize(out)
    assert torch.allclose(restored[:, 16, 16], torch.full((3,), 0.5), atol=1e-5)
    assert torch.allclose(restored[0], restored[1], atol=1e-6) and torch.allclose(restored[0], restored[2], atol=1e-6)
    # padding rows (the image is 2:1 wide) are black before normalisation
    assert torch.allclose(restored[:, 0, 16], torch.zeros(3), atol=1e-5)


def test_rgb_input_keeps_its_colours():
    image = np.zeros((20, 20, 3), np.float32)
    image[..., 1] = 1.0
    restored = _unnormalize(ImageTransform(image_size=16)(image))
    assert torch.allclose(restored[:, 8, 8], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)


def test_augmentation_is_deterministic_given_a_generator():
    image = np.random.default_rng(0).random((80, 100)).astype(np.float32)
    t = ImageTransform(image_size=48, train=True)
    a = t(image, generator=torch.Generator().manual_seed(3))
    b = t(image, generator=torch.Generator().manual_seed(3))
    c = t(image, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == (3, 48, 48)


def test_no_horizontal_flip_by_default():
    # left half bright: after any mild crop/rotation/jitter the left half must stay brighter
    image = np.zeros((64, 64), np.float32)
    image[:, :32] = 1.0
    t = ImageTransform(image_size=32, train=True)
    for seed in range(20):
        out = _unnormalize(t(image, generator=torch.Generator().manual_seed(seed)))[0]
        assert out[:, :12].mean() > out[:, 20:].mean() + 0.3
    flipping = ImageTransform(image_size=32, train=True, hflip=1.0)
    out = _unnormalize(flipping(image, generator=torch.Generator().manual_seed(0)))[0]
    assert out[:, 20:].mean() > out[:, :12].mean() + 0.3


def test_rotation_is_rigid_and_small_by_default():
    image = torch.zeros(1, 33, 33)
    image[0, 16, 26] = 1.0  # a point right of centre
    out = rotate(image, 90.0)
    y, x = np.unravel_index(out[0].argmax().item(), (33, 33))
    assert abs(x - 16) <= 1 and abs(abs(y - 16) - 10) <= 1
    assert ImageTransform().max_rotation <= 15


@pytest.mark.parametrize(
    "kwargs", [{"image_size": 0}, {"scale": (0.0, 1.0)}, {"scale": (0.9, 0.8)}, {"hflip": 2.0}]
)
def test_invalid_transform_arguments(kwargs):
    with pytest.raises(InvalidInputError):
        ImageTransform(**kwargs)


def test_to_tensor_rejects_bad_shapes():
    with pytest.raises(InvalidInputError, match="shape"):
        to_tensor(np.zeros((4, 4, 4), np.float32))
