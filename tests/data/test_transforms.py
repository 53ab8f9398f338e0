"""Resize/pad, channels, normalisation and seeded augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medmoe.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    normalize_uint8_batch,
    random_resized_crop_box,
    resize_pad,
    rotate,
    to_tensor,
    to_uint8,
)
from medmoe.errors import InvalidInputError

pytestmark = pytest.mark.timeout(60)


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    """A transform's output back in [0, 1]: uint8 / 255, or float normalised with ImageNet mean / std."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
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
    out = ImageTransform(image_size=32, normalized=True)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    restored = _unnormalize(out)
    assert torch.allclose(restored[:, 16, 16], torch.full((3,), 0.5), atol=1e-5)
    assert torch.allclose(restored[0], restored[1], atol=1e-6) and torch.allclose(restored[0], restored[2], atol=1e-6)
    # padding rows (the image is 2:1 wide) are black before normalisation
    assert torch.allclose(restored[:, 0, 16], torch.zeros(3), atol=1e-5)


def test_rgb_input_keeps_its_colours():
    image = np.zeros((20, 20, 3), np.float32)
    image[..., 1] = 1.0
    restored = _unnormalize(ImageTransform(image_size=16, normalized=True)(image))
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


# --- uint8 output, normalised on the device ---------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
def test_uint8_output_is_the_float_output_rounded(train):
    image = np.random.default_rng(1).random((70, 90)).astype(np.float32)
    u = ImageTransform(image_size=32, train=train)(image, generator=torch.Generator().manual_seed(2))
    f = ImageTransform(image_size=32, train=train, normalized=True)(image, generator=torch.Generator().manual_seed(2))
    assert u.dtype == torch.uint8 and u.shape == (3, 32, 32)
    assert torch.equal(u[0], u[1]) and torch.equal(u[1], u[2])
    # the same picture: at most half a grey level apart before normalisation
    assert float((u.float() / 255 - _unnormalize(f)).abs().max()) <= 0.5 / 255 + 1e-6
    # and normalising the uint8 batch on the "device" gives the float output within that rounding
    batch = normalize_uint8_batch(u[None])
    assert batch.dtype == torch.float32 and batch.shape == (1, 3, 32, 32)
    assert float((batch[0] - f).abs().max()) <= 0.5 / 255 / min(IMAGENET_STD) + 1e-5


