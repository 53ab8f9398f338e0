"""Whole-CT prediction: a NIfTI file or DICOM series in, one mask per prompt on the native grid out.

Pipeline: read (HU) -> RAS -> resample to the model's training spacing -> HU window -> MONAI sliding-window
inference with the prompt embeddings passed through as ``text_emb=`` (gaussian blending; windows run on
``device``, the stitched volume stays on ``output_device`` so memory is bounded by one volume of K
probabilities) -> sigmoid -> probabilities resampled back to the input grid (linear) -> threshold -> post-processing
(largest component for organs, lesions inside their organ) on the input grid.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Orientation, ScaleIntensityRange, Spacing
from torch import Tensor, nn

from medmoe.errors import InvalidInputError
from medmoe.seg.classes import ClassTemplate
from medmoe.data.volumes import Volume, read_ct, write_nifti
from medmoe.seg.postprocess import postprocess_masks
from medmoe.seg.resample import resample_to_grid
from medmoe.seg.transforms import HU_WINDOW

logger = logging.getLogger(__name__)


@dataclass
class SegPrediction:
    """Masks of K prompted classes on the input's voxel grid.

    Attributes:
        masks: (K, X, Y, Z) bool, one (post-processed) mask per prompt; may overlap (a tumour lies in its organ).
        affine: (4, 4) voxel -> RAS mm of the input.
        prompts: the K prompts as given.
        classes: the K canonical template classes (None for a prompt outside the template).
        probabilities: (K, X, Y, Z) float32 sigmoid probabilities, when asked for.
        meta: timing, spacing and settings.
    """

    masks: np.ndarray
    affine: np.ndarray
    prompts: list[str]
    classes: list[str | None]
    probabilities: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def label_map(self) -> np.ndarray:
        """(X, Y, Z) label map: value i where prompt i (1-based) is predicted; later prompts win overlaps."""
        dtype = np.uint8 if len(self.prompts) < 255 else np.uint16
        out = np.zeros(self.masks.shape[1:], dtype=dtype)
        for i, mask in enumerate(self.masks):
            out[mask] = i + 1
        return out

    def volumes_ml(self) -> list[float]:
        """Volume of each class mask in millilitres."""
        return [float(m.sum()) * self.voxel_ml for m in self.masks]

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: per prompt its class, label value, voxel count and volume (ml)."""
        rows = []
        for i, (prompt, name, mask) in enumerate(zip(self.prompts, self.classes, self.masks)):
            row = {"prompt": prompt, "class": name, "label_value": i + 1, "voxels": int(mask.sum()),
                   "volume_ml": round(float(mask.sum()) * self.voxel_ml, 3)}
            if self.probabilities is not None:
                row["max_probability"] = round(float(self.probabilities[i].max()), 4)
            rows.append(row)
        return {"classes": rows, "shape": list(self.masks.shape[1:]), "affine": np.round(self.affine, 6).tolist(),
                **self.meta}


def _config_tuple(config: Any, names: Sequence[str]) -> tuple | None:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return tuple(value)
    return None


def model_geometry(model: nn.Module) -> tuple[tuple[int, ...] | None, tuple[float, ...] | None, tuple[float, float]]:
    """``(roi_size, spacing, hu_window)`` from ``model.config`` (None where the config lacks them)."""
    config = getattr(model, "config", None)
    roi = _config_tuple(config, ("roi_size", "patch_size", "img_size"))
    spacing = _config_tuple(config, ("spacing", "target_spacing"))
    window = _config_tuple(config, ("hu_window",)) or HU_WINDOW
    return roi, spacing, (float(window[0]), float(window[1]))


def check_prompts(prompts: Any) -> list[str]:
    """The prompts as a list of non-empty strings, or a clear error (empty list, a bare string, ...)."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise InvalidInputError(f"prompts must be a list of class names, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise InvalidInputError("the prompt list is empty: give at least one class to segment, e.g. --prompt liver")
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise InvalidInputError(f"prompts must be non-empty strings, got {bad!r}")
    return [str(p) for p in prompts]


def _logits_of(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    raise InvalidInputError(f"the model returned {type(output).__name__}; expected logits (B, K, ...) or a dict with 'logits'")


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def preprocess_volume(volume: Volume, spacing: Sequence[float], hu_window: tuple[float, float] = HU_WINDOW) -> MetaTensor:
    """(1, X', Y', Z') windowed [0, 1] image, RAS, at ``spacing`` mm, with its affine in the MetaTensor."""
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))[None],
                       affine=torch.as_tensor(volume.affine, dtype=torch.float64))
    image = Orientation(axcodes="RAS", labels=None)(image)
    image = Spacing(pixdim=tuple(float(s) for s in spacing), mode="bilinear")(image)
    return ScaleIntensityRange(a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True)(image)


