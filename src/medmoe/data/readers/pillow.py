"""PNG / JPEG / TIFF / BMP through Pillow, 8- and 16-bit."""

from __future__ import annotations

import contextlib
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from medmoe.data.readers.intensity import range_sample, reduction_factor, robust_rescale
from medmoe.data.readers.meta import ImageMeta
from medmoe.data.readers.safety import require_finite
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.limits import MAX_PIXELS_ENV, DecodeLimitError, check_budget, limit

_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff", "BMP": "bmp"}


def read_pillow(
    source: str | BinaryIO,
    name: str,
    *,
    frame: int | None = None,
    target_size: int | None = None,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Read an ordinary image file.

    8-bit data is divided by 255 and 16-bit grey data by 65535, so values keep their meaning across files
    of one dataset; float TIFFs are rescaled to their percentile range. RGB images whose three channels are
    identical (grey X-rays saved as colour JPEGs) come back as grey ``(H, W)``.

    With ``target_size``, JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling, Pillow's draft
    mode) and every format is then box-reduced by an integer factor by Pillow (8-bit data in uint8, deeper
    data in float32). Pixels stay in their stored dtype (uint8, uint16, int32) until the one float32 copy
    that is returned; no float64 copy is made.

    The stored width x height x bands (of the one frame decoded) is checked against ``max_pixels`` from the
    header, before decoding; Pillow's own decompression-bomb limit is lifted to match when it is lower.

    Args:
        source: a path or a binary file object.
        name: the name used in messages and metadata.
        frame: page of a multi-page file (TIFF).
        target_size: the longer side the caller needs; the image comes back with a longer side of at least
            ``target_size`` (and under ``2 * target_size``), or at full size when that is smaller.
        max_pixels: limit on width x height x bands (default ``MEDMOE_MAX_PIXELS``, see :mod:`medmoe.limits`).

    Returns:
        ``(image, meta)``: float32 ``(H, W)`` or ``(H, W, 3)`` in [0, 1] and :class:`ImageMeta`.

    Raises:
        CorruptFileError: Pillow cannot identify or fully decode the file.
        DecodeLimitError: the header claims more values than ``max_pixels``.
        InvalidInputError: ``frame`` out of range for a multi-page file.
    """
    allowed = limit(MAX_PIXELS_ENV, max_pixels)
    try:
        with warnings.catch_warnings(), _pillow_bomb_limit(allowed):
            # Pillow warns about the damage it tolerates (corrupt EXIF...); the size budget below stops bombs.
            warnings.simplefilter("ignore")
            with Image.open(source) as im:
                fmt = _FORMATS.get(im.format or "", (im.format or "image").lower())
                n_frames = int(getattr(im, "n_frames", 1) or 1)
                if frame is not None:
                    if not 0 <= frame < n_frames:
                        raise InvalidInputError(f"{name}: frame {frame} out of range; the file has {n_frames}")
                    im.seek(frame)
                size = im.size  # the stored size: draft mode shrinks im.size
                bands = 3 if im.mode in ("P", "PA") else len(im.getbands())  # a palette decodes to RGB
                check_budget(name, f"{size[0]} x {size[1]} x {bands} band(s)", size[0] * size[1] * bands,
                             MAX_PIXELS_ENV, allowed)
                if target_size is not None and im.format == "JPEG":
                    _draft(im, target_size)
                im.load()
                mode = im.mode
                if fmt == "jpeg":
                    im = ImageOps.exif_transpose(im)
                array = _to_unit(im, reduction_factor(im.height, im.width, target_size))
    except (InvalidInputError, CorruptFileError):
        raise
    except Image.DecompressionBombError as err:
        raise DecodeLimitError(f"{name}: {err} (see MEDMOE_MAX_PIXELS in docs/security.md)") from err
    except Exception as err:  # UnidentifiedImageError, truncated data, zlib errors ...
        raise CorruptFileError(f"{name}: not a readable image file ({type(err).__name__}: {err})") from err
    require_finite(array, f"{name}: image")
    meta = ImageMeta(
        path=name,
        format=fmt,
        photometric=mode,
        original_shape=(size[1], size[0]) + ((3,) if array.ndim == 3 else ()),
        frame=frame if n_frames > 1 else None,
    )
    return np.ascontiguousarray(array, dtype=np.float32), meta


@contextlib.contextmanager
def _pillow_bomb_limit(allowed: int):
    """Raise Pillow's ``MAX_IMAGE_PIXELS`` (it errors at twice that) to medmoe's limit while a file opens,
    when medmoe's is the higher; never lowers it."""
    previous = Image.MAX_IMAGE_PIXELS
    if previous is not None and allowed > previous:
        Image.MAX_IMAGE_PIXELS = allowed
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _draft(im: Image.Image, target_size: int) -> None:
    """Let libjpeg decode at the smallest 1/2, 1/4 or 1/8 scale whose longer side is still >= target_size.

    Pillow picks the largest scale not above ``min(W // w, H // h)`` for a requested ``(w, h)``; asking for
    the image shrunk to ``target_size`` along its longer side makes that bound ``longer // target_size``.
    """
    width, height = im.size
    longer = max(width, height)
    if longer // target_size >= 2:
        im.draft(im.mode, (max(1, width * target_size // longer), max(1, height * target_size // longer)))


def _floats(im: Image.Image, factor: int) -> np.ndarray:
    """Pixel values as float32: Pillow's "F" conversion, box-reduced by ``factor`` when it is above 1."""
    values = im.convert("F")
    return np.asarray(values.reduce(factor) if factor > 1 else values)


def _to_unit(im: Image.Image, factor: int = 1) -> np.ndarray:
    """float32 in [0, 1]: 8-bit / 255, 16-bit / 65535, other ranges by percentiles; one float32 copy at most."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _scaled(_floats(im, factor), 1.0 / 65535.0)
    if mode == "I":
        stored = np.asarray(im)
        # Pillow opens some 16-bit PNGs as 32-bit "I"; keep their 16-bit scale when the values fit.
        if stored.size and stored.min() >= 0 and stored.max() <= 65535:
            return _scaled(_floats(im, factor), 1.0 / 65535.0)
        return robust_rescale(_floats(im, factor), sample=range_sample(stored, factor))
    if mode == "F":
        return robust_rescale(_floats(im, factor), sample=range_sample(np.asarray(im), factor))
    if mode in ("1", "L", "LA", "La"):
        return _scaled(np.asarray(_reduced(im.convert("L"), factor)), 1.0 / 255.0)
    rgb = np.asarray(_reduced(im.convert("RGB"), factor))  # uint8: grey is detected before any float copy
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        rgb = rgb[..., 0]
    return _scaled(rgb, 1.0 / 255.0)


def _scaled(values: np.ndarray, scale: float) -> np.ndarray:
    """``values * scale`` as float32, converting once and scaling in place."""
    out = values.astype(np.float32)
    out *= np.float32(scale)
    return out


def _reduced(im: Image.Image, factor: int) -> Image.Image:
    # 8-bit L / RGB: Pillow's own box reduce, rounding to uint8 (at most 0.5/255 before the final resize).
    return im.reduce(factor) if factor > 1 else im
