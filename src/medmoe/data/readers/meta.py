"""What a reader knows about an image besides its pixels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageMeta:
    """Metadata returned with every image by :func:`medmoe.data.readers.read_image`.

    Attributes:
        path: the file the image came from (for in-memory data, the name it was given).
        format: ``"dicom"``, ``"nifti"``, ``"png"``, ``"jpeg"``, ``"tiff"`` or ``"bmp"``.
        modality: medmoe's modality name (one of ``MODALITIES``) when the file says which, else None.
        source_modality: the modality as the file spells it (DICOM code such as ``"CR"``), or None.
        body_part: lower-case body part when known (DICOM BodyPartExamined), else None.
        spacing: pixel spacing in mm as (row, col) of the stored pixels when known and positive, else None
            (an image read with ``target_size`` has coarser pixels: ``original_shape`` over its own shape).
        photometric: the photometric interpretation of the stored pixels (``"MONOCHROME1"``,
            ``"RGB"``, ``"PALETTE COLOR"``, ...; for Pillow images the PIL mode).
        original_shape: shape of the stored data (frames/slices included), e.g. ``(30, 240, 320, 3)``.
        frame: index of the frame or axial slice returned, None for single images and projections.
        description: a short human-readable description built from the file's tags, or None.
    """

    path: str
    format: str
    modality: str | None = None
    source_modality: str | None = None
    body_part: str | None = None
    spacing: tuple[float, float] | None = None
    photometric: str | None = None
    original_shape: tuple[int, ...] = ()
    frame: int | None = None
    description: str | None = None