def test_normalize_uint8_batch_formula_and_checks():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = normalize_uint8_batch(images)
    expected = (torch.tensor([0.0, 0.2, 1.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[1, :, 1, 0], expected, atol=1e-6)
    grey = normalize_uint8_batch(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8), mean=(0.5,), std=(0.5,))
    assert torch.allclose(grey, torch.ones(1, 1, 2, 2))
    with pytest.raises(InvalidInputError, match="uint8"):
        normalize_uint8_batch(images.float())
    with pytest.raises(InvalidInputError, match="shape"):
        normalize_uint8_batch(images[0])


def test_uint8_output_rejects_custom_statistics_and_non_finite_pixels():
    with pytest.raises(InvalidInputError, match="normalized=True"):
        ImageTransform(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    ImageTransform(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), normalized=True)  # fine when it normalises
    image = np.full((8, 8), 0.5, np.float32)
    image[2, 3] = np.nan
    with pytest.raises(InvalidInputError, match="non-finite"):
        ImageTransform(image_size=8)(image)
    assert torch.equal(to_uint8(torch.tensor([[[-0.2, 0.0, 0.5, 1.0, 1.3]]])),
                       torch.tensor([[[0, 0, 128, 255, 255]]], dtype=torch.uint8))


def test_random_crop_covers_the_same_part_of_the_picture_at_any_resolution():
    for seed in range(20):
        small = random_resized_crop_box(300, 360, (0.8, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(seed))
        large = random_resized_crop_box(1500, 1800, (0.8, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(seed))
        assert all(abs(5 * a - b) <= 5 for a, b in zip(small, large, strict=True)), (seed, small, large)


def test_decode_size_leaves_the_smallest_crop_enough_pixels():
    assert ImageTransform(image_size=224).decode_size == 334
    assert ImageTransform(image_size=224, train=True).decode_size == 334  # one rule for every split
    for size, scale in ((224, (0.8, 1.0)), (96, (0.5, 1.0)), (64, (0.9, 1.0))):
        t = ImageTransform(image_size=size, train=True, scale=scale)
        # a 16:9 image decoded with its longer side at decode_size: every crop keeps >= image_size pixels
        width, height = t.decode_size, math.ceil(t.decode_size * 9 / 16)
        for seed in range(200):
            _, _, h, w = random_resized_crop_box(height, width, t.scale, t.ratio, torch.Generator().manual_seed(seed))
            assert max(h, w) >= size - 1, (size, scale, seed, h, w)


def test_the_domain_profile_varies_intensity_blur_noise_and_colour_and_mild_keeps_its_stream():
    from medmoe.data.transforms import augmentation, gaussian_blur

    rng = np.random.default_rng(0)
    colour = rng.random((80, 80, 3)).astype(np.float32)
    mild = augmentation("mild", 48, train=True)
    assert mild == ImageTransform(image_size=48, train=True)  # the default profile is the plain transform
    domain = augmentation("domain", 48, train=True)
    outs = [domain(colour, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    grey = [bool((o[0] == o[1]).all() and (o[1] == o[2]).all()) for o in outs]
    assert 0 < sum(grey) < len(outs)  # some colour images turned grey, not all
    means = torch.stack([o.float().mean() for o in outs])
    assert means.std() > 3  # gamma / contrast / brightness move the intensity
    again = domain(colour, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, outs[3])  # a function of the seed alone
    edge = torch.zeros(1, 16, 16)
    edge[:, :, 8:] = 1.0
    blurred = gaussian_blur(edge, 1.0)
    assert blurred.shape == edge.shape and 0 < float(blurred[0, 8, 7]) < 0.5 < float(blurred[0, 8, 8]) < 1
    assert torch.allclose(blurred.sum(), edge.sum(), atol=1e-4)
    with pytest.raises(InvalidInputError, match="augmentation 'heavy'"):
        augmentation("heavy", 48, train=True)


def test_display_artefacts_frame_annotations_window_and_tint():
    from medmoe.data.transforms import burned_in_annotations, on_black_screen

    ones = torch.ones(1, 40, 40)
    framed = on_black_screen(ones, 0.5, 1.0, 0.0)  # top right corner
    assert framed[0, :20, 20:].min() == 1 and framed[0, 20:, :].max() == 0 and framed[0, :, :20].max() == 0
    marks = burned_in_annotations(64, torch.Generator().manual_seed(1))
    assert marks.shape == (1, 64, 64) and 0 < float((marks > 0.5).float().mean()) < 0.3
    assert torch.equal(marks, burned_in_annotations(64, torch.Generator().manual_seed(1)))

    grey = np.full((48, 48), 0.5, dtype=np.float32)
    always = {name: ImageTransform(image_size=48, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), max_rotation=0.0,
                                   brightness=0.0, contrast=0.0, **{name: 1.0})
              for name in ("frame", "annotate", "window", "tint")}
    g = torch.Generator().manual_seed(0)
    out = {name: t(grey, generator=g).float() for name, t in always.items()}
    assert (out["frame"] == 0).float().mean() > 0.09  # a black screen around the image
    assert out["annotate"].max() > 150 and float((out["annotate"] == 128).float().mean()) > 0.7
    assert out["window"].std() == 0 and out["window"].mean() != 128  # 0.5 moved by the window, uniformly
    assert not torch.equal(out["tint"][0], out["tint"][1])  # a grey image now has a colour cast
    colour = np.random.default_rng(0).random((48, 48, 3))
    tinted, plain = (ImageTransform(image_size=48, train=True, tint=p)(colour, generator=torch.Generator().manual_seed(0))
                     for p in (1.0, 0.0))
    assert torch.equal(tinted, plain)  # colour images keep their colours (no cast on top)