def sliding_window_probabilities(model: nn.Module, image: Tensor, text_emb: Tensor, roi_size: Sequence[int], *,
                                 overlap: float = 0.5, sw_batch_size: int = 1, device: torch.device | str | None = None,
                                 output_device: torch.device | str = "cpu", mode: str = "gaussian",
                                 progress: bool = False) -> Tensor:
    """Stitched sigmoid probabilities of one preprocessed volume.

    Args:
        model: called as ``model(window, text_emb=text_emb)`` -> (b, K, *roi) logits.
        image: (1, X, Y, Z) or (1, 1, X, Y, Z) windowed volume (kept on its device; windows are copied).
        text_emb: (K, T) prompt embeddings.
        roi_size: window size in voxels.
        device: where windows run (default: the model's device).
        output_device: where the stitched (K, X, Y, Z) volume lives (CPU keeps GPU memory bounded).

    Returns:
        (K, X, Y, Z) float32 probabilities on ``output_device``.
    """
    x = image if image.ndim == 5 else image[None]
    x = x.as_tensor() if isinstance(x, MetaTensor) else x
    device = torch.device(device) if device is not None else _model_device(model)

    def predictor(window: Tensor, text_emb: Tensor) -> Tensor:
        return _logits_of(model(window, text_emb=text_emb)).float()

    with torch.no_grad():
        logits = sliding_window_inference(
            x.float(), roi_size=tuple(int(r) for r in roi_size), sw_batch_size=sw_batch_size, predictor=predictor,
            overlap=overlap, mode=mode, sw_device=device, device=torch.device(output_device), progress=progress,
            text_emb=text_emb.to(device),
        )
    return torch.sigmoid_(logits[0].float())


