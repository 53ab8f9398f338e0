"""Partially labelled CT segmentation data: datalists, the dataset, collate and balanced sampling.

A datalist is Decathlon-style JSON::

    {"label_maps": {"phantom-A": {"1": "liver", "2": "liver_tumour"}},      # optional, extends the template
     "training":   [{"image": "imgs/a.nii.gz", "label": "labs/a.nii.gz", "dataset": "phantom-A"}, ...],
     "validation": [...], "test": [...]}

Paths are relative to the datalist's folder (absolute paths are kept); ``image`` is a NIfTI file or a DICOM
series folder. ``dataset`` names a label map of the class template (``BTCV``, ``KiTS``, ``TotalSegmentator``,
...) or one given in ``label_maps``. Each sample's integer label map becomes a multi-hot over the dataset's
class list plus a ``label_mask`` of the classes its source dataset annotates.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medmoe.data.dataset import BadSample, sample_seed
from medmoe.errors import InvalidInputError, MedMoEError
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.transforms import augment_transforms, preprocess_transforms

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
        seen: dict[str, None] = {}
        for entries in self.splits.values():
            for e in entries:
                seen.setdefault(e["dataset"], None)
        return list(seen)

    def class_names(self, datasets: Iterable[str] | None = None) -> list[str]:
        """Template classes labelled by at least one of ``datasets`` (default: all of the datalist), in
        template order: the channel order of this datalist's multi-hot labels."""
        labelled: set[str] = set()
        for d in self.datasets if datasets is None else datasets:
            labelled.update(self.template.labelled_classes(d))
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
        entries = []
        for i, e in enumerate(raw):
            if not isinstance(e, dict) or "image" not in e or "dataset" not in e:
                raise InvalidInputError(f"{path}: {split}[{i}] = {e!r}; expected an object with image, label, dataset")
            entry = {"image": str(root / e["image"]), "dataset": template.dataset_name(e["dataset"])}
            if e.get("label"):
                entry["label"] = str(root / e["label"])
            entries.append(entry)
        splits[split] = entries
    if not splits:
        raise InvalidInputError(f"{path}: no 'training', 'validation' or 'test' list")
    return Datalist(path=path, splits=splits, template=template, label_maps=label_maps)


