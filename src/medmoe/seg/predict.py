"""Whole-CT prediction: a NIfTI file or DICOM series in, one mask per prompt on the native grid out.

Pipeline: read (HU) -> RAS -> resample to the model's training spacing (twice as coarse with ``fast=True``)
-> HU window -> edge-padding of axes thinner than the training window -> MONAI sliding-window inference
with the prompt embeddings passed through as ``text_emb=`` (gaussian blending; windows run on ``device``,
under bf16/fp16 autocast on a GPU, and are blended there in slabs of windows that fit a memory budget; the
stitched volume stays on ``output_device`` so memory is bounded by one volume of K probabilities) -> sigmoid -> padding cropped -> probabilities resampled back to the input
grid (linear, clamped at the edges) -> threshold -> post-processing (largest component for organs, lesions
inside their organ) on the input grid -> per-class statistics (volume, mean HU).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Orientation, ScaleIntensityRange, Spacing
from torch import Tensor, nn

from medmoe.data.volumes import Volume, read_ct, write_nifti
from medmoe.devices import autocast_dtype, resolve_device
from medmoe.errors import InvalidInputError
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.outputs import output_stem
from medmoe.seg.postprocess import postprocess_masks
from medmoe.seg.prompts import (  # noqa: F401  (part of this module's API)
    ALL_CLASSES,
    check_prompts,
    class_file_name,
    model_class_names,
    resolve_prompt_list,
    suggest_classes,
)
from medmoe.seg.resample import resample_to_grid
from medmoe.seg.transforms import HU_WINDOW

logger = logging.getLogger(__name__)

FAST_FACTOR = 2.0
STITCH_BUFFER_BYTES = 2 << 30  # float32 slab of K-class window outputs blended on the GPU before each copy
DEFAULT_OVERLAP = 0.5
FAST_OVERLAP = 0.25


@dataclass
class SegPrediction:
    """Masks of K prompted classes on the input's voxel grid.

    Attributes:
        masks: (K, X, Y, Z) bool, one (post-processed) mask per prompt; may overlap (a tumour lies in its organ).
        affine: (4, 4) voxel -> RAS mm of the input.
        prompts: the K prompts as given.
        classes: the K canonical template classes (None for a free-text prompt outside the template).
        probabilities: (K, X, Y, Z) float32 sigmoid probabilities, when asked for.
        statistics: per class ``voxels``, ``volume_ml``, ``mean_hu`` and ``std_hu`` inside the mask (HU
            None for an empty mask), when the CT intensities were at hand.
        meta: timing, spacing and settings.
    """

    masks: np.ndarray
    affine: np.ndarray
    prompts: list[str]
    classes: list[str | None]
    probabilities: np.ndarray | None = None
    statistics: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def names(self) -> list[str]:
        """The K class names: the canonical class, or the prompt itself for a free-text prompt."""
        return [c or p for c, p in zip(self.classes, self.prompts)]

    def label_map(self) -> np.ndarray:
        """(X, Y, Z) label map: value i where prompt i (1-based) is predicted; later prompts win overlaps."""
        out = np.zeros(self.masks.shape[1:], dtype=np.uint8 if len(self.prompts) < 255 else np.uint16)
        for i, mask in enumerate(self.masks):
            out[mask] = i + 1
        return out

    def volumes_ml(self) -> list[float]:
        """Volume of each class mask in millilitres."""
        return [float(m.sum()) * self.voxel_ml for m in self.masks]

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: per prompt its class, label value, voxel count, volume (ml) and mean/std HU."""
        rows = []
        stats = self.statistics or class_statistics(self.masks, None, self.voxel_ml)
        for i, (prompt, name, stat) in enumerate(zip(self.prompts, self.classes, stats)):
            row = {"prompt": prompt, "class": name, "label_value": i + 1, **stat}
            if self.probabilities is not None:
                row["max_probability"] = round(float(self.probabilities[i].max()), 4)
            rows.append(row)
        return {"classes": rows, "shape": list(self.masks.shape[1:]), "affine": np.round(self.affine, 6).tolist(),
                **self.meta}


