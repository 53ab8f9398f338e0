"""MONAI dictionary transform chains for CT segmentation and the few transforms MONAI lacks.

The chain is split into a deterministic part (load, align label to image, RAS, resample, HU window, crop to
the body, per-class voxel indices), which a dataset may cache, and a random part (class-balanced patch
sampling, intensity jitter), which a dataset reseeds per item. No flips: left and right organs are different classes.
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
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandCropByLabelClassesd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ResampleToMatch,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from monai.utils import convert_to_numpy
from scipy import ndimage

from medmoe.errors import InvalidInputError
from medmoe.data.volumes import VolumeReader, same_grid
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


def _dataset_table(tables: Mapping[str, np.ndarray], dataset: Any, who: str) -> np.ndarray:
    if dataset not in tables:
        raise InvalidInputError(f"{who}: no lookup table for dataset {dataset!r}; have {sorted(tables)}")
    return tables[dataset]


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


def footprint_sigmas(src_affine: np.ndarray, dst_affine: np.ndarray) -> list[float]:
    """Per source axis, the Gaussian sigma (in source voxels) with the variance of a box as wide as a
    destination voxel along that axis; 0 where the destination is not coarser.

    Args:
        src_affine, dst_affine: (4, 4) voxel -> world of the fine and the coarse grid.
    """
    src, dst = np.asarray(src_affine, float)[:3, :3], np.asarray(dst_affine, float)[:3, :3]
    sigmas = []
    for i in range(3):
        step = np.linalg.norm(src[:, i])
        width = float(np.abs(src[:, i] / step @ dst).sum()) / step  # destination extent, in source voxels
        sigmas.append(width / np.sqrt(12.0) if width > 1.0 else 0.0)
    return sigmas


class _KeepNatived(MapTransform):
    """Keep the label ids on their native grid under ``native_ids`` for :class:`SoftMultiHotd` (not
    ``label_*``: MONAI's Spacingd treats every ``label_*`` key as a metadata dict of ``label``)."""

    def __init__(self) -> None:
        super().__init__(["label"])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d["native_ids"] = d["label"].clone()
        return d


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
        table = _dataset_table(self.tables, d.get("dataset"), "SoftMultiHotd")
        ids = convert_to_numpy(native)[0].astype(np.int64)
        ids = np.where((ids >= 0) & (ids < table.shape[0]), ids, 0)
        src, dst, shape = _affine(native), _affine(image), tuple(image.shape[1:])
        sigma = footprint_sigmas(src, dst)
        out = np.zeros((table.shape[1], *shape), dtype=np.float16)
        for k in range(table.shape[1]):
            rows = table[:, k]
            if not rows.any():
                continue
            mask = rows[ids]
            if mask.any():
                fraction = ndimage.gaussian_filter(mask.astype(np.float32), sigma, mode="constant")
                out[k] = np.clip(resample_to_grid(fraction[None], src, dst, shape, "linear")[0], 0, 1)
        d[self.out_key] = torch.from_numpy(out)
        return d


class ClassIndicesd(MapTransform):
    """Flat voxel indices for class-balanced patch sampling: ``[background, class a, class b, ...]``.

    Every label id of the sample's dataset that maps to a class (``tables[dataset]``, as for
    :class:`SoftMultiHotd`) and is present gets its own entry; background is the body (image > 0) outside
    them. :class:`~monai.transforms.RandCropByLabelClassesd` reading this list centres a patch on each
    entry with equal probability, so a kidney is as likely a centre as the liver, which is 10x larger
    (foreground oversampling per class, as nnU-Net does), instead of picking foreground voxels uniformly.

    Writes ``d[out_key]``: a list of int64 arrays.
    """

    def __init__(self, tables: Mapping[str, np.ndarray], *, label_key: str = "label", image_key: str = "image",
                 out_key: str = "label_cls_indices") -> None:
        super().__init__([label_key])
        self.tables = {k: np.asarray(v, dtype=bool) for k, v in tables.items()}
        self.label_key, self.image_key, self.out_key = label_key, image_key, out_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        is_class = _dataset_table(self.tables, d.get("dataset"), "ClassIndicesd").any(axis=1)
        ids = convert_to_numpy(d[self.label_key])[0].ravel().astype(np.int64)
        ids = np.where((ids > 0) & (ids < is_class.shape[0]), ids, 0)
        ids = np.where(is_class[ids], ids, 0)
        # one stable sort groups the voxels by id, each group in ascending voxel order
        order = np.argsort(ids, kind="stable")
        present, starts = np.unique(ids[order], return_index=True)
        groups = dict(zip(present.tolist(), np.split(order, starts[1:])))
        background = groups.pop(0, np.zeros(0, dtype=np.int64))
        body = convert_to_numpy(d[self.image_key])[0].ravel() > 0
        d[self.out_key] = [background[body[background]], *groups.values()]
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
                          check_ct: bool = True, class_tables: Mapping[str, np.ndarray] | None = None,
                          soft_tables: Mapping[str, np.ndarray] | None = None) -> Compose:
    """Deterministic part: load, RAS, resample to ``spacing`` mm, window HU to [0, 1], crop to the body.

    Args:
        spacing: target voxel size (mm) along x, y, z.
        with_label: also load and transform ``"label"`` (nearest-neighbour resampling).
        crop_foreground: crop to the bounding box of the body.
        pad_to: pad (zeros) so every axis is at least this long (the patch size for training).
        hu_window: HU mapped to 0 and 1 (clipped).
        check_ct: reject inputs that are not CT.
        class_tables: dataset -> lookup table; precompute ``label_cls_indices`` (:class:`ClassIndicesd`) for
            class-balanced patch sampling (the input dict then needs ``"dataset"``).
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
        chain.append(_KeepNatived())
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
        if class_tables is not None:
            chain.append(ClassIndicesd(class_tables))
    if soft:
        chain.append(SoftMultiHotd(soft_tables))
        chain.append(DeleteItemsd(keys="native_ids"))
    return Compose(chain)


def augment_transforms(patch_size: Sequence[int], *, samples_per_volume: int = 1, intensity_scale: float = 0.1,
                       intensity_shift: float = 0.05, soft: bool = False) -> Compose:
    """Random part: class-balanced patch sampling and light intensity jitter (no flips).

    A patch is centred on a random voxel of a random entry of ``label_cls_indices`` (background or one of
    the labelled classes present, equally likely; see :class:`ClassIndicesd`). ``soft=True`` crops
    ``soft_label`` (see :class:`SoftMultiHotd`) with the same windows.

    Returns:
        A Compose producing a list of ``samples_per_volume`` dicts with ``patch_size`` patches.
    """
    if len(patch_size) != 3 or any(int(p) <= 0 for p in patch_size):
        raise InvalidInputError(f"patch_size {patch_size}: expected three positive voxel counts")
    return Compose([
        RandCropByLabelClassesd(
            keys=["image", "label", "soft_label"] if soft else ["image", "label"], label_key="label",
            spatial_size=tuple(int(p) for p in patch_size), num_samples=samples_per_volume,
            indices_key="label_cls_indices", allow_smaller=False, warn=False,
        ),
        RandScaleIntensityd(keys="image", factors=intensity_scale, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=intensity_shift, prob=0.5),
    ])
