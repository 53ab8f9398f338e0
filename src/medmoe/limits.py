"""Size limits on what medmoe decodes from files it is given, checked from headers before decoding.

A few bytes can claim gigabytes: a PNG of one colour, a deflated DICOM, a gzipped NIfTI header, a sparse
tar member. Every reader compares what a file's header says it holds with these budgets and refuses it
with a :class:`DecodeLimitError` naming the file, the size and the limit *before* allocating it.

============================= ======================== =============================================
environment variable          default                  counts
============================= ======================== =============================================
``MEDMOE_MAX_DECODED_BYTES``  268,435,456 (256 MiB)    bytes of a 2-D image's decoded array: rows x
                                                       columns x channels x bytes per sample (x frames)
``MEDMOE_MAX_PIXELS``         268,435,456 (2**28)      values of a 2-D image: rows x columns x
                                                       channels x frames held by the file
``MEDMOE_MAX_VOXELS``         1,073,741,824 (2**30)    voxels of a volume (a 512 x 512 x 2000 CT is
                                                       524 million)
``MEDMOE_MAX_MEMBER_BYTES``   536,870,912 (512 MiB)    bytes of one member of a tar shard
============================= ======================== =============================================

The decoded-bytes budget is the one that bounds memory: reading an image at the budget peaks at a small
multiple of it (measured in docs/security.md). The pixel count is checked too (with the defaults the byte
budget binds first: every value takes at least a byte).

Raise a limit for one process with the environment variable (``MEDMOE_MAX_PIXELS=1e9 medmoe ...``) or for
one call with the reader's argument (``read_image(path, max_decoded_bytes=..., max_pixels=...)``, ``read_ct(path,
max_voxels=...)``, ``iter_tar_samples(url, max_member_bytes=...)``). See ``docs/security.md``.
"""

from __future__ import annotations

import os

from medmoe.errors import CorruptFileError, InvalidInputError

MAX_DECODED_BYTES_ENV = "MEDMOE_MAX_DECODED_BYTES"
MAX_PIXELS_ENV = "MEDMOE_MAX_PIXELS"
MAX_VOXELS_ENV = "MEDMOE_MAX_VOXELS"
MAX_MEMBER_BYTES_ENV = "MEDMOE_MAX_MEMBER_BYTES"

_DEFAULTS = {MAX_DECODED_BYTES_ENV: 2**28, MAX_PIXELS_ENV: 2**28, MAX_VOXELS_ENV: 2**30,
             MAX_MEMBER_BYTES_ENV: 2**29}


class DecodeLimitError(CorruptFileError):
    """A file claims more pixels, voxels or bytes than the limit allows; nothing was decoded."""


def limit(env: str, value: int | float | None = None) -> int:
    """The limit in force: ``value`` when given, else the environment variable ``env``, else its default.

    Raises:
        InvalidInputError: ``value`` or the variable is not a positive number (``1e9`` and ``2**30``-style
            integers are accepted as written in the environment: digits or a float literal).
    """
    where = env
    if value is None:
        text = os.environ.get(env, "").strip()
        if not text:
            return _DEFAULTS[env]
        try:
            value = float(text)
        except ValueError:
            raise InvalidInputError(f"{env}={text!r}: expected a positive number") from None
    else:
        where = f"{env.removeprefix('MEDMOE_').lower()} argument"
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 1 or value != value:
        raise InvalidInputError(f"{where}: expected a positive number, got {value!r}")
    return int(min(value, 2**62))


def check_budget(name: str, what: str, count: int, env: str, value: int | float | None = None, *,
                 unit: str = "values") -> None:
    """Raise :class:`DecodeLimitError` when ``count`` exceeds the limit ``env`` (or ``value``).

    Args:
        name: the file, for the message.
        what: what was counted, e.g. ``"8 frames x 8192 x 8192 x 1 channel(s)"``.
        count: the product.
        env: which limit (one of the ``*_ENV`` names).
        value: an explicit limit for this call (overrides the environment).
        unit: what ``count`` counts, for the message.
    """
    allowed = limit(env, value)
    if count > allowed:
        raise DecodeLimitError(
            f"{name}: holds {what} = {count:,} {unit}, over the limit of {allowed:,} "
            f"(raise it with {env}=N or the reader's {env.removeprefix('MEDMOE_').lower()} argument; "
            "see docs/security.md)"
        )
