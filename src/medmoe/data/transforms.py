"""Image -> model tensor: aspect-preserving resize + pad, grey -> 3 channels, augmentation, uint8.

All randomness comes from an explicit ``torch.Generator`` so that a sample's augmentation is a function of
its seed alone (see ``ImageReportDataset``: the seed is derived from (seed, epoch, index)).

Samples stay uint8 until the batch is on the device: a quarter of the bytes through worker queues, pinned
memory and the host-to-device copy. The model normalises there (:func:`normalize_uint8_batch`, called by
``SwinPyramid.forward`` for uint8 input); ``normalized=True`` gives the normalised float32 tensor instead.

    >>> transform = ImageTransform(image_size=224, train=True)
    >>> x = transform(image, generator=torch.Generator().manual_seed(0))   # (3, 224, 224) uint8
    >>> image, _ = read_image(path, target_size=transform.decode_size)     # decode no larger than needed
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medmoe.errors import InvalidInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Short / long side of the narrowest image whose training crops decode_size still keeps above image_size.
_NARROWEST_ASPECT = 9 / 16


def to_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(H, W)`` or ``(H, W, 3)`` array in [0, 1] -> float32 ``(C, H, W)`` tensor (C = 1 or 3).

    A tensor that is already ``(C, H, W)`` (C in 1, 3) is returned as float32.
    """
    if isinstance(image, torch.Tensor):
        if image.ndim == 3 and image.shape[0] in (1, 3):
            return image.float()
        raise InvalidInputError(f"expected a (C, H, W) tensor with C in (1, 3), got shape {tuple(image.shape)}")
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(0)
    if array.ndim == 3 and array.shape[2] in (1, 3):
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    raise InvalidInputError(f"expected an (H, W) or (H, W, 3) image, got shape {array.shape}")


def resize_pad(image: torch.Tensor, size: int, pad_value: float = 0.0) -> torch.Tensor:
    """Resize ``(C, H, W)`` so that its longer side is ``size`` (keeping the aspect ratio), then pad the
    shorter side symmetrically to a ``(C, size, size)`` square. Downsampling is antialiased."""
    if size < 1:
        raise InvalidInputError(f"size must be >= 1, got {size}")
    _, h, w = image.shape
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) != (h, w):
        image = F.interpolate(
            image.unsqueeze(0), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=scale < 1
        ).squeeze(0)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    return F.pad(image, (left, size - new_w - left, top, size - new_h - top), value=pad_value)


def to_three_channels(image: torch.Tensor) -> torch.Tensor:
    """``(1, H, W)`` -> ``(3, H, W)`` by repetition; ``(3, H, W)`` unchanged."""
    return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image


def normalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` on a ``(3, H, W)`` tensor (or a ``(B, 3, H, W)`` batch)."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return (image - m) / torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Float ``(C, H, W)`` in [0, 1] -> uint8 in 0..255, rounded to nearest (values outside are clipped).

    Raises:
        InvalidInputError: the image has NaN or infinite values (a cast would silently turn them into 0).
    """
    if not torch.isfinite(image).all():
        raise InvalidInputError("image has non-finite pixel values")
    return image.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)


def normalize_uint8_batch(
    images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD
) -> torch.Tensor:
    """Normalise a batch of uint8 images where it lies (on the accelerator for a training batch).

    Computes ``(images / 255 - mean) / std`` per channel in float32, exactly what :class:`ImageTransform`
    with ``normalized=True`` does to the unrounded image.

    Args:
        images: uint8 ``(B, C, H, W)`` with C = ``len(mean)``.
        mean, std: per-channel statistics of [0, 1] images (ImageNet by default).

    Returns:
        float32 ``(B, C, H, W)`` on the device of ``images``.

    Raises:
        InvalidInputError: ``images`` is not uint8 or not ``(B, C, H, W)`` with C matching ``mean``.
    """
    if images.dtype != torch.uint8:
        raise InvalidInputError(f"expected uint8 images, got {images.dtype}")
    if images.dim() != 4 or images.shape[1] != len(mean):
        raise InvalidInputError(f"expected a (B, {len(mean)}, H, W) batch, got shape {tuple(images.shape)}")
    return normalize(images.float() / 255.0, mean, std)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator | None
) -> tuple[int, int, int, int]:
    """A crop ``(top, left, h, w)`` covering ``scale`` of the area with aspect ratio in ``ratio``;
    the whole image when ten draws do not fit.

    Every draw is a fraction of the image, so one generator state crops the same part of the picture
    whatever resolution it was decoded at (readers may return reduced images, see ``decode_size``).
    """
    for _ in range(10):
        target = height * width * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), generator))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(height - h, int(_uniform(0, height - h + 1, generator)))
            left = min(width - w, int(_uniform(0, width - w + 1, generator)))
            return top, left, h, w
    return 0, 0, height, width


def rotate(image: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate ``(C, H, W)`` about its centre by ``degrees`` (counter-clockwise), bilinear, zeros outside."""
    if degrees == 0:
        return image
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    _, h, w = image.shape
    # affine_grid works in normalised coordinates; the aspect terms keep the rotation rigid on non-squares.
    matrix = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=image.dtype).unsqueeze(0)
    grid = F.affine_grid(matrix, [1, image.shape[0], h, w], align_corners=False)
    out = F.grid_sample(image.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(0)


@dataclass
class ImageTransform:
    """Reader output -> uint8 ``(3, S, S)`` tensor (or normalised float32), with optional augmentation.

    Training augmentation is deliberately mild: a random resized crop of ``scale`` of the area, a small
    rotation and brightness/contrast jitter. No horizontal flip by default: reports say "left" and "right"
    and a flipped chest X-ray no longer matches its report (``hflip`` turns it on for data without sides).
    Augmentation computes in float32 at the output size; the result is rounded to uint8 last.

    Args:
        image_size: output side S.
        train: apply augmentation (needs a generator for reproducibility).
        normalized: return float32 normalised with ``mean`` / ``std`` (the format before uint8 batches)
            instead of uint8 in 0..255 that the model normalises on its device.
        mean, std: normalisation per channel (ImageNet by default). The model normalises uint8 input
            with ImageNet statistics, so other values need ``normalized=True``.
        scale, ratio: random resized crop area fraction and aspect-ratio range.
        max_rotation: rotation drawn uniformly in ``[-max_rotation, max_rotation]`` degrees.
        brightness, contrast: additive brightness shift in ``[-b, b]``, contrast factor in ``[1-c, 1+c]``.
        hflip: probability of a horizontal flip (0 disables).
        gamma: intensity gamma drawn log-uniformly in ``[low, high]`` (a different display window of the same
            scan; None disables).
        blur: probability of a Gaussian blur of sigma uniform in ``(0, blur_sigma]`` output pixels.
        noise: probability of additive Gaussian noise of std uniform in ``(0, noise_std]``.
        grey: probability that a colour image is turned grey (its three channels set to their mean).
        window: probability of an intensity window: values in ``[low, high]`` (low uniform in [0, 0.25], high in
            [0.75, 1]) stretched to [0, 1], the rest clipped (another window of the same scan).
        frame: probability that the image is shown smaller (its side 55-95 %) at a random place on a black
            screen, as screenshots and exported views of ultrasound, MRI and CT often are.
        annotate: probability of burned-in annotations: one to four short strings of letters and digits and
            a measurement line, in light grey, at random places (as scanners print them onto the pixels).
        tint: probability that a grey image gets a colour cast (a gain in [0.75, 1.25] per channel), as
            displays, captures and colour look-up tables give; together with ``grey`` colour stops being a
            cue by itself.

    :func:`augmentation` gives the named profiles: ``mild`` (the defaults) and ``domain`` (for real scans).
    """

    image_size: int = 224
    train: bool = False
    normalized: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    max_rotation: float = 10.0
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: float = 0.0
    gamma: tuple[float, float] | None = None
    blur: float = 0.0
    blur_sigma: float = 1.0
    noise: float = 0.0
    noise_std: float = 0.03
    grey: float = 0.0
    window: float = 0.0
    frame: float = 0.0
    annotate: float = 0.0
    tint: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise InvalidInputError(f"image_size must be >= 1, got {self.image_size}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise InvalidInputError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise InvalidInputError(f"ratio must satisfy 0 < low <= high, got {self.ratio}")
        for name in ("hflip", "blur", "noise", "grey", "window", "frame", "annotate", "tint"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidInputError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        if self.gamma is not None and not 0 < self.gamma[0] <= self.gamma[1]:
            raise InvalidInputError(f"gamma must satisfy 0 < low <= high, got {self.gamma}")
        if not self.normalized and (tuple(self.mean), tuple(self.std)) != (IMAGENET_MEAN, IMAGENET_STD):
            raise InvalidInputError(
                f"mean {self.mean} / std {self.std} only apply with normalized=True: uint8 output is "
                "normalised by the model with ImageNet statistics"
            )

    @property
    def decode_size(self) -> int:
        """The longer side a reader should decode at (``read_image(..., target_size=decode_size)``).

        ``ceil(image_size / sqrt(scale[0] * 9 / 16))``, 334 for S = 224: the smallest training crop
        (``scale[0]`` of the area, crop aspect within ``ratio``) of an image as narrow as 9:16 still has at
        least S pixels along its longer side, so crops are downsampled, never upsampled. Evaluation uses
        the same size: one rule for every split, and margin for the final antialiased resize.

        Measured against full-resolution decoding (mean absolute difference of the uint8 outputs, S = 224,
        3000x2500 JPEG / PNG and 2000x2000 DICOM radiograph-like images, training averaged over 10 seeds):
        evaluation 0.2-0.3/255, training 0.55-0.65/255 (worst seed 1.85/255); decoding at 2 x S instead
        gives 0.07-0.27/255 and 0.13-0.5/255 but costs a 3000 px JPEG libjpeg's 1/4 scale instead of 1/8.
        """
        return math.ceil(self.image_size / math.sqrt(self.scale[0] * _NARROWEST_ASPECT))

    def __call__(self, image: np.ndarray | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Args:
            image: ``(H, W)`` or ``(H, W, 3)`` array in [0, 1] (a reader's output) or a ``(C, H, W)`` tensor.
            generator: source of the augmentation randomness (training only).

        Returns:
            ``(3, image_size, image_size)``: uint8 in 0..255, or float32 normalised with ``mean`` / ``std``
            when ``normalized``.

        Raises:
            InvalidInputError: bad shape, or NaN / infinite pixels (uint8 output).
        """
        x = to_tensor(image)
        if self.train:
            x = self._augment_intensity(self._augment_geometry(x, generator), generator)
        else:
            x = resize_pad(x, self.image_size)
        if self.normalized:
            return normalize(to_three_channels(x), self.mean, self.std)
        return to_three_channels(to_uint8(x))

    def _augment_geometry(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        _, h, w = x.shape
        top, left, ch, cw = random_resized_crop_box(h, w, self.scale, self.ratio, generator)
        x = resize_pad(x[:, top : top + ch, left : left + cw], self.image_size)
        angle = _uniform(-self.max_rotation, self.max_rotation, generator) if self.max_rotation > 0 else 0.0
        x = rotate(x, angle)
        if self.hflip > 0 and float(torch.rand((), generator=generator)) < self.hflip:
            x = x.flip(-1)
        if self.frame > 0 and _uniform(0, 1, generator) < self.frame:
            x = on_black_screen(x, _uniform(0.55, 0.95, generator), _uniform(0, 1, generator), _uniform(0, 1, generator))
        return x

    def _augment_intensity(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.contrast > 0:
            factor = _uniform(1 - self.contrast, 1 + self.contrast, generator)
            mean = x.mean()
            x = (x - mean) * factor + mean
        if self.brightness > 0:
            x = x + _uniform(-self.brightness, self.brightness, generator)
        x = x.clamp(0.0, 1.0)
        if self.gamma is not None:  # each extra step draws only when it is on: "mild" keeps its random stream
            x = x.pow(math.exp(_uniform(math.log(self.gamma[0]), math.log(self.gamma[1]), generator)))
        if self.window > 0 and _uniform(0, 1, generator) < self.window:
            low, high = _uniform(0.0, 0.25, generator), _uniform(0.75, 1.0, generator)
            x = ((x - low) / (high - low)).clamp(0.0, 1.0)
        if self.blur > 0 and _uniform(0, 1, generator) < self.blur:
            x = gaussian_blur(x, _uniform(0.1, self.blur_sigma, generator))
        if self.noise > 0 and _uniform(0, 1, generator) < self.noise:
            std = _uniform(0.0, self.noise_std, generator)
            x = (x + std * torch.randn(x.shape, generator=generator)).clamp(0.0, 1.0)
        if self.annotate > 0 and _uniform(0, 1, generator) < self.annotate:
            x = torch.maximum(x, burned_in_annotations(x.shape[-1], generator) * _uniform(0.6, 1.0, generator))
        if self.grey > 0 and x.shape[0] == 3 and _uniform(0, 1, generator) < self.grey:
            x = x.mean(dim=0, keepdim=True).expand_as(x).contiguous()
        elif self.tint > 0 and _is_grey(x) and _uniform(0, 1, generator) < self.tint:
            gains = torch.tensor([_uniform(0.75, 1.25, generator) for _ in range(3)]).view(3, 1, 1)
            x = (x.expand(3, -1, -1) * gains).clamp(0.0, 1.0)
        return x


def _is_grey(image: torch.Tensor) -> bool:
    return image.shape[0] == 1 or bool((image[0] == image[1]).all() and (image[1] == image[2]).all())


def on_black_screen(image: torch.Tensor, side: float, x_pos: float, y_pos: float) -> torch.Tensor:
    """``(C, S, S)`` shrunk to ``side`` of its size and placed on a black ``(C, S, S)`` screen; ``x_pos`` /
    ``y_pos`` in [0, 1] place it from the left / top edge to the right / bottom one."""
    c, size, _ = image.shape
    inner = max(1, round(size * side))
    small = F.interpolate(image.unsqueeze(0), size=(inner, inner), mode="bilinear", align_corners=False,
                          antialias=True).squeeze(0)
    top, left = round((size - inner) * y_pos), round((size - inner) * x_pos)
    screen = image.new_zeros((c, size, size))
    screen[:, top : top + inner, left : left + inner] = small
    return screen


_ANNOTATION_CHARACTERS = "ABCDEFGHIJKLMNOPRSTUVWXYZ0123456789 .:/-"


@functools.lru_cache(maxsize=16)
def _annotation_font(size: int):
    """PIL's default font at ``size`` px, loaded once per size and loader process (not once per sample)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def burned_in_annotations(size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A ``(1, size, size)`` mask in [0, 1] of one to four short random strings and one measurement line at
    random places, the way scanners burn labels, scales and calipers into the pixels."""
    from PIL import Image, ImageDraw

    def draw_int(low: int, high: int) -> int:  # uniform in [low, high)
        return int(torch.randint(low, max(low + 1, high), (), generator=generator))

    canvas = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(canvas)
    font = _annotation_font(max(6, size // draw_int(14, 24)))
    for _ in range(draw_int(1, 5)):
        text = "".join(_ANNOTATION_CHARACTERS[draw_int(0, len(_ANNOTATION_CHARACTERS))] for _ in range(draw_int(2, 12)))
        pen.text((draw_int(0, size * 3 // 4), draw_int(0, size * 7 // 8)), text, fill=255, font=font)
    x0, y0 = draw_int(0, size), draw_int(0, size)
    pen.line((x0, y0, draw_int(0, size), draw_int(0, size)), fill=255, width=1)
    pen.line((x0 - 2, y0, x0 + 2, y0), fill=255, width=1)  # a caliper's end mark
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).unsqueeze(0)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(C, H, W)`` blurred by a separable Gaussian of ``sigma`` pixels (reflect padding, radius 3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    kernel = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=image.dtype) / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = image.shape[0]
    x = F.pad(image.unsqueeze(0), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x.squeeze(0)


AUGMENTATIONS = ("mild", "domain")


def augmentation(profile: str, image_size: int, *, train: bool) -> ImageTransform:
    """The training transform of a named augmentation profile.

    ``mild``: a crop of 80-100 % of the area, rotation up to 10 degrees, brightness / contrast 10 % (generated
    data). ``domain``: for real scans from many scanners and displays: crops of 50-100 %, brightness 15 %,
    contrast 30 %, gamma 0.7-1.5 (another window of the same scan), blur (a third of images, sigma up to 1 px),
    noise (a third, std up to 0.03), colour images turned grey one time in five and grey ones given a colour
    cast one time in five, and display artefacts: an intensity window, the image shown smaller on a black
    screen, burned-in annotations (each three times in ten).

    Raises:
        InvalidInputError: an unknown profile.
    """
    if profile == "mild":
        return ImageTransform(image_size=image_size, train=train)
    if profile == "domain":
        return ImageTransform(image_size=image_size, train=train, scale=(0.5, 1.0), brightness=0.15, contrast=0.3,
                              gamma=(0.7, 1.5), blur=1 / 3, noise=1 / 3, grey=0.2,
                              window=0.3, frame=0.3, annotate=0.3, tint=0.2)
    raise InvalidInputError(f"augmentation {profile!r}: expected one of {AUGMENTATIONS}")
