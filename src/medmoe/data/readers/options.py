"""What to read from an image file, and the decode limits: the keyword arguments of
:func:`~medmoe.data.readers.read_image` and :func:`~medmoe.data.readers.decode_image`."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from medmoe.errors import InvalidInputError

PROJECTIONS = ("mip", "mean")


@dataclass(frozen=True)
class ReadOptions:
    """The options of one image read; the readers take them whole.

    Attributes:
        frame: frame of a multi-frame DICOM or page of a multi-page TIFF; default the middle DICOM frame.
        axial_slice: axial slice of a NIfTI volume; default the middle one.
        projection: ``"mip"`` or ``"mean"`` along the axial axis of a NIfTI volume instead of a slice.
        window: (center, width) overriding the VOI of grayscale DICOM and NIfTI (e.g. ``(40, 400)`` HU).
        target_size: the longer side (pixels) the caller will resize to, or None for the full image. The
            image then comes back with its longer side at least ``target_size`` and under
            ``2 * target_size`` (reduced by an integer factor, aspect ratio kept up to rounding), or at full
            size when the stored image is not larger. Never smaller than needed: the caller still resizes.
            NIfTI slices always come back at full size.
        max_pixels: limit on the values the file holds (rows x columns x channels x frames; for NIfTI the
            slice read), default ``MEDMOE_MAX_PIXELS``; checked from the header before decoding.
        max_voxels: limit on the voxels of a NIfTI volume, default ``MEDMOE_MAX_VOXELS``.
        max_decoded_bytes: limit on the bytes of the decoded array of a DICOM or Pillow image (columns x rows
            x channels x bytes per sample, all frames of a DICOM), default ``MEDMOE_MAX_DECODED_BYTES``;
            checked from the header before decoding.
    """

    frame: int | None = None
    axial_slice: int | None = None
    projection: str | None = None
    window: tuple[float, float] | None = None
    target_size: int | None = None
    max_pixels: int | None = None
    max_voxels: int | None = None
    max_decoded_bytes: int | None = None

    def check(self, fmt: str, name: str) -> ReadOptions:
        """These options, checked against the format of file ``name``, with ``target_size`` as an int.

        Raises:
            InvalidInputError: ``target_size`` is not a positive integer, ``frame`` is given for NIfTI,
                ``axial_slice`` / ``projection`` for another format, ``projection`` is not one of
                :data:`PROJECTIONS`, or both ``axial_slice`` and ``projection`` are given.
        """
        size = self.target_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1):
            raise InvalidInputError(f"{name}: target_size must be a positive integer or None, got {size!r}")
        if fmt == "nifti" and self.frame is not None:
            raise InvalidInputError(f"{name}: is NIfTI; use axial_slice=, not frame=")
        if fmt != "nifti" and (self.axial_slice is not None or self.projection is not None):
            raise InvalidInputError(f"{name}: axial_slice / projection apply to NIfTI volumes, this file is {fmt}")
        if self.projection is not None and self.projection not in PROJECTIONS:
            raise InvalidInputError(f"{name}: projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.projection is not None and self.axial_slice is not None:
            raise InvalidInputError(f"{name}: give either axial_slice or projection, not both")
        return self if size is None else replace(self, target_size=int(size))
