"""MONAI dictionary transform chains for CT segmentation and the few transforms MONAI lacks.

The chain is split into a deterministic part (load, align label to image, RAS, resample, HU window, crop to
the body, foreground indices), which a dataset may cache, and a random part (patch sampling, intensity
jitter), which a dataset reseeds per item. No flips: left and right organs are different classes.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    FgBgToIndicesd,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandCropByPosNegLabeld,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ResampleToMatch,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from medmoe.errors import InvalidInputError
from medmoe.seg.io import VolumeReader, same_grid

HU_WINDOW = (-175.0, 250.0)


def body_foreground(image: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Voxels above the bottom of the HU window (the body, not the surrounding air), for CropForeground."""
    return image > 0


class AlignLabeld(MapTransform):
    """Resample a label map onto its image's voxel grid (nearest) when the two grids differ.

    Label files are often written with another axis order or flip than the image (a DICOM series and a NIfTI
    label map of it); after this transform the same voxel index means the same point in both.
    """

    def __init__(self, label_key: str = "label", image_key: str = "image", allow_missing_keys: bool = False):
        super().__init__([label_key], allow_missing_keys)
        self.label_key = label_key
        self.image_key = image_key
        self._resample = ResampleToMatch(mode="nearest", padding_mode="zeros")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.label_key not in d:
            return d
        image, label = d[self.image_key], d[self.label_key]
        if same_grid(_affine(image), image.shape[1:], _affine(label), label.shape[1:]):
            return d
        out = self._resample(label.float(), img_dst=image)
        d[self.label_key] = out.round().to(label.dtype)
        return d


def _affine(x: Any) -> np.ndarray:
    if not isinstance(x, MetaTensor):
        raise InvalidInputError(f"expected a MetaTensor with an affine, got {type(x).__name__}")
    return np.asarray(x.affine, dtype=np.float64)


class ToPlaintensord(MapTransform):
    """Drop MONAI metadata: plain tensors collate faster and carry no per-sample dicts into the model."""

    def __init__(self, keys: Sequence[str], dtypes: Mapping[str, torch.dtype], allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.dtypes = dict(dtypes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            value = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
            d[key] = value.to(self.dtypes.get(key, value.dtype))
        return d


@contextlib.contextmanager
def _quiet_reader_registration() -> Iterator[None]:
    """LoadImage instantiates every MONAI reader; the GPU DICOM one warns on each CPU-only construction."""
    plugin_logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_logger.level
    plugin_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            yield
    finally:
        plugin_logger.setLevel(level)


def load_transforms(*, with_label: bool = True, check_ct: bool = True) -> list:
    """Read image (NIfTI or DICOM series folder) and label, channel first, label on the image grid."""
    keys = ["image", "label"] if with_label else ["image"]
    with _quiet_reader_registration():
        chain: list = [LoadImaged(keys="image", reader=VolumeReader("ct", check_ct=check_ct), image_only=True)]
        if with_label:
            chain.append(LoadImaged(keys="label", reader=VolumeReader("label"), image_only=True))
    chain.append(EnsureChannelFirstd(keys=keys, channel_dim="no_channel"))
    if with_label:
        chain.append(AlignLabeld())
    return chain


def preprocess_transforms(spacing: Sequence[float], *, with_label: bool = True, crop_foreground: bool = True,
                          pad_to: Sequence[int] | None = None, hu_window: tuple[float, float] = HU_WINDOW,
                          check_ct: bool = True, fg_indices: bool = False) -> Compose:
    """Deterministic part: load, RAS, resample to ``spacing`` mm, window HU to [0, 1], crop to the body.

    Args:
        spacing: target voxel size (mm) along x, y, z.
        with_label: also load and transform ``"label"`` (nearest-neighbour resampling).
        crop_foreground: crop to the bounding box of the body.
        pad_to: pad (zeros) so every axis is at least this long (the patch size for training).
        hu_window: HU mapped to 0 and 1 (clipped).
        check_ct: reject inputs that are not CT.
        fg_indices: precompute ``label_fg_indices`` / ``label_bg_indices`` for patch sampling.

    Returns:
        A Compose mapping {"image": path, "label": path} -> {"image": (1, X, Y, Z) MetaTensor float32 in [0, 1],
        "label": (1, X, Y, Z) MetaTensor integer ids}.
    """
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise InvalidInputError(f"spacing {spacing}: expected three positive millimetre values")
    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    chain = load_transforms(with_label=with_label, check_ct=check_ct)
    chain += [
        Orientationd(keys=keys, axcodes="RAS", labels=None),
        Spacingd(keys=keys, pixdim=tuple(float(s) for s in spacing), mode=modes),
        ScaleIntensityRanged(keys="image", a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True),
    ]
    if crop_foreground:
        chain.append(CropForegroundd(keys=keys, source_key="image", select_fn=body_foreground, allow_smaller=True))
    if pad_to is not None:
        chain.append(SpatialPadd(keys=keys, spatial_size=tuple(int(p) for p in pad_to)))
    chain.append(EnsureTyped(keys="image", dtype=torch.float32, track_meta=True))
    if with_label:
        chain.append(EnsureTyped(keys="label", dtype=torch.int16, track_meta=True))
        if fg_indices:
            chain.append(FgBgToIndicesd(keys="label", image_key="image", image_threshold=0.0))
    return Compose(chain)


def augment_transforms(patch_size: Sequence[int], *, samples_per_volume: int = 1, pos: float = 2.0, neg: float = 1.0,
                       intensity_scale: float = 0.1, intensity_shift: float = 0.05) -> Compose:
    """Random part: positive/negative patch sampling and light intensity jitter (no flips).

    Returns:
        A Compose producing a list of ``samples_per_volume`` dicts with ``patch_size`` patches.
    """
    if len(patch_size) != 3 or any(int(p) <= 0 for p in patch_size):
        raise InvalidInputError(f"patch_size {patch_size}: expected three positive voxel counts")
    return Compose([
        RandCropByPosNegLabeld(
            keys=["image", "label"], label_key="label", spatial_size=tuple(int(p) for p in patch_size), pos=pos,
            neg=neg, num_samples=samples_per_volume, fg_indices_key="label_fg_indices",
            bg_indices_key="label_bg_indices", allow_smaller=False,
        ),
        RandScaleIntensityd(keys="image", factors=intensity_scale, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=intensity_shift, prob=0.5),
    ])
