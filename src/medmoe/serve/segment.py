"""The Segment tab: a CT upload (NIfTI, or a zipped DICOM series) -> MoME masks of the prompted classes, an
axial slice viewer with one colour per class, and the label map to download.

The upload is checked before it is decoded (type from its first bytes, size, voxel count from its header;
a zip unpacked flat within the size limit, :mod:`medmoe.serve.uploads`), then segmented with
:func:`medmoe.seg.predict.predict_volume` and written with :func:`~medmoe.seg.predict.save_prediction`
(label value i = i-th class, on the CT's own grid, with a JSON summary). The viewer keeps the CT windowed to
uint8 and the label map, both turned to RAS, and draws one axial slice at a time in radiological view
(patient's right on the left, anterior up).
"""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medmoe.errors import InvalidInputError
from medmoe.serve.pictures import resize, to_rgb
from medmoe.serve.uploads import (
    UploadLimits,
    check_ct_size,
    display_name,
    extract_dicom_zip,
    volume_kind,
)

DISPLAY = 512
ALPHA = 0.45
HU_DISPLAY = (-175.0, 250.0)
MAX_PROMPTS = 254


def class_colours(count: int) -> np.ndarray:
    """(count, 3) uint8 colours, the overlay figures' palette (tab10, tab20 beyond 10 classes)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20" if count > 10 else "tab10"]
    return (np.asarray([cmap(k % 20)[:3] for k in range(count)]) * 255).round().astype(np.uint8).reshape(-1, 3)


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder / flip an (X, Y, Z) array to RAS; returns ``(array, spacing (3,) in mm along its axes)``."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(array, ornt)
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)[np.argsort(ornt[:, 0])]
    return np.ascontiguousarray(out), spacing


def gather_prompts(selected: Sequence[str] | None, free_text: str | None) -> list[str]:
    """The ticked classes followed by the comma-separated extra ones.

    Raises:
        InvalidInputError: no class at all, or more than the label map holds.
    """
    prompts = [str(s) for s in (selected or []) if str(s).strip()]
    prompts += [" ".join(p.split()) for p in re.split(r"[,\n;]", str(free_text or "")) if p.strip()]
    if not prompts:
        raise InvalidInputError("choose at least one class to segment (tick it, or type its name)")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidInputError(f"{len(prompts)} classes: at most {MAX_PROMPTS} in one label map")
    return prompts


def _edges(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2-D mask with a 4-neighbour outside it (what ``mask & ~binary_erosion(mask, border_value=1)``
    gives, about ten times faster on a 512 x 512 slice: it runs for every class on every slider move)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


@dataclass
class SegView:
    """A segmented CT as the viewer draws it.

    Attributes:
        ct: (X, Y, Z) uint8, the CT in RAS windowed to :data:`HU_DISPLAY`.
        labels: (X, Y, Z) uint8 label map in RAS (0 background, i = class i; later classes win overlaps).
        spacing: (3,) mm along the RAS axes.
        names: the K class names.
        volumes_ml: the K mask volumes.
        mask_file: the label map written on the CT's own grid (.nii.gz).
        summary_file: the JSON summary (classes, volumes, mean HU, settings).
        seconds: time of the prediction.
    """

    ct: np.ndarray
    labels: np.ndarray
    spacing: np.ndarray
    names: list[str]
    volumes_ml: list[float]
    mask_file: Path
    summary_file: Path
    seconds: float = 0.0

    @property
    def depth(self) -> int:
        return int(self.ct.shape[2])

    @property
    def colours(self) -> np.ndarray:
        return class_colours(len(self.names))

    def best_slice(self) -> int:
        """The axial slice with the most labelled voxels, the one nearest the middle among equals (the middle
        one when nothing was found)."""
        counts = (self.labels > 0).sum(axis=(0, 1))
        best = np.flatnonzero(counts == counts.max())
        return int(best[np.argmin(np.abs(best - (self.depth - 1) / 2))])

    def render(self, z: int, size: int = DISPLAY) -> np.ndarray:
        """Axial slice ``z`` (clipped to the volume) as an (H, W, 3) uint8 picture with the masks: filled at
        :data:`ALPHA`, outlined in full colour; longer side ``size`` pixels at the voxels' true aspect."""
        z = int(np.clip(int(z), 0, self.depth - 1))
        ct = self.ct[::-1, ::-1, z].T  # rows: anterior to posterior; columns: patient's right to left
        labels = self.labels[::-1, ::-1, z].T
        height_mm, width_mm = ct.shape[0] * self.spacing[1], ct.shape[1] * self.spacing[0]
        scale = size / max(height_mm, width_mm)
        w, h = max(1, round(width_mm * scale)), max(1, round(height_mm * scale))
        picture = resize(to_rgb(ct), w, h).astype(np.float32)
        labels = resize(np.repeat(labels[..., None], 3, axis=-1), w, h, smooth=False)[..., 0]
        for k, colour in enumerate(self.colours, start=1):
            mask = labels == k
            if not mask.any():
                continue
            picture[mask] = (1 - ALPHA) * picture[mask] + ALPHA * colour
            # the edge: pixels with a 4-neighbour outside the mask
            picture[_edges(mask)] = colour
        return np.clip(picture + 0.5, 0, 255).astype(np.uint8)

    def legend_html(self) -> str:
        """One coloured swatch per class with its volume (HTML, names escaped)."""
        items = []
        for name, colour, ml in zip(self.names, self.colours, self.volumes_ml):
            hexa = "#{:02x}{:02x}{:02x}".format(*(int(c) for c in colour))
            amount = f"{ml:.1f} ml" if ml > 0 else "not found"
            items.append(f'<span class="medmoe-legend-item" style="margin-right:1.2em;white-space:nowrap">'
                         f'<span style="display:inline-block;width:0.9em;height:0.9em;background:{hexa};'
                         f'vertical-align:middle;margin-right:0.3em"></span>{html.escape(name)}: {amount}</span>')
        return f'<div id="seg-legend-items">{"".join(items)}</div>'

    def message(self, name: str) -> str:
        found = sum(1 for ml in self.volumes_ml if ml > 0)
        return (f"{name}: {found} of {len(self.names)} class(es) found in {self.seconds:.1f} s; "
                f"{self.depth} axial slices; label map {self.mask_file.name}")


