"""PNG / JPEG / TIFF / BMP through Pillow, 8- and 16-bit."""

from __future__ import annotations

import contextlib
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from medmoe.data.readers.intensity import range_sample, reduction_factor, robust_rescale
from medmoe.data.readers.meta import ImageMeta
from medmoe.data.readers.options import ReadOptions
from medmoe.data.readers.safety import require_finite
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.limits import MAX_DECODED_BYTES_ENV, MAX_PIXELS_ENV, DecodeLimitError, check_budget, limit

_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff", "BMP": "bmp"}
# Bytes per pixel of the array a Pillow mode is decoded to here: channels x bytes per sample (a palette
# becomes RGB; Pillow itself holds 3-channel modes in 4 bytes per pixel, see docs/security.md).
_DECODED_BYTES = {"1": 1, "L": 1, "P": 3, "PA": 3, "LA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
                  "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4}
_BLOCK_PIXELS = 2**20  # pixels of an RGB image copied to NumPy at a time


def read_pillow(source: str | BinaryIO, name: str, options: ReadOptions) -> tuple[np.ndarray, ImageMeta]:
    """Read an ordinary image file.

    8-bit data is divided by 255 and 16-bit grey data by 65535, so values keep their meaning across files
    of one dataset; float TIFFs are rescaled to their percentile range. RGB images whose three channels are
    identical (grey X-rays saved as colour JPEGs) come back as grey ``(H, W)``.

    With ``target_size``, JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling, Pillow's draft
    mode) and every format is then box-reduced by an integer factor by Pillow (8-bit data in uint8, deeper
    data in float32). Pixels stay in their stored dtype (uint8, uint16, int32) until the one float32 copy
    that is returned; no float64 copy is made.

    The stored width x height x bands (of the one frame decoded) is checked against ``max_pixels``, and the
    bytes of the decoded array (width x height x channels x bytes per sample) against ``max_decoded_bytes``,
    from the header, before decoding; Pillow's own decompression-bomb limit is lifted to match when it is
    lower. The decoded image is released as soon as its pixels are in a NumPy array: an 8-bit RGB image at
    full size peaks at about 7 bytes per pixel (Pillow's 4 and NumPy's 3), a grey one at about 5.

    Args:
        source: a path or a binary file object.
        name: the name used in messages and metadata.
        options: ``frame`` (page of a multi-page file, TIFF), ``target_size`` (the longer side the caller
            needs; the image comes back with a longer side of at least ``target_size`` and under
            ``2 * target_size``, or at full size when that is smaller), ``max_pixels`` (limit on width x
            height x bands, default ``MEDMOE_MAX_PIXELS``, see :mod:`medmoe.limits`) and ``max_decoded_bytes``
            (limit on the decoded array's bytes, default ``MEDMOE_MAX_DECODED_BYTES``).

    Returns:
        ``(image, meta)``: float32 ``(H, W)`` or ``(H, W, 3)`` in [0, 1] and :class:`ImageMeta`.

    Raises:
        CorruptFileError: Pillow cannot identify or fully decode the file.
        DecodeLimitError: the header claims more values than ``max_pixels``.
        InvalidInputError: ``frame`` out of range for a multi-page file.
    """
    allowed = limit(MAX_PIXELS_ENV, options.max_pixels)
    try:
        with warnings.catch_warnings(), _pillow_bomb_limit(allowed):
            # Pillow warns about the damage it tolerates (corrupt EXIF...); the size budget below stops bombs.
            warnings.simplefilter("ignore")
            stored, scale, facts = _decode(source, name, options, allowed)
        # float32 in [0, 1]: one conversion, scaled as it is made (already float32 when scale is None)
        array = stored if scale is None else np.multiply(stored, np.float32(scale), dtype=np.float32)
        del stored
    except (InvalidInputError, CorruptFileError):
        raise
    except Image.DecompressionBombError as err:
        raise DecodeLimitError(f"{name}: {err} (see MEDMOE_MAX_PIXELS in docs/security.md)") from err
    except Exception as err:  # UnidentifiedImageError, truncated data, zlib errors ...
        raise CorruptFileError(f"{name}: not a readable image file ({type(err).__name__}: {err})") from err
    require_finite(array, f"{name}: image")
    fmt, mode, (width, height), n_frames = facts
    return np.ascontiguousarray(array, dtype=np.float32), ImageMeta(
        path=name,
        format=fmt,
        photometric=mode,
        original_shape=(height, width) + ((3,) if array.ndim == 3 else ()),
        frame=options.frame if n_frames > 1 else None,
    )


def _decode(source: str | BinaryIO, name: str, options: ReadOptions,
            allowed: int) -> tuple[np.ndarray, float | None, tuple[str, str, tuple[int, int], int]]:
    """Open, check and decode the chosen frame: the stored pixels and their scale to [0, 1] (as
    :func:`_stored`), and (format, mode, stored (width, height), frames). The decoded image (and a copy
    turned by its EXIF orientation) is released on return."""
    with Image.open(source) as im:
        fmt = _FORMATS.get(im.format or "", (im.format or "image").lower())
        n_frames = int(getattr(im, "n_frames", 1) or 1)
        if options.frame is not None:
            if not 0 <= options.frame < n_frames:
                raise InvalidInputError(f"{name}: frame {options.frame} out of range; the file has {n_frames}")
            im.seek(options.frame)
        size = im.size  # the stored size: draft mode shrinks im.size
        _check_size(im, name, allowed, options.max_decoded_bytes)
        if options.target_size is not None and im.format == "JPEG":
            _draft(im, options.target_size)
        im.load()
        mode = im.mode
        if fmt == "jpeg":
            im = ImageOps.exif_transpose(im)
        stored, scale = _stored(im, reduction_factor(im.height, im.width, options.target_size))
    return stored, scale, (fmt, mode, size, n_frames)


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


def _check_size(im: Image.Image, name: str, max_pixels: int, max_decoded_bytes: int | None) -> None:
    """Refuse an image whose header claims more values or decoded bytes than the limits."""
    width, height = im.size
    bands = 3 if im.mode in ("P", "PA") else len(im.getbands())  # a palette decodes to RGB
    check_budget(name, f"{width} x {height} x {bands} band(s)", width * height * bands, MAX_PIXELS_ENV, max_pixels)
    per_pixel = _DECODED_BYTES.get(im.mode, 2 if im.mode.startswith("I;16") else 4)
    check_budget(name, f"{width} x {height} pixels x {per_pixel} byte(s) ({im.mode})", width * height * per_pixel,
                 MAX_DECODED_BYTES_ENV, max_decoded_bytes, unit="bytes")


def _floats(im: Image.Image, factor: int) -> np.ndarray:
    """Pixel values as float32: Pillow's "F" conversion, box-reduced by ``factor`` when it is above 1."""
    values = im.convert("F")
    return np.asarray(values.reduce(factor) if factor > 1 else values)


def _stored(im: Image.Image, factor: int = 1) -> tuple[np.ndarray, float | None]:
    """The pixels as a NumPy array and the scale to [0, 1] (None: rescale by percentiles), box-reduced by
    ``factor``: 8-bit grey and RGB stay uint8, 16-bit stays uint16 at full size; other data is float32
    already."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return (_floats(im, factor) if factor > 1 else np.asarray(im)), 1.0 / 65535.0
    if mode in ("I", "F"):
        stored = np.asarray(im)
        # Pillow opens some 16-bit PNGs as 32-bit "I"; keep their 16-bit scale when the values fit.
        if mode == "I" and stored.size and stored.min() >= 0 and stored.max() <= 65535:
            return _floats(im, factor), 1.0 / 65535.0
        return robust_rescale(_floats(im, factor), sample=range_sample(stored, factor)), None
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(_reduced(im if mode == "L" else im.convert("L"), factor)), 1.0 / 255.0
    return _rgb_array(_reduced(im if mode == "RGB" else im.convert("RGB"), factor)), 1.0 / 255.0


def _rgb_array(im: Image.Image) -> np.ndarray:
    """An RGB image as (H, W, 3) uint8, or (H, W) when its three channels are equal (grey X-rays saved as
    colour): copied a block of rows at a time, one channel kept while the rows are grey, so a grey image
    never has a full-size three-channel copy (``np.asarray`` of the whole image makes two)."""
    width, height = im.size
    rows = max(1, _BLOCK_PIXELS // max(1, width))
    grey = np.empty((height, width), np.uint8)
    rgb = None
    for top in range(0, height, rows):
        block = np.asarray(im.crop((0, top, width, min(height, top + rows))))
        if rgb is None and np.array_equal(block[..., 0], block[..., 1]) and np.array_equal(block[..., 1], block[..., 2]):
            grey[top:top + rows] = block[..., 0]
            continue
        if rgb is None:  # the first colour rows: the rows so far were grey
            rgb = np.empty((height, width, 3), np.uint8)
            rgb[:top] = grey[:top, :, None]
            del grey
        rgb[top:top + rows] = block
    return grey if rgb is None else rgb


def _reduced(im: Image.Image, factor: int) -> Image.Image:
    # 8-bit L / RGB: Pillow's own box reduce, rounding to uint8 (at most 0.5/255 before the final resize).
    return im.reduce(factor) if factor > 1 else im
