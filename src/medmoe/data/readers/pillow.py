"""PNG / JPEG / TIFF / BMP through Pillow, 8- and 16-bit."""

from __future__ import annotations

import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from medmoe.data.readers.intensity import range_sample, reduction_factor, robust_rescale
from medmoe.data.readers.meta import ImageMeta
from medmoe.errors import CorruptFileError, InvalidInputError

_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff", "BMP": "bmp"}


def read_pillow(
    source: str | BinaryIO, name: str, *, frame: int | None = None, target_size: int | None = None
) -> tuple[np.ndarray, ImageMeta]:
    """Read an ordinary image file.

    8-bit data is divided by 255 and 16-bit grey data by 65535, so values keep their meaning across files
    of one dataset; float TIFFs are rescaled to their percentile range. RGB images whose three channels are
    identical (grey X-rays saved as colour JPEGs) come back as grey ``(H, W)``.

    With ``target_size``, JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling, Pillow's draft
    mode) and every format is then box-reduced by an integer factor by Pillow (8-bit data in uint8, deeper
    data in float32), so no full-size float64 copy is made.

    Args:
        source: a path or a binary file object.
        name: the name used in messages and metadata.
        frame: page of a multi-page file (TIFF).
        target_size: the longer side the caller needs; the image comes back with a longer side of at least
            ``target_size`` (and under ``2 * target_size``), or at full size when that is smaller.

    Returns:
        ``(image, meta)``: float32 ``(H, W)`` or ``(H, W, 3)`` in [0, 1] and :class:`ImageMeta`.

    Raises:
        CorruptFileError: Pillow cannot identify or fully decode the file.
        InvalidInputError: ``frame`` out of range for a multi-page file.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns about the damage it tolerates (corrupt EXIF...); bombs must stop, not warn.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                fmt = _FORMATS.get(im.format or "", (im.format or "image").lower())
                n_frames = int(getattr(im, "n_frames", 1) or 1)
                if frame is not None:
                    if not 0 <= frame < n_frames:
                        raise InvalidInputError(f"{name}: frame {frame} out of range; the file has {n_frames}")
                    im.seek(frame)
                size = im.size  # the stored size: draft mode shrinks im.size
                if target_size is not None and im.format == "JPEG":
                    _draft(im, target_size)
                im.load()
                mode = im.mode
                if fmt == "jpeg":
                    im = ImageOps.exif_transpose(im)
                array = _to_unit(im, reduction_factor(im.height, im.width, target_size))
    except (InvalidInputError, CorruptFileError):
        raise
    except Exception as err:  # UnidentifiedImageError, truncated data, zlib errors, decompression bombs ...
        raise CorruptFileError(f"{name}: not a readable image file ({type(err).__name__}: {err})") from err
    if not np.all(np.isfinite(array)):
        raise CorruptFileError(f"{name}: image contains NaN or infinite values")
    meta = ImageMeta(
        path=name,
        format=fmt,
        photometric=mode,
        original_shape=(size[1], size[0]) + ((3,) if array.ndim == 3 else ()),
        frame=frame if n_frames > 1 else None,
    )
    return np.ascontiguousarray(array, dtype=np.float32), meta


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
    """Pixel values as floats: float64 at full size as always; reduced, float32 from Pillow's "F" box reduce."""
    if factor == 1:
        return np.asarray(im, dtype=np.float64)
    return np.asarray(im.convert("F").reduce(factor))


def _to_unit(im: Image.Image, factor: int = 1) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _floats(im, factor) / 65535.0
    if mode == "I":
        values = _floats(im, factor)
        # Pillow opens some 16-bit PNGs as 32-bit "I"; keep their 16-bit scale when the values fit.
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return values / 65535.0
        return robust_rescale(values, sample=range_sample(np.asarray(im), factor))
    if mode == "F":
        return robust_rescale(_floats(im, factor), sample=range_sample(np.asarray(im), factor))
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(_reduced(im.convert("L"), factor), dtype=np.float64) / 255.0
    rgb = np.asarray(_reduced(im.convert("RGB"), factor), dtype=np.float64) / 255.0
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return rgb[..., 0]
    return rgb


def _reduced(im: Image.Image, factor: int) -> Image.Image:
    # 8-bit L / RGB: Pillow's own box reduce, rounding to uint8 (at most 0.5/255 before the final resize).
    return im.reduce(factor) if factor > 1 else im