def class_statistics(masks: np.ndarray, hu: np.ndarray | None, voxel_ml: float) -> list[dict[str, Any]]:
    """Per class: ``voxels``, ``volume_ml`` and, with the CT at hand, ``mean_hu`` / ``std_hu`` inside the mask.

    Args:
        masks: (K, X, Y, Z) bool.
        hu: (X, Y, Z) CT in Hounsfield units on the same grid, or None.
        voxel_ml: volume of one voxel in millilitres.
    """
    rows = []
    for mask in masks:
        n = int(mask.sum())
        row: dict[str, Any] = {"voxels": n, "volume_ml": round(n * voxel_ml, 3)}
        if hu is not None:
            inside = hu[mask].astype(np.float64)
            row["mean_hu"] = round(float(inside.mean()), 2) if n else None
            row["std_hu"] = round(float(inside.std()), 2) if n else None
        rows.append(row)
    return rows


def _config_tuple(config: Any, names: Sequence[str]) -> tuple | None:
    value = next((v for v in (getattr(config, name, None) for name in names) if v is not None), None)
    return tuple(value) if value is not None else None


def model_geometry(model: nn.Module) -> tuple[tuple[int, ...] | None, tuple[float, ...] | None, tuple[float, float]]:
    """``(roi_size, spacing, hu_window)`` from ``model.config`` (None where the config lacks them)."""
    config = getattr(model, "config", None)
    roi = _config_tuple(config, ("roi_size", "patch_size", "img_size"))
    spacing = _config_tuple(config, ("spacing", "target_spacing"))
    window = _config_tuple(config, ("hu_window",)) or HU_WINDOW
    return roi, spacing, (float(window[0]), float(window[1]))


def _logits_of(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    raise InvalidInputError(f"the model returned {type(output).__name__}; expected logits (B, K, ...) or a dict with 'logits'")


def _model_device(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _same_device(a: torch.device, b: torch.device) -> bool:
    def norm(d: torch.device) -> tuple[str, int]:
        index = d.index if d.index is not None else (torch.cuda.current_device() if d.type == "cuda" else 0)
        return d.type, index

    return norm(a) == norm(b)


def resample_ct(volume: Volume, spacing: Sequence[float]) -> MetaTensor:
    """(1, X', Y', Z') HU image reoriented to RAS and resampled (linear) to ``spacing`` mm, affine in the MetaTensor."""
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))[None],
                       affine=torch.as_tensor(volume.affine, dtype=torch.float64))
    image = Orientation(axcodes="RAS", labels=None)(image)
    return Spacing(pixdim=tuple(float(s) for s in spacing), mode="bilinear")(image)


def preprocess_volume(volume: Volume, spacing: Sequence[float], hu_window: tuple[float, float] = HU_WINDOW) -> MetaTensor:
    """(1, X', Y', Z') windowed [0, 1] image, RAS, at ``spacing`` mm, with its affine in the MetaTensor."""
    image = resample_ct(volume, spacing)
    return ScaleIntensityRange(a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True)(image)


PAD_MODES = ("edge", "constant")


