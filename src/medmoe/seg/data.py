"""Partially labelled CT segmentation data: datalists, the dataset, collate and balanced sampling.

A datalist is Decathlon-style JSON::

    {"label_maps": {"phantom-A": {"1": "liver", "2": "liver_tumour"}},      # optional, extends the template
     "training":   [{"image": "imgs/a.nii.gz", "label": "labs/a.nii.gz", "dataset": "phantom-A"}, ...],
     "validation": [...], "test": [...]}

Paths are relative to the datalist's folder (absolute paths are kept); ``image`` is a NIfTI file or a DICOM
series folder. ``dataset`` names a label map of the class template (``BTCV``, ``KiTS``, ``TotalSegmentator``,
...) or one given in ``label_maps``. Each sample keeps its integer label ids, with its dataset's lookup table
(label id -> classes) and a ``label_mask`` of the classes its source dataset annotates; a training batch
becomes a multi-hot over the prompted classes only on the device (:func:`expand_labels`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from medmoe.data.dataset import BadSample, sample_seed
from medmoe.errors import InvalidInputError, MedMoEError
from medmoe.seg.cache import (
    DEFAULT_MAX_LOCATIONS,
    CachedVolume,
    VolumeCache,
    default_cache_dir,
    failure_reason,
)
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.patches import centre_groups, crop, patch_starts
from medmoe.seg.transforms import HU_WINDOW, Augmentation, preprocess_transforms

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")
DEFAULT_SPACING = (1.5, 1.5, 1.5)


@dataclass
class Datalist:
    """A parsed datalist.

    Attributes:
        path: the JSON file.
        splits: split name -> entries with absolute ``image`` / ``label`` paths and ``dataset``.
        template: the default class template with the datalist's own ``label_maps`` registered.
        label_maps: the datalist's own label maps (dataset -> {id: class}).
    """

    path: Path
    splits: dict[str, list[dict[str, str]]]
    template: ClassTemplate
    label_maps: dict[str, dict[int, str]] = field(default_factory=dict)

    def entries(self, split: str) -> list[dict[str, str]]:
        if split not in self.splits:
            raise InvalidInputError(f"{self.path}: no split {split!r}; it has {sorted(self.splits)}")
        return self.splits[split]

    @property
    def datasets(self) -> list[str]:
        """Canonical names of every dataset used in any split, in order of appearance."""
        return list(dict.fromkeys(e["dataset"] for entries in self.splits.values() for e in entries))

    def class_names(self, datasets: Iterable[str] | None = None) -> list[str]:
        """Template classes labelled by at least one of ``datasets`` (default: all of the datalist), in
        template order: the channel order of this datalist's multi-hot labels."""
        datasets = self.datasets if datasets is None else datasets
        labelled = set().union(*map(self.template.labelled_classes, datasets))
        return [n for n in self.template.names if n in labelled]


