"""PNG / JPEG / TIFF / BMP through Pillow, 8- and 16-bit."""

from __future__ import annotations

import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from medmoe.data.readers.intensity import robust_rescale
from medmoe.data.readers.meta import ImageMeta
from medmoe.errors import CorruptFileError, InvalidInputError

_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff", "BMP": "bmp"}


def read_pillow(source: str | BinaryIO, name: str, *, frame: int | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Read an ordinary image file.

    8-bit data is divided by 255 and 16-bit grey data by 65535, so values keep their meaning across files
    of one dataset; float TIFFs are rescaled to their percentile range. RGB images whose three channels are
    identical (grey X-rays saved as colour JPEGs) come back as grey ``(H, W)``.

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
                im.load()
                mode = im.mode
                size = im.size
                if fmt == "jpeg":
                    im = ImageOps.exif_transpose(im)
                array = _to_unit(im)
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


def _to_unit(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im, dtype=np.float64) / 65535.0
    if mode == "I":
        values = np.asarray(im, dtype=np.float64)
        # Pillow opens some 16-bit PNGs as 32-bit "I"; keep their 16-bit scale when the values fit.
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return values / 65535.0
        return robust_rescale(values)
    if mode == "F":
        return robust_rescale(np.asarray(im, dtype=np.float64))
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return rgb[..., 0]
    return rgb