def _stem(name: str) -> str:
    name = re.sub(r"\.(nii\.gz|nii|zip)$", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "ct"


def segment_upload(model: nn.Module, path: Path, prompts: Sequence[str], out_dir: Path, limits: UploadLimits, *,
                   device: torch.device | str | None = None, fast: bool = False) -> SegView:
    """Segment an uploaded CT and write its label map and summary into ``out_dir``.

    Args:
        model: a MoME model.
        path: the uploaded file: ``.nii`` / ``.nii.gz``, or a ``.zip`` of one DICOM series.
        prompts: class names (synonyms and small typos resolve; unknown names are refused with suggestions).
        out_dir: where ``<name>_mask.nii.gz`` and ``<name>_summary.json`` go (created).
        limits: upload limits (size, voxels, zip members).
        device: where the model runs (None: where it is).
        fast: low-resolution prediction (``medmoe seg predict --fast``).

    Raises:
        InvalidInputError: a wrong type, a too large CT, an unknown class, a non-CT.
        CorruptFileError: an unreadable file.
    """
    from medmoe.data.volumes import read_ct
    from medmoe.seg.predict import predict_volume, save_prediction

    name = display_name(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    series = out_dir / "series"
    source = extract_dicom_zip(path, series, limits) if volume_kind(path) == "zip" else path
    try:
        check_ct_size(source, limits, name=name)
        volume = read_ct(source)
        volume.path = name  # messages and the summary name the upload, not the server's scratch path
        if volume.array.size > limits.max_ct_voxels:
            raise InvalidInputError(f"{name}: {volume.array.size:,} voxels is larger than this page segments "
                                    f"({limits.max_ct_voxels:,}; `medmoe serve --max-ct-voxels`)")
        prediction = predict_volume(model, volume, list(prompts), device=device, fast=fast, progress=False)
    finally:
        shutil.rmtree(series, ignore_errors=True)
    stem = _stem(name)
    mask_file, summary_file = out_dir / f"{stem}_mask.nii.gz", out_dir / f"{stem}_summary.json"
    save_prediction(prediction, mask_file, summary=summary_file)
    lo, hi = HU_DISPLAY
    ct = np.clip((volume.array - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ct, spacing = to_ras(ct, volume.affine)
    labels, _ = to_ras(prediction.label_map().astype(np.uint8), volume.affine)
    return SegView(ct=ct, labels=labels, spacing=spacing, names=prediction.names,
                   volumes_ml=prediction.volumes_ml(), mask_file=mask_file, summary_file=summary_file,
                   seconds=float(prediction.meta.get("total_seconds", 0.0)))