def load_datalist(path: str | os.PathLike, template: ClassTemplate | None = None) -> Datalist:
    """Read and validate a datalist; relative paths are resolved against its folder.

    Args:
        path: the JSON file.
        template: class template to extend (default :meth:`ClassTemplate.default`; it is modified in place
            when given).

    Raises:
        InvalidInputError: unreadable JSON, entries lacking ``image``/``dataset``, unknown datasets.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise InvalidInputError(f"{path}: datalist not found") from err
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"{path}: not a JSON datalist ({err})") from err
    if not isinstance(doc, dict):
        raise InvalidInputError(f"{path}: expected a JSON object with 'training'/'validation'/'test' lists")
    template = template or ClassTemplate.default()
    label_maps: dict[str, dict[int, str]] = {}
    for name, labels in (doc.get("label_maps") or {}).items():
        if isinstance(labels, dict) and "labels" in labels:
            labels = labels["labels"]
        template.register_label_map(name, labels)
        label_maps[name] = template.label_map(name)
    root = path.parent
    splits: dict[str, list[dict[str, str]]] = {}
    for split in SPLITS:
        raw = doc.get(split)
        if raw is None:
            continue
        if not isinstance(raw, list):
            raise InvalidInputError(f"{path}: {split!r} must be a list of entries")
        entries = splits[split] = []
        for i, e in enumerate(raw):
            if not isinstance(e, dict) or "image" not in e or "dataset" not in e:
                raise InvalidInputError(f"{path}: {split}[{i}] = {e!r}; expected an object with image, label, dataset")
            entry = {"image": str(root / e["image"]), "dataset": template.dataset_name(e["dataset"])}
            if e.get("label"):
                entry["label"] = str(root / e["label"])
            entries.append(entry)
    if not splits:
        raise InvalidInputError(f"{path}: no 'training', 'validation' or 'test' list")
    return Datalist(path=path, splits=splits, template=template, label_maps=label_maps)


class SegDataset(Dataset):
    """CT volumes with partial labels: preprocessed once into a disk cache, read back one patch at a time.

    With ``train=True`` an item is a list of ``samples_per_volume`` patch dicts; otherwise one dict with the
    whole preprocessed volume. A training patch dict holds:

    - ``image``: (1, X, Y, Z) float32 in [0, 1] (HU window), RAS, at ``spacing``;
    - ``label_ids``: (1, X, Y, Z) int16 label ids of the source dataset after augmentation (ids its label map
      lacks are 0, background); 2 bytes per voxel, where a float32 multi-hot over K = 117 classes is 468;
    - ``label_table``: (R, K) bool, the dataset's lookup table over :attr:`class_names` (row i: the classes
      of label id i; organs include their lesions), so ``label_table[label_ids]`` is the multi-hot;
    - ``soft_label``: (K, X, Y, Z) float16 class fractions, with ``soft_labels`` only;
    - ``label_mask``: (K,) bool, classes the source dataset annotates;
    - ``dataset``: canonical dataset name; ``path``: the image path.

    A whole-volume item (``train=False``) holds the same ``label_ids`` and ``label_table`` (when the entry has
    a label) and ``affine``; :meth:`class_mask` gives one class's mask.

    A volume that cannot be read or transformed yields a :class:`~medmoe.data.dataset.BadSample` instead.

    Memory per process does not grow with the number of volumes: the deterministic preprocessing is stored in
    ``cache_dir`` (see :mod:`medmoe.seg.cache`) and each item copies only its patches out of memory maps;
    patch centres come from at most ``max_locations`` stored voxels per class (int32). :meth:`prepare`
    fills the cache before training, each rank its own share of the volumes with a pool of workers.

    With ``balance=True`` every source dataset gets the same share of each epoch: the dataset has
    ``n_sources * max(items per source)`` virtual indices; index i draws source ``i % n_sources`` and walks
    a per-epoch permutation of that source's items. The trainer's shuffled sampler then sees the sources
    uniformly, and all randomness is a function of ``(seed, epoch, index)`` (exact resume).

    Args:
        entries: datalist entries with absolute paths (see :func:`load_datalist`).
        template: class template with every entry's dataset registered.
        class_names: channel order of ``label`` (default: classes labelled by the entries' datasets).
        patch_size: training patch (voxels); volumes smaller than it are zero-padded.
        spacing: target voxel size in mm.
        train: random patches + augmentation; False returns whole volumes.
        cache: store preprocessed volumes in ``cache_dir`` (False: preprocess at every access).
        cache_dir: the cache folder (default :func:`~medmoe.seg.cache.default_cache_dir`).
        max_locations: most patch-centre voxels kept per class and volume.
        seed: base seed of the per-item randomness.
        samples_per_volume: patches drawn from a volume per item (``train`` only).
        balance: uniform sampling across source datasets (``train`` only).
        progress: tqdm bar in :meth:`prepare`.
        soft_labels: also give ``soft_label``, each class's partial-volume fraction of a voxel (in [0, 1],
            footprint-averaged native-grid masks, see :class:`~medmoe.seg.transforms.SoftMultiHotd`), which
            the task trains against instead of the nearest-neighbour multi-hot. Costs K float16 channels per
            cached volume and per patch.
        augmentation: random changes to training patches (:class:`~medmoe.seg.transforms.Augmentation`).
    """

    def __init__(self, entries: Sequence[dict[str, str]], template: ClassTemplate, *,
                 class_names: Sequence[str] | None = None, patch_size: Sequence[int] = (96, 96, 96),
                 spacing: Sequence[float] = DEFAULT_SPACING, train: bool = True, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None, max_locations: int = DEFAULT_MAX_LOCATIONS,
                 seed: int = 0, samples_per_volume: int = 1, balance: bool | None = None, progress: bool = True,
                 soft_labels: bool = False, augmentation: Augmentation | None = None) -> None:
        if not entries:
            raise InvalidInputError("SegDataset: no entries (is the datalist split empty?)")
        if samples_per_volume < 1:
            raise InvalidInputError(f"samples_per_volume {samples_per_volume}: expected >= 1")
        self.entries = list(entries)
        self.template = template
        datasets = list(dict.fromkeys(e["dataset"] for e in self.entries))
        if class_names is None:
            labelled = set().union(*(template.labelled_classes(d) for d in datasets))
            class_names = [n for n in template.names if n in labelled]
        self.class_names = list(class_names)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.spacing = tuple(float(s) for s in spacing)
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.progress = progress
        self.samples_per_volume = samples_per_volume if train else 1
        self.masks = {d: template.label_mask(d, self.class_names) for d in datasets}
        self.tables = {d: torch.from_numpy(template.lookup_table(d, self.class_names)) for d in datasets}
        self.is_class = {d: t.any(dim=1).numpy() for d, t in self.tables.items()}
        self.soft_labels = soft_labels and train
        tables = {d: t.numpy() for d, t in self.tables.items()}
        preprocess = preprocess_transforms(self.spacing, soft_tables=tables if self.soft_labels else None)
        settings = {"spacing": self.spacing, "hu_window": HU_WINDOW, "crop_foreground": True,
                    "soft_labels": ({d: [self.class_names, t.tolist()] for d, t in tables.items()}
                                    if self.soft_labels else None)}
        self.cache = VolumeCache((cache_dir or default_cache_dir()) if cache else None, settings, preprocess,
                                 max_locations=max_locations)
        self.augmentation = augmentation or Augmentation()
        self.augment = self.augmentation.transforms(self.patch_size, soft=self.soft_labels) if train else None
        self.balance = train and (len(datasets) > 1 if balance is None else balance)
        self.sources = {d: [i for i, e in enumerate(self.entries) if e["dataset"] == d] for d in datasets}
        self.n_bad = 0

    # ------------------------------------------------------------------ sizes and indices
    def __len__(self) -> int:
        if self.balance:
            return len(self.sources) * max(len(v) for v in self.sources.values())
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose randomness (crops, augmentation, balanced item order) items draw from."""
        self.epoch = int(epoch)

    def entry_index(self, index: int) -> int:
        """The entry that virtual ``index`` reads in the current epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        if not self.balance:
            return index
        names = list(self.sources)
        items = self.sources[names[index % len(names)]]
        round_ = index // len(names)
        rng = np.random.default_rng([self.seed, self.epoch, len(names), index % len(names), round_ // len(items)])
        return items[int(rng.permutation(len(items))[round_ % len(items)])]

    # ------------------------------------------------------------------ loading
    def prepare(self, *, rank: int = 0, world_size: int = 1, workers: int = 0) -> dict[str, int]:
        """Preprocess into the cache the volumes of this rank's share (entries ``rank::world_size``) that are
        not there yet, ``workers`` processes at a time. Other ranks fill the rest; a volume missing when an
        item needs it is built then.

        Returns:
            {"built": volumes preprocessed now, "cached": already there, "bad": failures (logged)}.
        """
        if self.cache.folder is None:
            return {"built": 0, "cached": 0, "bad": 0}
        mine = list(range(rank, len(self.entries), world_size))
        todo = [i for i in mine if not self.cache.cached(self.entries[i])]
        counts = {"built": 0, "cached": len(mine) - len(todo), "bad": 0}
        if not todo:
            return counts
        loader = DataLoader(_Preparer(self, todo), batch_size=None, num_workers=workers)
        for reason in tqdm(loader, total=len(todo), desc=f"preprocessing CTs into {self.cache.folder}",
                           disable=not self.progress):
            counts["bad" if reason else "built"] += 1
        return counts

    def volume(self, i: int) -> CachedVolume | BadSample:
        """Preprocessed volume of entry ``i`` (memory-mapped from the cache; built first when missing)."""
        entry = self.entries[i]
        try:
            if "label" not in entry and self.train:
                raise InvalidInputError("entry has no label file")
            return self.cache.load(entry)
        except (MedMoEError, RuntimeError, ValueError, OSError, KeyError, IndexError) as err:
            self.n_bad += 1
            reason = failure_reason(err)
            logger.warning("skipping %s: %s", entry["image"], reason)
            return BadSample(index=i, path=entry["image"], reason=reason, dataset=entry["dataset"])

    def _labels(self, ids: Any, dataset: str, path: str) -> dict[str, torch.Tensor]:
        """``label_ids`` (1, X, Y, Z) int16 of a (1, X, Y, Z) id volume and the dataset's ``label_table``."""
        ids = torch.from_numpy(np.asarray(_plain(ids) if isinstance(ids, torch.Tensor) else ids).astype(np.int16))
        table = self.tables[dataset]
        outside = (ids < 0) | (ids >= table.shape[0])
        if outside.any():
            logger.debug("%s: label ids outside the %s map are background", path, dataset)
            ids = ids.masked_fill(outside, 0)
        return {"label_ids": ids.contiguous(), "label_table": table}

    def class_mask(self, item: dict[str, Any], k: int) -> torch.Tensor:
        """(X, Y, Z) bool mask of class ``class_names[k]`` in an item (``label_ids``)."""
        return self.tables[item["dataset"]][:, k][item["label_ids"][0].long()]

    def _patches(self, vol: CachedVolume, dataset: str, path: str, index: int) -> list[dict[str, Any]]:
        seed = sample_seed(self.seed, self.epoch, index)
        groups = centre_groups(vol.locations, self.is_class[dataset], edge=self.augmentation.edge_patches)
        size = self.augmentation.crop_size(self.patch_size)
        starts = patch_starts(vol.shape, size, groups, self.samples_per_volume,
                              np.random.RandomState(seed % 2**32))
        self.augment.set_random_state(seed=(seed >> 32) % 2**32)
        out = []
        for start in starts:
            d = {"image": torch.from_numpy(crop(vol.image, start, size)),
                 "label": torch.from_numpy(crop(vol.label, start, size))}
            if self.soft_labels:
                d["soft_label"] = torch.from_numpy(crop(vol.soft, start, size).astype(np.float32))
            d = self.augment(d)
            item = {"image": _plain(d["image"]).float().contiguous(), **self._labels(d["label"], dataset, path),
                    "label_mask": self.masks[dataset].clone(), "dataset": dataset, "path": path}
            if self.soft_labels:
                item["soft_label"] = _plain(d["soft_label"]).to(torch.float16).contiguous()
            out.append(item)
        return out

    def __getitem__(self, index: int) -> dict[str, Any] | list[dict[str, Any]] | BadSample:
        i = self.entry_index(index)
        entry = self.entries[i]
        vol = self.volume(i)
        if isinstance(vol, BadSample):
            return vol
        dataset = entry["dataset"]
        if not self.train:
            item = {"image": torch.from_numpy(np.array(vol.image, dtype=np.float32)),
                    "label_mask": self.masks[dataset].clone(), "dataset": dataset, "path": entry["image"],
                    "affine": vol.affine}
            if vol.label is not None:
                item.update(self._labels(vol.label, dataset, entry["image"]))
            return item
        try:
            return self._patches(vol, dataset, entry["image"], index)
        except (RuntimeError, ValueError) as err:
            return BadSample(index=i, path=entry["image"], reason=f"patch sampling failed: {err}", dataset=dataset)


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor of an augmentation output (a MONAI MetaTensor's data without its metadata)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


class _Preparer(Dataset):
    """Builds cache entries in DataLoader workers; yields "" or the failure reason."""

    def __init__(self, dataset: SegDataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> str:
        vol = self.dataset.volume(self.indices[j])
        return vol.reason if isinstance(vol, BadSample) else ""


def build_seg_dataset(datalist_path: str | os.PathLike, split: str = "training", *,
                      patch_size: Sequence[int] = (96, 96, 96), spacing: Sequence[float] = DEFAULT_SPACING,
                      cache: bool = True, cache_dir: str | os.PathLike | None = None, train: bool = True,
                      seed: int = 0, samples_per_volume: int = 1, class_names: Sequence[str] | None = None,
                      balance: bool | None = None, template: ClassTemplate | None = None, progress: bool = True,
                      soft_labels: bool = False, augmentation: Augmentation | None = None,
                      max_locations: int = DEFAULT_MAX_LOCATIONS) -> SegDataset:
    """The :class:`SegDataset` of one split of a datalist.

    The channel order defaults to the classes labelled by any dataset of the whole datalist (every split),
    so training and validation datasets built from one datalist agree.

    Example:
        >>> ds = build_seg_dataset("samples/phantoms/datalist.json", "training", patch_size=(48, 48, 48),
        ...                        spacing=(3.0, 3.0, 3.0), cache_dir="cache/")
        >>> batch = seg_collate([ds[0], ds[1]])
        >>> batch["image"].shape, batch["label_ids"].shape      # (2, 1, 48, 48, 48) float32, int16
        >>> expand_labels(batch["label_ids"], batch["label_table"]).shape   # (2, len(batch["active"]), 48, 48, 48)
    """
    datalist = load_datalist(datalist_path, template)
    names = list(class_names) if class_names is not None else datalist.class_names()
    return SegDataset(datalist.entries(split), datalist.template, class_names=names, patch_size=patch_size,
                      spacing=spacing, train=train, cache=cache, cache_dir=cache_dir, seed=seed,
                      samples_per_volume=samples_per_volume, balance=balance, progress=progress,
                      soft_labels=soft_labels, augmentation=augmentation, max_locations=max_locations)


def seg_collate(samples: Sequence[Any]) -> dict[str, Any]:
    """Stack samples (items may be lists of patches) into a batch; :class:`BadSample` go to ``"bad"``.

    The labels stay compact: each sample's ids are shifted by the row offset of its dataset's table in one
    batch table, whose columns are the batch's ``active`` classes only, so the device expands the multi-hot
    of exactly the prompted classes (:func:`expand_labels`) and picks nothing by index there.

    Returns:
        - ``image`` (B, 1, X, Y, Z) float32;
        - ``label_ids`` (B, 1, X, Y, Z) int16, rows of ``label_table``;
        - ``label_table`` (R, A) bool: the tables of the batch's datasets stacked (R rows in all),
          restricted to the A active classes;
        - ``active``: list of the A channels (into ``class_names``) some sample labels, in channel order;
          ``[0]`` when no sample labels any class (its column is then unlabelled everywhere);
        - ``active_mask`` (B, A) bool: ``label_mask[:, active]``, the (sample, class) pairs the loss counts;
        - ``label_mask`` (B, K) bool; ``soft_label`` (B, A, X, Y, Z) float16 when the items have soft labels;
        - ``dataset``, ``path``: lists of B strings; ``bad``: the :class:`BadSample` items.

        With no good sample, ``image`` is empty (B = 0) and so is every other field.
    """
    flat: list[dict[str, Any]] = []
    bad: list[Any] = []
    for s in samples:
        for item in s if isinstance(s, list) else [s]:
            (flat if isinstance(item, dict) else bad).append(item)
    if not flat:
        empty = torch.empty(0, 0, dtype=torch.bool)
        return {"bad": bad, "image": torch.empty(0), "label_ids": torch.empty(0, dtype=torch.int16),
                "label_table": empty, "active": [], "active_mask": empty, "label_mask": empty, "dataset": [],
                "path": []}
    shapes = {tuple(f["image"].shape) for f in flat}
    if len(shapes) > 1:
        raise InvalidInputError(f"cannot batch volumes of different shapes {sorted(shapes)}; use batch size 1 "
                                "for whole volumes or train=True patches")
    label_mask = torch.stack([f["label_mask"] for f in flat])
    active = label_mask.any(dim=0).nonzero().flatten().tolist() or [0]
    tables = {f["dataset"]: f["label_table"] for f in flat}  # one per dataset, in order of appearance
    offsets = dict(zip(tables, itertools.accumulate(map(len, tables.values()), initial=0)))
    tables = list(tables.values())
    batch = {"bad": bad, "image": torch.stack([f["image"] for f in flat]),
             "label_ids": torch.stack([f["label_ids"] + offsets[f["dataset"]] for f in flat]),
             "label_table": torch.cat(tables)[:, active], "active": active, "active_mask": label_mask[:, active],
             "label_mask": label_mask, "dataset": [f["dataset"] for f in flat], "path": [f["path"] for f in flat]}
    if "soft_label" in flat[0]:
        batch["soft_label"] = torch.stack([f["soft_label"][active] for f in flat])
    return batch


def expand_labels(label_ids: torch.Tensor, label_table: torch.Tensor) -> torch.Tensor:
    """(B, A, X, Y, Z) bool multi-hot of a batch's ``label_ids`` (B, 1, X, Y, Z) through its ``label_table``
    (R, A), computed where they are (on the device, with no read back to the host)."""
    return label_table[label_ids[:, 0].long()].movedim(-1, 1).contiguous()


def dataset_weights(dataset: SegDataset) -> torch.Tensor:
    """(len(entries),) sampling weights giving every source dataset the same total weight (for a
    ``WeightedRandomSampler`` over the unbalanced dataset)."""
    counts = {d: len(v) for d, v in dataset.sources.items()}
    return torch.tensor([1.0 / counts[e["dataset"]] for e in dataset.entries], dtype=torch.double)
