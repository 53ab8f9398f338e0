"""MONAI dictionary transform chains for CT segmentation and the few transforms MONAI lacks.

The chain is split into a deterministic part (load, align label to image, RAS, resample, HU window, crop to
the body), which :mod:`medmoe.seg.cache` stores on disk, and a random part applied to each training patch
(:class:`Augmentation`), which a dataset reseeds per item. No flips: left and right organs are different classes.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CopyItemsd,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ResampleToMatch,
    ScaleIntensityRanged,
    Spacingd,
)
from monai.utils import convert_to_numpy
from scipy import ndimage

from medmoe.data.volumes import VolumeReader, same_grid
from medmoe.errors import InvalidInputError
from medmoe.seg.resample import resample_to_grid

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
        if self.label_key in d:
            image, label = d[self.image_key], d[self.label_key]
            if not same_grid(_affine(image), image.shape[1:], _affine(label), label.shape[1:]):
                d[self.label_key] = self._resample(label.float(), img_dst=image).round().to(label.dtype)
        return d


def _affine(x: Any) -> np.ndarray:
    if not isinstance(x, MetaTensor):
        raise InvalidInputError(f"expected a MetaTensor with an affine, got {type(x).__name__}")
    return np.asarray(x.affine, dtype=np.float64)


def footprint_sigmas(src_affine: np.ndarray, dst_affine: np.ndarray) -> list[float]:
    """Per source axis, the Gaussian sigma (in source voxels) with the variance of a box as wide as a
    destination voxel along that axis; 0 where the destination is not coarser.

    Args:
        src_affine, dst_affine: (4, 4) voxel -> world of the fine and the coarse grid.
    """
    src, dst = np.asarray(src_affine, float)[:3, :3], np.asarray(dst_affine, float)[:3, :3]
    steps = [np.linalg.norm(src[:, i]) for i in range(3)]
    # the destination extent along each source axis, in source voxels
    widths = [float(np.abs(src[:, i] / steps[i] @ dst).sum()) / steps[i] for i in range(3)]
    return [width / np.sqrt(12.0) if width > 1.0 else 0.0 for width in widths]


class SoftMultiHotd(MapTransform):
    """Partial-volume class fractions on the final image grid, from the label ids on the native grid.

    For each class k the native-grid mask ``table[ids, k]`` is box-averaged over the footprint of a target
    voxel (a Gaussian of the same variance, so that a 2x coarser grid does not just pick every other native
    voxel) and resampled linearly onto the image's (RAS, resampled, cropped, padded) grid, one class at a
    time; the result, in [0, 1], is about the fraction of a coarse voxel the class covers. Training against
    these fractions instead of nearest-neighbour labels lets a model trained at a coarse spacing put the 0.5
    iso-surface of its probabilities where the organ boundary really is, which thresholding after linear
    resampling back to the native grid then keeps.

    Reads ``d[native_key]`` (1, X, Y, Z) ids with their native affine and ``d["dataset"]``; writes
    ``d[out_key]`` (K, X', Y', Z') float16 on the grid of ``d[image_key]`` and drops ``native_key``.

    Args:
        tables: dataset -> (max_id + 1, K) bool lookup table (:meth:`ClassTemplate.lookup_table`).
    """

    def __init__(self, tables: Mapping[str, np.ndarray], *, native_key: str = "native_ids",
                 image_key: str = "image", out_key: str = "soft_label") -> None:
        super().__init__([native_key])
        self.tables = {k: np.asarray(v, dtype=bool) for k, v in tables.items()}
        self.native_key, self.image_key, self.out_key = native_key, image_key, out_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        native, image = d.pop(self.native_key), d[self.image_key]
        if d.get("dataset") not in self.tables:
            raise InvalidInputError(f"SoftMultiHotd: no lookup table for dataset {d.get('dataset')!r}; have "
                                    f"{sorted(self.tables)}")
        table = self.tables[d["dataset"]]
        ids = convert_to_numpy(native)[0].astype(np.int64)
        ids = np.where((ids >= 0) & (ids < table.shape[0]), ids, 0)
        src, dst, shape = _affine(native), _affine(image), tuple(image.shape[1:])
        sigma = footprint_sigmas(src, dst)
        out = np.zeros((table.shape[1], *shape), dtype=np.float16)
        for k in np.flatnonzero(table.any(axis=0)):  # classes some label id belongs to
            mask = table[:, k][ids]
            if mask.any():
                fraction = ndimage.gaussian_filter(mask.astype(np.float32), sigma, mode="constant")
                out[k] = np.clip(resample_to_grid(fraction[None], src, dst, shape, "linear")[0], 0, 1)
        d[self.out_key] = torch.from_numpy(out)
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
                          hu_window: tuple[float, float] = HU_WINDOW, check_ct: bool = True,
                          soft_tables: Mapping[str, np.ndarray] | None = None) -> Compose:
    """Deterministic part: load, RAS, resample to ``spacing`` mm, window HU to [0, 1], crop to the body.

    Args:
        spacing: target voxel size (mm) along x, y, z.
        with_label: also load and transform ``"label"`` (nearest-neighbour resampling).
        crop_foreground: crop to the bounding box of the body.
        hu_window: HU mapped to 0 and 1 (clipped).
        check_ct: reject inputs that are not CT.
        soft_tables: dataset -> lookup table; also write ``soft_label``, the (K, X, Y, Z) float16 class
            fractions of :class:`SoftMultiHotd` (the input dict then needs ``"dataset"``).

    Returns:
        A Compose mapping {"image": path, "label": path} -> {"image": (1, X, Y, Z) MetaTensor float32 in [0, 1],
        "label": (1, X, Y, Z) MetaTensor integer ids}.
    """
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise InvalidInputError(f"spacing {spacing}: expected three positive millimetre values")
    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    chain = load_transforms(with_label=with_label, check_ct=check_ct)
    soft = with_label and soft_tables is not None
    if soft:
        # the label ids on their native grid for SoftMultiHotd (not ``label_*``: MONAI's Spacingd treats every
        # ``label_*`` key as a metadata dict of ``label``)
        chain.append(CopyItemsd(keys="label", names="native_ids"))
    chain += [
        Orientationd(keys=keys, axcodes="RAS", labels=None),
        Spacingd(keys=keys, pixdim=tuple(float(s) for s in spacing), mode=modes),
        ScaleIntensityRanged(keys="image", a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True),
    ]
    if crop_foreground:
        chain.append(CropForegroundd(keys=keys, source_key="image", select_fn=body_foreground, allow_smaller=True))
    chain.append(EnsureTyped(keys="image", dtype=torch.float32, track_meta=True))
    if with_label:
        chain.append(EnsureTyped(keys="label", dtype=torch.int16, track_meta=True))
    if soft:
        chain.append(SoftMultiHotd(soft_tables))  # drops native_ids
    return Compose(chain)


@dataclass(frozen=True)
class Augmentation:
    """Random changes to a training patch (all off but the light intensity jitter by default).

    No flips: left and right organs are different classes.

    Attributes:
        intensity_scale, intensity_shift: ``x * (1 + u)``, ``x + v`` with u, v uniform in +-these, each with
            probability 0.5 (on the [0, 1] windowed image).
        contrast: nnU-Net's intensity set on top: gamma in [0.7, 1.5], Gaussian noise (sd 0.03) and Gaussian
            smoothing (sigma 0.5-1 voxel), each with probability 0.15-0.3. For models that must generalise
            from few scanners.
        spatial: rotation (+-15 degrees about each axis) and scaling (+-15 %), with probability 0.3; the patch
            is cropped ``spatial_margin`` larger and resampled back to the patch size, so that rotated
            corners hold image, not padding.
        spatial_margin: enlargement of the crop for ``spatial``.
        edge_patches: add the body's outer surface as a patch-centre group, so patches show where the body
            ends (arms, the table, air) as often as they show each organ.
    """

    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    contrast: bool = False
    spatial: bool = False
    spatial_margin: float = 1.25
    edge_patches: bool = False

    @classmethod
    def named(cls, name: str) -> Augmentation:
        """``light`` (default), ``strong`` (contrast + spatial + edge patches) or ``none``."""
        presets = {"light": cls(), "strong": cls(contrast=True, spatial=True, edge_patches=True),
                   "none": cls(intensity_scale=0.0, intensity_shift=0.0)}
        if name not in presets:
            raise InvalidInputError(f"augmentation {name!r}: expected one of {sorted(presets)}")
        return presets[name]

    def crop_size(self, patch: Sequence[int]) -> tuple[int, int, int]:
        """The size to crop before :meth:`transforms` (larger than ``patch`` with ``spatial``)."""
        factor = self.spatial_margin if self.spatial else 1.0
        return tuple(int(np.ceil(int(p) * factor)) for p in patch)

    def transforms(self, patch: Sequence[int], *, soft: bool = False) -> Compose:
        """Compose over one crop dict {"image", "label"[, "soft_label"]} -> a ``patch``-sized, augmented dict."""
        if len(patch) != 3 or any(int(p) <= 0 for p in patch):
            raise InvalidInputError(f"patch_size {patch}: expected three positive voxel counts")
        keys = ["image", "label", "soft_label"] if soft else ["image", "label"]
        chain: list = []
        if self.spatial:
            chain.append(RandAffined(
                keys=keys, mode=("bilinear", "nearest", "bilinear")[:len(keys)], prob=0.3,
                rotate_range=(np.pi / 12,) * 3, scale_range=(0.15,) * 3, padding_mode="zeros",
                spatial_size=tuple(int(p) for p in patch)))
        if self.intensity_scale:
            chain.append(RandScaleIntensityd(keys="image", factors=self.intensity_scale, prob=0.5))
        if self.intensity_shift:
            chain.append(RandShiftIntensityd(keys="image", offsets=self.intensity_shift, prob=0.5))
        if self.contrast:
            chain += [
                RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.3),
                RandGaussianNoised(keys="image", std=0.03, prob=0.15),
                RandGaussianSmoothd(keys="image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0),
                                    prob=0.15),
            ]
        return Compose(chain)
