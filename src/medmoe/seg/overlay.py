"""Overlay figures: CT slices (radiological view) with one contour colour per class.

Predictions are drawn as solid contours, references (when given) dashed. Volumes are reoriented to RAS
first, so the figure reads the same whatever the file's axis order: axial slices with the patient's right
on the viewer's left and anterior up, and one coronal slice with superior up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from medmoe.errors import InvalidInputError  # noqa: E402


def _to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip the last three axes of ``array`` to RAS; returns (array, spacing)."""
    ornt = nib.orientations.io_orientation(affine)
    lead = array.ndim - 3
    full = np.concatenate([np.column_stack([np.arange(lead), np.ones(lead)]), ornt + [lead, 0]]) if lead else ornt
    out = nib.orientations.apply_orientation(array, full)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[np.argsort(ornt[:, 0])]
    return out, spacing


def _pick_slices(masks: np.ndarray, n: int) -> list[int]:
    depth = masks.shape[-1]
    zs = np.nonzero(masks.reshape(-1, depth).any(0))[0] if masks.size else np.array([], int)
    if zs.size == 0:
        return [int(round(q * (depth - 1))) for q in np.linspace(0.25, 0.75, n)]
    return sorted({int(zs[int(round(q * (zs.size - 1)))]) for q in np.linspace(0.15, 0.85, n)})


def save_overlay(image: np.ndarray, affine: np.ndarray, masks: np.ndarray, names: Sequence[str],
                 path: str | os.PathLike, *, reference: np.ndarray | None = None, n_axial: int = 3,
                 hu_window: tuple[float, float] = (-175.0, 250.0), title: str | None = None, dpi: int = 100) -> Path:
    """Write a PNG of CT slices with class contours.

    Args:
        image: (X, Y, Z) CT in HU.
        affine: (4, 4) voxel -> RAS mm of ``image`` (and of the masks).
        masks: (K, X, Y, Z) bool predicted masks.
        names: the K class names (legend).
        path: output PNG.
        reference: (K, X, Y, Z) bool reference masks, drawn dashed.
        n_axial: axial slices (chosen through the masks' extent), plus one coronal slice.
        hu_window: display window.

    Returns:
        The PNG path.
    """
    if image.ndim != 3 or masks.ndim != 4 or masks.shape[1:] != image.shape or masks.shape[0] != len(names):
        raise InvalidInputError(f"image {image.shape} and masks {masks.shape}: expected (X, Y, Z) and (K, X, Y, Z), "
                                f"K = {len(names)}")
    if reference is not None and reference.shape != masks.shape:
        raise InvalidInputError(f"reference {reference.shape} differs from masks {masks.shape}")
    ct, spacing = _to_ras(np.asarray(image, dtype=np.float32), np.asarray(affine))
    pred, _ = _to_ras(np.asarray(masks, dtype=bool), np.asarray(affine))
    ref = _to_ras(np.asarray(reference, dtype=bool), np.asarray(affine))[0] if reference is not None else None
    union = pred | ref if ref is not None else pred
    zs = _pick_slices(union.any(0) if len(union) else union, n_axial)
    occupied = np.nonzero(union.any(axis=(0, 1, 3)))[0] if union.any() else np.array([ct.shape[1] // 2])
    y_cor = int(occupied[len(occupied) // 2])
    colours = plt.get_cmap("tab20" if len(names) > 10 else "tab10")(np.arange(len(names)) % 20)

    panels = [("axial", z) for z in zs] + [("coronal", y_cor)]
    drawn = [(pred, "solid")] + ([(ref, "dashed")] if ref is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4), squeeze=False)
    for ax, (view, index) in zip(axes[0], panels):
        if view == "axial":
            # (x, y) -> rows y (anterior up with origin lower), columns mirrored x (patient right on the left)
            def cut(v, z=index):
                return v[..., ::-1, :, z].swapaxes(-1, -2)
            aspect = spacing[1] / spacing[0]
        else:
            def cut(v, y=index):
                return v[..., ::-1, y, :].swapaxes(-1, -2)
            aspect = spacing[2] / spacing[0]
        ax.imshow(cut(ct), cmap="gray", vmin=hu_window[0], vmax=hu_window[1], origin="lower", aspect=aspect,
                  interpolation="nearest")
        for k in range(len(names)):
            for masks_k, style in drawn:
                plane = cut(masks_k[k]).astype(np.float32)
                if plane.any() and not plane.all():
                    ax.contour(plane, levels=[0.5], colors=[colours[k]], linewidths=1.2, linestyles=style)
        ax.set_title(f"{view} {index}")
        ax.axis("off")
    handles = [Line2D([], [], color=colours[k], label=name) for k, name in enumerate(names)]
    if reference is not None:
        handles += [Line2D([], [], color="k", label="prediction"), Line2D([], [], color="k", ls="--", label="reference")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