class SegDataset(Dataset):
    """CT volumes with partial labels, preprocessed once (optionally cached) and randomly cropped per item.

    With ``train=True`` an item is a list of ``samples_per_volume`` patch dicts; otherwise one dict with the
    whole preprocessed volume. Each dict holds:

    - ``image``: (1, X, Y, Z) float32 in [0, 1] (HU window), RAS, at ``spacing``;
    - ``label``: (K, X, Y, Z) float32 multi-hot over :attr:`class_names`;
    - ``label_mask``: (K,) bool, classes the source dataset annotates;
    - ``dataset``: canonical dataset name; ``path``: the image path.

    A volume that cannot be read or transformed yields a :class:`BadSample` instead.

    With ``balance=True`` every source dataset gets the same share of each epoch: the dataset has
    ``n_sources * max(items per source)`` virtual indices; index i draws source ``i % n_sources`` and walks
    a per-epoch permutation of that source's items. The trainer's shuffled sampler then sees the sources
    uniformly, and all randomness is a function of ``(seed, epoch, index)`` (exact resume).

    Args:
        entries: datalist entries with absolute paths (see :func:`load_datalist`).
        template: class template with every entry's dataset registered.
        class_names: channel order of ``label`` (default: classes labelled by the entries' datasets).
        patch_size: training patch (voxels); volumes are padded to at least this size.
        spacing: target voxel size in mm.
        train: random patches + augmentation; False returns whole volumes.
        cache: preprocess every volume up front and keep it in memory.
        seed: base seed of the per-item randomness.
        samples_per_volume: patches drawn from a volume per item (``train`` only).
        balance: uniform sampling across source datasets (``train`` only).
        progress: tqdm bar while caching.
        soft_labels: ``label`` holds each class's partial-volume fraction of a voxel (in [0, 1], footprint-averaged
            native-grid masks, see :class:`~medmoe.seg.transforms.SoftMultiHotd`) instead
            of the nearest-neighbour multi-hot. Costs K float16 channels per cached volume.
    """

    def __init__(self, entries: Sequence[dict[str, str]], template: ClassTemplate, *,
                 class_names: Sequence[str] | None = None, patch_size: Sequence[int] = (96, 96, 96),
                 spacing: Sequence[float] = DEFAULT_SPACING, train: bool = True, cache: bool = True, seed: int = 0,
                 samples_per_volume: int = 1, balance: bool | None = None, progress: bool = True,
                 soft_labels: bool = False) -> None:
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
        self.samples_per_volume = samples_per_volume if train else 1
        self.masks = {d: template.label_mask(d, self.class_names) for d in datasets}
        self.tables = {d: torch.from_numpy(template.lookup_table(d, self.class_names)) for d in datasets}
        self.soft_labels = soft_labels
        tables = {d: t.numpy() for d, t in self.tables.items()}
        self.preprocess = preprocess_transforms(self.spacing, pad_to=self.patch_size if train else None,
                                                class_tables=tables if train else None,
                                                soft_tables=tables if soft_labels else None)
        self.augment = (augment_transforms(self.patch_size, samples_per_volume=self.samples_per_volume,
                                           soft=soft_labels) if train else None)
        self.balance = train and (len(datasets) > 1 if balance is None else balance)
        self.sources = {d: [i for i, e in enumerate(self.entries) if e["dataset"] == d] for d in datasets}
        self._cache: dict[int, dict | BadSample] = {}
        self.n_bad = 0
        if cache:
            for i in tqdm(range(len(self.entries)), desc="caching CT volumes", disable=not progress):
                self._cache[i] = self._load(i)

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
    def _load(self, i: int) -> dict | BadSample:
        entry = self.entries[i]
        try:
            if "label" not in entry:
                raise InvalidInputError("entry has no label file")
            out = self.preprocess({"image": entry["image"], "label": entry["label"], "dataset": entry["dataset"]})
            out["dataset"] = entry["dataset"]
            return out
        except (MedMoEError, RuntimeError, ValueError, OSError, KeyError, IndexError) as err:
            # MONAI wraps a reader's exception in RuntimeError("applying transform ..."); report the root cause.
            root = err
            while root.__cause__ is not None:
                root = root.__cause__
            self.n_bad += 1
            reason = f"{type(root).__name__}: {root}"
            logger.warning("skipping %s: %s", entry["image"], reason)
            return BadSample(index=i, path=entry["image"], reason=reason, dataset=entry["dataset"])

    def volume(self, i: int) -> dict | BadSample:
        """Preprocessed volume of entry ``i`` (from the cache when cached)."""
        return self._cache[i] if i in self._cache else self._load(i)

    def _finish(self, d: dict, dataset: str, path: str) -> dict[str, Any]:
        image = d["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        if "soft_label" in d:
            return {"image": image.float().contiguous(), "label": d["soft_label"].float().contiguous(),
                    "label_mask": self.masks[dataset].clone(), "dataset": dataset, "path": path}
        label = d["label"]
        label = label.as_tensor() if hasattr(label, "as_tensor") else torch.as_tensor(label)
        ids = label[0].long()
        table = self.tables[dataset]
        if ids.numel() and int(ids.max()) >= table.shape[0]:
            logger.debug("%s: label ids above the %s map are background", path, dataset)
            ids = torch.where(ids < table.shape[0], ids, torch.zeros_like(ids))
        multi_hot = table[ids].permute(3, 0, 1, 2).float().contiguous()
        return {"image": image.float().contiguous(), "label": multi_hot, "label_mask": self.masks[dataset].clone(),
                "dataset": dataset, "path": path}

    def __getitem__(self, index: int) -> dict[str, Any] | list[dict[str, Any]] | BadSample:
        i = self.entry_index(index)
        entry = self.entries[i]
        vol = self.volume(i)
        if isinstance(vol, BadSample):
            return vol
        if not self.train:
            return self._finish(vol, entry["dataset"], entry["image"])
        self.augment.set_random_state(seed=sample_seed(self.seed, self.epoch, index) % (2**32))
        try:
            patches = self.augment(dict(vol))
        except (RuntimeError, ValueError) as err:
            return BadSample(index=i, path=entry["image"], reason=f"patch sampling failed: {err}", dataset=entry["dataset"])
        patches = patches if isinstance(patches, list) else [patches]
        return [self._finish(p, entry["dataset"], entry["image"]) for p in patches]


def build_seg_dataset(datalist_path: str | os.PathLike, split: str = "training", *,
                      patch_size: Sequence[int] = (96, 96, 96), spacing: Sequence[float] = DEFAULT_SPACING,
                      cache: bool = True, train: bool = True, seed: int = 0, samples_per_volume: int = 1,
                      class_names: Sequence[str] | None = None, balance: bool | None = None,
                      template: ClassTemplate | None = None, progress: bool = True,
                      soft_labels: bool = False) -> SegDataset:
    """The :class:`SegDataset` of one split of a datalist.

    The channel order defaults to the classes labelled by any dataset of the whole datalist (every split),
    so training and validation datasets built from one datalist agree.

    Example:
        >>> ds = build_seg_dataset("samples/phantoms/datalist.json", "training", patch_size=(48, 48, 48),
        ...                        spacing=(3.0, 3.0, 3.0))
        >>> batch = seg_collate([ds[0], ds[1]])
        >>> batch["image"].shape, batch["label"].shape          # (2, 1, 48, 48, 48), (2, K, 48, 48, 48)
    """
    datalist = load_datalist(datalist_path, template)
    names = list(class_names) if class_names is not None else datalist.class_names()
    return SegDataset(datalist.entries(split), datalist.template, class_names=names, patch_size=patch_size,
                      spacing=spacing, train=train, cache=cache, seed=seed, samples_per_volume=samples_per_volume,
                      balance=balance, progress=progress, soft_labels=soft_labels)


def seg_collate(samples: Sequence[Any]) -> dict[str, Any]:
    """Stack samples (items may be lists of patches) into a batch; :class:`BadSample` go to ``"bad"``.

    Returns:
        {"image": (B, 1, X, Y, Z), "label": (B, K, X, Y, Z), "label_mask": (B, K), "dataset": [B],
        "path": [B], "bad": [BadSample...]}; with no good sample the tensors have B = 0.
    """
    flat: list[dict[str, Any]] = []
    bad: list[Any] = []
    for s in samples:
        for item in s if isinstance(s, list) else [s]:
            (flat if isinstance(item, dict) else bad).append(item)
    batch: dict[str, Any] = {"bad": bad}
    if not flat:
        batch.update(image=torch.empty(0), label=torch.empty(0), label_mask=torch.empty(0, dtype=torch.bool),
                     dataset=[], path=[])
        return batch
    shapes = {tuple(f["image"].shape) for f in flat}
    if len(shapes) > 1:
        raise InvalidInputError(f"cannot batch volumes of different shapes {sorted(shapes)}; use batch size 1 "
                                "for whole volumes or train=True patches")
    batch["image"] = torch.stack([f["image"] for f in flat])
    batch["label"] = torch.stack([f["label"] for f in flat])
    batch["label_mask"] = torch.stack([f["label_mask"] for f in flat])
    batch["dataset"] = [f["dataset"] for f in flat]
    batch["path"] = [f["path"] for f in flat]
    return batch


def dataset_weights(dataset: SegDataset) -> torch.Tensor:
    """(len(entries),) sampling weights giving every source dataset the same total weight (for a
    ``WeightedRandomSampler`` over the unbalanced dataset)."""
    counts = {d: len(v) for d, v in dataset.sources.items()}
    return torch.tensor([1.0 / counts[e["dataset"]] for e in dataset.entries], dtype=torch.double)