def probabilities_to_native(probs: Tensor, processed_affine: np.ndarray, volume: Volume, threshold: float, *,
                            keep_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Masks on the input grid: each class's probabilities resampled (linear) onto it, then thresholded.

    Thresholding after resampling keeps the sub-voxel boundary that the probabilities carry; thresholding
    on the coarser model grid and copying the nearest voxel back makes staircase boundaries that cost several
    Dice points on organs only a few model voxels thick. One class at a time bounds memory to one float
    volume on the input grid.

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
        native = resample_to_grid(probs[k:k + 1], processed_affine, volume.affine, volume.shape, "linear")[0]
        masks[k] = native > threshold
        if kept is not None:
            kept[k] = np.clip(native, 0.0, 1.0)
    return masks, kept


def predict_volume(model: nn.Module, source: str | os.PathLike | Volume, prompts: Sequence[str], *,
                   threshold: float = 0.5, overlap: float = 0.5, sw_batch_size: int = 1,
                   device: torch.device | str | None = None, output_device: torch.device | str = "cpu",
                   roi_size: Sequence[int] | None = None, spacing: Sequence[float] | None = None,
                   postprocess: bool = True, return_probabilities: bool = False, check_ct: bool = True,
                   progress: bool = False, template: ClassTemplate | None = None) -> SegPrediction:
    """Segment ``prompts`` in a whole CT and return masks on the input's own voxel grid.

    Args:
        model: a MoME model, or any module with ``embed_prompts(prompts) -> (K, T)``,
            ``forward(volume, text_emb=...) -> (B, K, *S)`` logits and ``config.roi_size`` / ``config.spacing``.
        source: a NIfTI file, a DICOM series folder, or an already read :class:`Volume` (HU).
        prompts: K class names or prompts (typos of template classes resolve).
        threshold: probability above which a voxel is in the mask.
        overlap: sliding-window overlap in [0, 1).
        sw_batch_size: windows per forward pass.
        device: where windows run (default: the model's device).
        output_device: where the stitched probabilities are kept (``"cpu"`` for whole CTs on a GPU).
        roi_size, spacing: override the model config's window size and training spacing.
        postprocess: largest connected component for organs; lesions kept inside their parent organ.
        return_probabilities: also resample the probabilities to the input grid (linear).
        check_ct: refuse inputs that are not CT (DICOM Modality, HU range).
        progress: tqdm bar over the windows.
        template: class template for post-processing (default: the model's, else the packaged one).

    Returns:
        :class:`SegPrediction` with (K, X, Y, Z) masks in the input's voxel order and affine.

    Raises:
        InvalidInputError: empty prompt list, a 2-D or non-CT input, bad settings.
        CorruptFileError: an unreadable file.
    """
    prompts = check_prompts(prompts)
    if not 0.0 < threshold < 1.0:
        raise InvalidInputError(f"threshold {threshold}: expected a probability in (0, 1)")
    if not 0.0 <= overlap < 1.0:
        raise InvalidInputError(f"overlap {overlap}: expected a fraction in [0, 1)")
    cfg_roi, cfg_spacing, hu_window = model_geometry(model)
    roi_size = tuple(roi_size or cfg_roi or ())
    spacing = tuple(spacing or cfg_spacing or ())
    if len(roi_size) != 3 or len(spacing) != 3:
        raise InvalidInputError(
            f"{type(model).__name__} config gives roi_size {roi_size or None} and spacing {spacing or None}; "
            "pass roi_size=(x, y, z) and spacing=(mm, mm, mm)")
    if not hasattr(model, "embed_prompts"):
        raise InvalidInputError(f"{type(model).__name__} has no embed_prompts(prompts); expected a MoME model")
    template = template or getattr(model, "template", None) or ClassTemplate.default()
    volume = source if isinstance(source, Volume) else read_ct(source, check_ct=check_ct)

    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            text_emb = model.embed_prompts(list(prompts))
        image = preprocess_volume(volume, spacing, hu_window)
        processed_affine = image.affine.numpy().copy()
        probs = sliding_window_probabilities(model, image, text_emb, roi_size, overlap=overlap,
                                             sw_batch_size=sw_batch_size, device=device, output_device=output_device,
                                             progress=progress)
    finally:
        model.train(was_training)
    infer_s = time.perf_counter() - start
    classes = [template.resolve(p) for p in prompts]
    native, probabilities = probabilities_to_native(probs, processed_affine, volume, threshold,
                                                    keep_probabilities=return_probabilities)
    if postprocess:
        native = postprocess_masks(native, classes, template)
    meta = {
        "input": volume.path, "input_spacing_mm": [round(s, 4) for s in volume.spacing],
        "model_spacing_mm": list(spacing), "roi_size": list(roi_size), "processed_shape": list(probs.shape[1:]),
        "threshold": threshold, "overlap": overlap, "postprocess": postprocess,
        "inference_seconds": round(infer_s, 3), "total_seconds": round(time.perf_counter() - start, 3),
    }
    logger.info("predicted %d class(es) on %s in %.1f s", len(prompts), volume.path, meta["total_seconds"])
    return SegPrediction(masks=native, affine=volume.affine.copy(), prompts=list(prompts), classes=classes,
                         probabilities=probabilities, meta=meta)


def save_prediction(prediction: SegPrediction, out: str | os.PathLike, *, probabilities: bool = False,
                    summary: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the label map (``out``), optional per-class probability maps and a JSON summary.

    Probability maps go next to ``out`` as ``<stem>_prob_<i>_<class>.nii.gz`` (float32).

    Returns:
        The summary dict (also written to ``summary`` when given).
    """
    import json

    out = Path(out)
    if not str(out).lower().endswith((".nii", ".nii.gz")):
        raise InvalidInputError(f"{out}: the output mask must be a .nii or .nii.gz file")
    write_nifti(prediction.label_map(), prediction.affine, out)
    info = prediction.summary()
    info["output"] = str(out)
    if probabilities:
        if prediction.probabilities is None:
            raise InvalidInputError("probabilities were not computed; call predict_volume(..., return_probabilities=True)")
        stem = out.name[: -len(".nii.gz")] if out.name.lower().endswith(".nii.gz") else out.stem
        for i, (row, prob) in enumerate(zip(info["classes"], prediction.probabilities)):
            name = (row["class"] or row["prompt"]).replace(" ", "_").replace("/", "_")
            path = write_nifti(prob, prediction.affine, out.with_name(f"{stem}_prob_{i + 1}_{name}.nii.gz"), dtype=np.float32)
            row["probability_map"] = str(path)
    if summary:
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        Path(summary).write_text(json.dumps(info, indent=2) + "\n")
    return info