def pad_to_window(image: Tensor, roi_size: Sequence[int], mode: str = "edge") -> tuple[Tensor, tuple[slice, ...] | None]:
    """Pad a (1, X, Y, Z) image to at least ``roi_size`` by repeating its edge voxels (both sides evenly).

    MONAI's sliding window pads with a constant 0 (-175 HU after the window: fat, the same all around),
    which the model never saw as the top or bottom of a body; repeating the edge slices keeps the
    intensities plausible. Measured with the demo model on 42 mm slabs of the TotalSegmentator example
    CT (docs/seg.md), liver Dice rose from 0.21-0.81 (zeros) to 0.73-0.81 (edge) on four slabs, but fell
    from 0.67 to 0.39 on the 40 mm DICOM example of another patient: neither is reliable on a slab much
    thinner than the window.

    Args:
        image: (1, X, Y, Z) preprocessed image.
        roi_size: the window.
        mode: ``"edge"`` (replicate) or ``"constant"`` (nothing done here: MONAI pads with zeros).

    Returns:
        ``(padded, crop)``: ``padded[:, crop]`` (and the probabilities') is the original extent; ``crop`` is
        None when nothing was padded.
    """
    if mode not in PAD_MODES:
        raise InvalidInputError(f"pad_mode {mode!r}: expected one of {PAD_MODES}")
    shape = tuple(int(s) for s in image.shape[1:])
    pads = [max(int(r) - s, 0) for s, r in zip(shape, roi_size)]
    if not any(pads) or mode == "constant":
        return image, None
    before = [p // 2 for p in pads]
    after = [p - b for p, b in zip(pads, before)]
    x = (image.as_tensor() if isinstance(image, MetaTensor) else image)[None].float()
    padded = F.pad(x, (before[2], after[2], before[1], after[1], before[0], after[0]), mode="replicate")[0]
    return padded, tuple(slice(b, b + s) for b, s in zip(before, shape))


def stitch_buffer(image_size: Sequence[int], roi_size: Sequence[int], overlap: float, classes: int,
                  budget_bytes: int) -> tuple[int, int] | None:
    """How MONAI's sliding window can blend windows on their device before copying them out: ``(buffer_steps,
    buffer_dim)``, a slab across the volume's longest axis as many rows of windows thick as fit
    ``budget_bytes`` of K-class float32 outputs; None when one row does not fit.

    Without a buffer every window's (K, *roi) output is copied to the output device as soon as it is
    computed, waiting for the GPU each time, and blended there (on the CPU: about 8 windows per voxel at
    overlap 0.5); with one the GPU blends a slab and the CPU adds each slab once.
    """
    size = [max(int(s), int(r)) for s, r in zip(image_size, roi_size)]
    dim = int(np.argmax(size))
    roi = int(roi_size[dim])
    interval = roi if roi == size[dim] else max(int(roi * (1 - overlap)), 1)  # MONAI's scan interval
    slice_bytes = 4 * classes * int(np.prod(size)) // size[dim]
    rows = 1 + -(-(size[dim] - roi) // interval)
    steps = sum(slice_bytes * min(size[dim], roi + s * interval) <= budget_bytes for s in range(rows))
    return (steps, dim) if steps else None


def sliding_window_probabilities(model: nn.Module, image: Tensor, text_emb: Tensor, roi_size: Sequence[int], *,
                                 overlap: float = 0.5, sw_batch_size: int = 1, device: torch.device | str | None = None,
                                 output_device: torch.device | str = "cpu", mode: str = "gaussian",
                                 progress: bool = False, amp_dtype: torch.dtype | None = None,
                                 buffer_bytes: int = STITCH_BUFFER_BYTES) -> Tensor:
    """Stitched sigmoid probabilities of one preprocessed volume.

    Args:
        model: called as ``model(window, text_emb=text_emb)`` -> (b, K, *roi) logits.
        image: (1, X, Y, Z) or (1, 1, X, Y, Z) windowed volume (kept on its device; windows are copied).
        text_emb: (K, T) prompt embeddings.
        roi_size: window size in voxels.
        device: where windows run (default: the model's device).
        output_device: where the stitched (K, X, Y, Z) volume lives (CPU keeps GPU memory bounded).
        amp_dtype: run the windows under autocast to this dtype (bf16/fp16 on a GPU); logits are
            stitched in fp32.
        buffer_bytes: when windows run on another device than ``output_device``, blend them there in slabs
            of at most this many bytes before copying (:func:`stitch_buffer`).

    Returns:
        (K, X, Y, Z) float32 probabilities on ``output_device``.
    """
    x = image if image.ndim == 5 else image[None]
    x = x.as_tensor() if isinstance(x, MetaTensor) else x
    device = torch.device(device) if device is not None else _model_device(model)
    output_device = torch.device(output_device)
    buffer = (None if _same_device(device, output_device)
              else stitch_buffer(x.shape[2:], roi_size, overlap, text_emb.shape[0], buffer_bytes))

    def predictor(window: Tensor, text_emb: Tensor) -> Tensor:
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(window, text_emb=text_emb)
        return _logits_of(out).float()

    with torch.no_grad():
        logits = sliding_window_inference(
            x.float(), roi_size=tuple(int(r) for r in roi_size), sw_batch_size=sw_batch_size, predictor=predictor,
            overlap=overlap, mode=mode, sw_device=device, device=output_device, progress=progress,
            buffer_steps=buffer[0] if buffer else None, buffer_dim=buffer[1] if buffer else -1,
            text_emb=text_emb.to(device),
        )
    return torch.sigmoid_(logits[0].float())


def probabilities_to_native(probs: Tensor, processed_affine: np.ndarray, volume: Volume, threshold: float, *,
                            keep_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Masks on the input grid: each class's probabilities resampled (linear) onto it, then thresholded.

    Thresholding after resampling keeps the sub-voxel boundary that the probabilities carry; thresholding
    on the coarser model grid and copying the nearest voxel back makes staircase boundaries that cost several
    Dice points on organs only a few model voxels thick. One class at a time bounds memory to one float
    volume on the input grid. The model grid covers the input's extent only up to its last voxel centre,
    so the input's outermost voxels read the edge probabilities (clamped, ``padding="border"``) rather
    than a blend with zeros.

    Args:
        probs: (K, X', Y', Z') probabilities on the model grid.
        processed_affine: (4, 4) voxel -> RAS of the model grid.
        volume: the input CT (its affine and shape are the destination).
        threshold: probability above which a voxel is in the mask.
        keep_probabilities: also return the (K, X, Y, Z) float32 probabilities on the input grid.

    Returns:
        ``(masks (K, X, Y, Z) bool, probabilities or None)``.
    """
    probs = probs.detach().cpu()
    masks = np.zeros((probs.shape[0], *volume.shape), dtype=bool)
    kept = np.zeros((probs.shape[0], *volume.shape), dtype=np.float32) if keep_probabilities else None
    for k in range(probs.shape[0]):
        native = resample_to_grid(probs[k:k + 1], processed_affine, volume.affine, volume.shape, "linear",
                                  padding="border")[0]
        masks[k] = native > threshold
        if kept is not None:
            kept[k] = np.clip(native, 0.0, 1.0)
    return masks, kept


def _thin_axes_warning(volume: Volume, shape: Sequence[int], roi_size: Sequence[int], spacing: Sequence[float],
                       pad_mode: str) -> str:
    axes = [f"{'XYZ'[i]} {int(s)} voxels ({int(s) * float(spacing[i]):.0f} mm)"
            for i, (s, r) in enumerate(zip(shape, roi_size)) if s < r]
    window = " x ".join(f"{int(r)}" for r in roi_size)
    how = ("by repeating its edge slices: the model sees repeated edge slices instead of anatomy there"
           if pad_mode == "edge" else "with zeros (-175 HU): the model sees a flat fat-like layer there")
    return (f"{volume.path}: thinner than the model's {window}-voxel window at {'/'.join(f'{s:g}' for s in spacing)} "
            f"mm along {', '.join(axes)}; padded {how}, so organs cut by the slab's edge are less reliable than "
            "in a whole CT")


@dataclass(frozen=True)
class _Plan:
    """The checked settings of one :func:`predict_volume` call."""

    threshold: float
    overlap: float
    roi_size: tuple[int, ...]
    spacing: tuple[float, ...]
    trained_spacing: tuple[float, ...]
    hu_window: tuple[float, float]
    fast: bool
    pad_mode: str
    postprocess: bool


def _plan(model: nn.Module, *, threshold: float, overlap: float | None, sw_batch_size: int, pad_mode: str,
          fast: bool, fast_factor: float, roi_size: Sequence[int] | None, spacing: Sequence[float] | None,
          postprocess: bool) -> _Plan:
    """Check :func:`predict_volume`'s settings; the window size and spacing default to the model config's
    (the spacing ``fast_factor`` times coarser with ``fast``)."""
    if not 0.0 < threshold < 1.0:
        raise InvalidInputError(f"threshold {threshold}: expected a probability in (0, 1)")
    overlap = (FAST_OVERLAP if fast else DEFAULT_OVERLAP) if overlap is None else float(overlap)
    if not 0.0 <= overlap < 1.0:
        raise InvalidInputError(f"overlap {overlap}: expected a fraction in [0, 1)")
    if sw_batch_size < 1:
        raise InvalidInputError(f"sw_batch_size {sw_batch_size}: expected >= 1")
    if pad_mode not in PAD_MODES:
        raise InvalidInputError(f"pad_mode {pad_mode!r}: expected one of {PAD_MODES}")
    if fast and not fast_factor >= 1.0:
        raise InvalidInputError(f"fast_factor {fast_factor}: expected >= 1 (how much coarser than the model's spacing)")
    cfg_roi, cfg_spacing, hu_window = model_geometry(model)
    roi_size = tuple(roi_size or cfg_roi or ())
    trained_spacing = tuple(cfg_spacing or ())
    if spacing is None:
        spacing = tuple(float(s) * (fast_factor if fast else 1.0) for s in trained_spacing)
    spacing = tuple(float(s) for s in spacing)
    if len(roi_size) != 3 or len(spacing) != 3:
        raise InvalidInputError(
            f"{type(model).__name__} config gives roi_size {roi_size or None} and spacing {spacing or None}; "
            "pass roi_size=(x, y, z) and spacing=(mm, mm, mm)")
    if any(s <= 0 for s in spacing):
        raise InvalidInputError(f"spacing {spacing}: expected positive millimetres")
    return _Plan(threshold=threshold, overlap=overlap, roi_size=roi_size, spacing=spacing,
                 trained_spacing=trained_spacing, hu_window=hu_window, fast=bool(fast), pad_mode=pad_mode,
                 postprocess=postprocess)


def _model_grid_probabilities(model: nn.Module, volume: Volume, prompts: Sequence[str], plan: _Plan, *,
                              sw_batch_size: int, device: torch.device, output_device: torch.device | str,
                              progress: bool, amp_dtype: torch.dtype | None) -> tuple[Tensor, np.ndarray, tuple[int, ...]]:
    """Sliding-window probabilities of ``prompts`` on the model grid, with the model in eval mode (its mode is
    restored after); ``(probabilities (K, X', Y', Z'), the grid's affine, its shape)``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            text_emb = model.embed_prompts(list(prompts))
        image = preprocess_volume(volume, plan.spacing, plan.hu_window)
        processed_affine = image.affine.numpy().copy()
        processed_shape = tuple(int(s) for s in image.shape[1:])
        image, crop = pad_to_window(image, plan.roi_size, plan.pad_mode)
        if _is_thin(processed_shape, plan):
            logger.warning(_thin_axes_warning(volume, processed_shape, plan.roi_size, plan.spacing, plan.pad_mode))
        probs = sliding_window_probabilities(model, image, text_emb, plan.roi_size, overlap=plan.overlap,
                                             sw_batch_size=sw_batch_size, device=device,
                                             output_device=output_device, progress=progress, amp_dtype=amp_dtype)
        if crop is not None:
            probs = probs[(slice(None), *crop)]
    finally:
        model.train(was_training)
    return probs, processed_affine, processed_shape


def _is_thin(processed_shape: Sequence[int], plan: _Plan) -> bool:
    """Whether the resampled volume is thinner than the window along some axis (and so padded)."""
    return any(s < r for s, r in zip(processed_shape, plan.roi_size))


def _prediction_meta(volume: Volume, plan: _Plan, processed_shape: tuple[int, ...], device: torch.device,
                     amp_dtype: torch.dtype | None, infer_s: float, started: float) -> dict[str, Any]:
    """What a prediction records of its input, settings and timings (``SegPrediction.meta``)."""
    meta = {
        "input": volume.path, "input_format": volume.meta.get("format"), "input_shape": list(volume.shape),
        "input_spacing_mm": [round(s, 4) for s in volume.spacing],
        "model_spacing_mm": list(plan.spacing), "trained_spacing_mm": list(plan.trained_spacing), "fast": plan.fast,
        "roi_size": list(plan.roi_size), "processed_shape": list(processed_shape),
        "padded_to_window": plan.pad_mode if _is_thin(processed_shape, plan) else None,
        "threshold": plan.threshold, "overlap": plan.overlap, "postprocess": plan.postprocess, "device": str(device),
        "autocast": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "off",
        "inference_seconds": round(infer_s, 3), "total_seconds": round(time.perf_counter() - started, 3),
    }
    if volume.meta.get("format") == "dicom":
        meta["series_uid"] = str(volume.meta.get("series_uid") or "")
    return meta


def predict_volume(model: nn.Module, source: str | os.PathLike | Volume, prompts: Sequence[str], *,
                   threshold: float = 0.5, overlap: float | None = None, sw_batch_size: int = 1,
                   device: torch.device | str | None = None, output_device: torch.device | str = "cpu",
                   amp: str = "auto", roi_size: Sequence[int] | None = None, spacing: Sequence[float] | None = None,
                   fast: bool = False, fast_factor: float = FAST_FACTOR, postprocess: bool = True,
                   return_probabilities: bool = False, check_ct: bool = True, progress: bool = False,
                   template: ClassTemplate | None = None, allow_free_text: bool = False,
                   pad_mode: str = "edge") -> SegPrediction:
    """Segment ``prompts`` in a whole CT and return masks on the input's own voxel grid.

    Args:
        model: a MoME model, or any module with ``embed_prompts(prompts) -> (K, T)``,
            ``forward(volume, text_emb=...) -> (B, K, *S)`` logits and ``config.roi_size`` / ``config.spacing``.
        source: a NIfTI file, a DICOM series folder, or an already read :class:`Volume` (HU).
        prompts: K class names or prompts (synonyms and typos of template classes resolve); ``"all"`` is
            every class of the model (:func:`model_class_names`). Repeats of a class are segmented once.
        threshold: probability above which a voxel is in the mask.
        overlap: sliding-window overlap in [0, 1) (default 0.5; 0.25 with ``fast``).
        sw_batch_size: windows per forward pass.
        device: where windows run: ``"auto"`` (CUDA if available, else CPU), a device, or None for the
            model's device. The model is moved there if it is elsewhere.
        output_device: where the stitched probabilities are kept (``"cpu"`` for whole CTs on a GPU).
        amp: autocast of the windows on a GPU: ``auto`` (bf16 where native, else fp16), ``bf16``, ``fp16``,
            ``off``. Always fp32 on CPU.
        roi_size, spacing: override the model config's window size and spacing.
        fast: low-resolution mode: run at ``fast_factor`` x the model's spacing (8x fewer voxels at 2x)
            with overlap 0.25, and resample back. The model then sees organs at 1/``fast_factor`` of the
            size it was trained on: masks are coarser and small structures (vessels, adrenals, lesions)
            are often lost; see docs/seg.md for the measured cost.
        postprocess: largest connected component for organs; lesions kept inside their parent organ.
        return_probabilities: also resample the probabilities to the input grid (linear).
        check_ct: refuse inputs that are not CT (DICOM Modality, HU range).
        progress: tqdm bar over the windows.
        template: class template for resolution and post-processing (default: the model's, else the packaged one).
        allow_free_text: accept prompts that name no template class (embedded as unseen classes) instead of
            raising.
        pad_mode: how an input thinner than the window along an axis (after resampling) is padded:
            ``"edge"`` repeats its edge slices (default), ``"constant"`` leaves MONAI's zero padding. Either
            way a warning is logged; see :func:`pad_to_window`.

    Returns:
        :class:`SegPrediction` with (K, X, Y, Z) masks in the input's voxel order and affine, and per-class
        statistics (volume, mean HU).

    Raises:
        InvalidInputError: empty prompt list, an unknown prompt, a 2-D or non-CT input, bad settings.
        CorruptFileError: an unreadable file.
    """
    plan = _plan(model, threshold=threshold, overlap=overlap, sw_batch_size=sw_batch_size, pad_mode=pad_mode,
                 fast=fast, fast_factor=fast_factor, roi_size=roi_size, spacing=spacing, postprocess=postprocess)
    if not hasattr(model, "embed_prompts"):
        raise InvalidInputError(f"{type(model).__name__} has no embed_prompts(prompts); expected a MoME model")
    # the class template, the prompts to segment and their template classes; "all" is every model class
    template = template or getattr(model, "template", None) or ClassTemplate.default()
    wants_all = any(p.strip().lower() == ALL_CLASSES for p in check_prompts(prompts))
    model_classes = model_class_names(model, template)[0] if wants_all else None
    prompts, classes = resolve_prompt_list(prompts, template, model_classes=model_classes,
                                           allow_free_text=allow_free_text)
    run_device = resolve_device(device) if device is not None else _model_device(model)
    amp_dtype = autocast_dtype(run_device, amp)
    volume = source if isinstance(source, Volume) else read_ct(source, check_ct=check_ct)
    if not _same_device(_model_device(model), run_device):
        logger.info("moving the model to %s", run_device)
        model.to(run_device)

    start = time.perf_counter()
    probs, processed_affine, processed_shape = _model_grid_probabilities(
        model, volume, prompts, plan, sw_batch_size=sw_batch_size, device=run_device, output_device=output_device,
        progress=progress, amp_dtype=amp_dtype)
    infer_s = time.perf_counter() - start
    native, probabilities = probabilities_to_native(probs, processed_affine, volume, threshold,
                                                    keep_probabilities=return_probabilities)
    if postprocess:
        native = postprocess_masks(native, classes, template)
    voxel_ml = float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    meta = _prediction_meta(volume, plan, processed_shape, run_device, amp_dtype, infer_s, start)
    logger.info("predicted %d class(es) on %s in %.1f s", len(prompts), volume.path, meta["total_seconds"])
    return SegPrediction(masks=native, affine=volume.affine.copy(), prompts=list(prompts), classes=classes,
                         probabilities=probabilities, statistics=class_statistics(native, volume.array, voxel_ml),
                         meta=meta)


def save_prediction(prediction: SegPrediction, out: str | os.PathLike | None, *, probabilities: bool = False,
                    summary: str | os.PathLike | None = None,
                    per_class: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the prediction: label map or DICOM-SEG, per-class masks, probability maps, JSON summary.

    Args:
        prediction: from :func:`predict_volume`.
        out: ``.nii`` / ``.nii.gz``: the label map (value i = prompt i, later prompts win overlaps);
            ``.dcm``: a DICOM-SEG with one segment per class (overlaps kept; the input must have been a
            DICOM series folder, still in place); None: no combined output.
        probabilities: also write one float32 probability map per class next to ``out`` as
            ``<stem>_prob_<i>_<class>.nii.gz``.
        summary: write the JSON summary (classes, statistics, settings, files) here.
        per_class: a folder for one binary uint8 NIfTI per class, ``<class>.nii.gz`` (canonical name;
            overlaps kept).

    Returns:
        The summary dict.
    """
    info = prediction.summary()
    files: dict[str, Any] = {}
    if out is not None:
        out = Path(out)
        lower = str(out).lower()
        if lower.endswith((".nii", ".nii.gz")):
            write_nifti(prediction.label_map(), prediction.affine, out)
            files["labels"] = str(out)
        elif lower.endswith(".dcm"):
            from medmoe.seg.dicom_seg import write_dicom_seg

            if prediction.meta.get("input_format") != "dicom":
                raise InvalidInputError(f"{out}: DICOM-SEG needs a DICOM series input; {prediction.meta.get('input')} "
                                        "is not one (write a .nii.gz instead)")
            write_dicom_seg(prediction.masks, prediction.names, out, folder=prediction.meta["input"],
                            series_uid=prediction.meta.get("series_uid", ""), affine=prediction.affine)
            files["dicom_seg"] = str(out)
        else:
            raise InvalidInputError(f"{out}: the output must be a .nii/.nii.gz label map or a .dcm DICOM-SEG file")
        info["output"] = str(out)
    if per_class is not None:
        folder = Path(per_class)
        files["per_class"] = {}
        for row, mask, name in zip(info["classes"], prediction.masks, prediction.names):
            path = write_nifti(mask.astype(np.uint8), prediction.affine, folder / f"{class_file_name(name)}.nii.gz")
            row["mask_file"] = str(path)
            files["per_class"][name] = str(path)
    if probabilities:
        if prediction.probabilities is None:
            raise InvalidInputError("probabilities were not computed; call predict_volume(..., return_probabilities=True)")
        if out is None:
            raise InvalidInputError("probability maps are written next to the output file; give out=")
        stem = output_stem(out)
        for i, (row, prob, name) in enumerate(zip(info["classes"], prediction.probabilities, prediction.names)):
            path = write_nifti(prob, prediction.affine, out.with_name(f"{stem}_prob_{i + 1}_{class_file_name(name)}.nii.gz"),
                               dtype=np.float32)
            row["probability_map"] = str(path)
    info["files"] = files
    if summary:
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        Path(summary).write_text(json.dumps(info, indent=2) + "\n")
    return info
