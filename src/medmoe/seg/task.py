"""The segmentation training task: what the shared trainer (``medmoe.train``) needs to train MoME.

It satisfies ``medmoe.train.Task`` structurally (the library never imports the trainer)::

    task = SegTask(SegTaskConfig(data="samples/phantoms/datalist.json", model="mome-nano"))
    run_training(task, args)        # in medmoe.cli.seg

Each batch mixes samples of several partially labelled datasets. Only the classes that at least one sample
of the batch labels are prompted (one batched forward over those K classes), and the loss of each
(sample, class) pair counts only where the sample's dataset labels the class. Which classes those are is
decided on the host when the batch is collated; labels travel as integer ids and become the multi-hot of
the prompted classes on the device, so a training step reads nothing back from the device.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medmoe.config import positive_int
from medmoe.errors import InvalidInputError
from medmoe.seg.loss import partial_label_loss

log = logging.getLogger(__name__)


@dataclass
class SegTaskConfig:
    """What to train on and which model.

    Attributes:
        data: Decathlon-style datalist JSON (``training`` / ``validation`` entries with ``dataset``).
        model: a registered name (``mome-nano``) or a saved model directory to continue from.
        overrides: config fields of the registered model (``{"backbone": {"feature_size": 24}}``).
        patch_size: training patch in voxels (default: the model's ``roi_size``; written into the model).
        spacing: training spacing in mm (default: the model's; written into the model).
        cache: preprocess every volume once into ``cache_dir`` and read patches from memory maps (False:
            preprocess at every access; nothing written).
        cache_dir: the preprocessed-volume cache (default ``$MEDMOE_CACHE/volumes`` or
            ``~/.cache/medmoe/volumes``); shared by runs with the same preprocessing settings.
        cache_workers: processes per rank that fill the cache before training (each rank its share).
        max_locations: most patch-centre voxels kept per class and volume (nnU-Net-style subsampling).
        augmentation: ``light`` (intensity jitter), ``strong`` (+ contrast, noise, rotation/scaling, patches at
            the body's edge), ``none``, or an :class:`~medmoe.seg.transforms.Augmentation`.
        samples_per_volume: random patches drawn per volume and item.
        balance: uniform sampling across the source datasets.
        bce_weight: weight of the binary cross-entropy term.
        dice_weight: weight of the Dice term.
        dice_reduction: ``batch`` (Dice pooled per class over the batch) or ``sample`` (per sample and class).
        balance_weight: weight of the scale-balance term (0: off; the term is still logged).
        seed: patch sampling / augmentation seed.
        pretrained: load the text tower's pretrained weights (MiniLM).
        val_split: datalist split for validation Dice (None: no validation).
        val_max_cases: validate on at most this many cases (spread over the ranks: each rank predicts its
            share and the Dice sums are reduced).
        val_overlap: sliding-window overlap at validation.
        progress: tqdm bars while caching and validating.
        soft_labels: train against partial-volume class fractions (native masks averaged over a training
            voxel's footprint) instead of nearest-neighbour labels; see :class:`~medmoe.seg.data.SegDataset`. Costs K float16
            channels per cached volume, so it suits coarse spacings and small class sets (the phantoms).
        channels_last: keep the model's 3-D conv weights channels-last (``torch.channels_last_3d``); oneDNN's
            3-D convolutions, which dominate a CPU training step, run about 1.2x faster that way. Default
            (None): on when training on the CPU, off on a GPU (where it was not measured); applied when the
            trainer moves the model to its device, before DDP wraps it.
    """

    data: str = field(metadata={"metavar": "DATALIST"})
    model: str = "mome-nano"
    overrides: dict[str, Any] = field(default_factory=dict, metadata={"example": "backbone.feature_size=24"})
    patch_size: tuple[int, int, int] | None = field(default=None, metadata={"type": positive_int,
                                                                            "metavar": ("X", "Y", "Z")})
    spacing: tuple[float, float, float] | None = field(default=None, metadata={"metavar": ("SX", "SY", "SZ")})
    cache: bool = True
    cache_dir: str | None = field(default=None, metadata={"metavar": "DIR"})
    cache_workers: int = 2
    max_locations: int = 10_000
    augmentation: Any = field(default="light", metadata={"option": "--augment",
                                                          "choices": ("light", "strong", "none")})
    samples_per_volume: int = 1
    balance: bool = True
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    dice_reduction: str = field(default="batch", metadata={"choices": ("batch", "sample")})
    balance_weight: float = 0.0
    seed: int = 0
    pretrained: bool = True
    val_split: str | None = "validation"
    val_max_cases: int = 8
    val_overlap: float = 0.25
    progress: bool = True
    soft_labels: bool = False
    channels_last: bool | None = None


def dice_scores(pred: Tensor, target: Tensor) -> Tensor:
    """(K,) Dice of binary (K, *S) masks; NaN where both are empty (nothing to find, nothing found)."""
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter = (pred * target).sum(1)
    total = pred.sum(1) + target.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.full_like(total, math.nan))


class SegTask:
    """MoME partial-label segmentation for :func:`medmoe.train.run_training`."""

    def __init__(self, config: SegTaskConfig) -> None:
        self.config = config
        if not Path(config.data).is_file():
            raise InvalidInputError(f"--data {config.data}: datalist not found")
        from medmoe.seg.check import quick_check

        # the checks that read no voxel; shapes, affines, label values and duplicates need `medmoe seg check`
        n = quick_check(config.data, splits=tuple(s for s in ("training", config.val_split) if s))
        log.info("%s: %d entries, every file present and every dataset known; `medmoe seg check %s` also checks "
                 "shapes, affines, label values and duplicates", config.data, n, config.data)
        if config.samples_per_volume < 1:
            raise InvalidInputError(f"samples_per_volume {config.samples_per_volume}: expected >= 1")
        self._train_ds = None
        self._val_ds = None
        self.class_names: list[str] | None = None
        self.patch_size: tuple[int, int, int] | None = None
        self.spacing: tuple[float, float, float] | None = None

    # ------------------------------------------------------------------ model and data
    def build_model(self) -> nn.Module:
        cfg = self.config
        overrides = dict(cfg.overrides)
        if cfg.patch_size is not None:
            overrides["roi_size"] = tuple(int(p) for p in cfg.patch_size)
        if cfg.spacing is not None:
            overrides["spacing"] = tuple(float(s) for s in cfg.spacing)
        from medmoe.registry import create_model

        # A saved folder (fine-tuning) keeps its roi_size and spacing: create_model refuses other values.
        model = create_model(cfg.model, pretrained=cfg.pretrained, family="mome", **overrides).train()
        self.patch_size = tuple(model.config.roi_size)
        self.spacing = tuple(model.config.spacing)
        return model

    def channels_last(self, device: torch.device) -> bool:
        """Whether the model trains with channels-last 3-D weights on ``device`` (the config's choice, else
        only on the CPU)."""
        return self.config.channels_last if self.config.channels_last is not None else device.type == "cpu"

    def to_device(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` on ``device``, its conv weights channels-last if :meth:`channels_last` says so (the trainer
        calls this before DDP wraps the model, so that DDP's gradient buckets take the weights' layout)."""
        model = model.to(device)
        if self.channels_last(device):
            model = model.to(memory_format=torch.channels_last_3d)
        return model

    def _geometry(self) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        if self.patch_size is None:
            from medmoe.registry import build_config

            cfg = self.config
            base = (build_config(cfg.model, **cfg.overrides) if not Path(cfg.model).is_dir() else None)
            self.patch_size = tuple(cfg.patch_size or (base.roi_size if base else (96, 96, 96)))
            self.spacing = tuple(cfg.spacing or (base.spacing if base else (1.5, 1.5, 1.5)))
        return self.patch_size, self.spacing

    def _dataset(self, split: str, train: bool):
        from medmoe.seg.data import build_seg_dataset
        from medmoe.seg.transforms import Augmentation

        patch, spacing = self._geometry()
        cfg = self.config
        return build_seg_dataset(cfg.data, split, patch_size=patch, spacing=spacing, cache=cfg.cache,
                                 cache_dir=cfg.cache_dir, train=train, seed=cfg.seed,
                                 samples_per_volume=cfg.samples_per_volume, balance=cfg.balance,
                                 progress=cfg.progress, soft_labels=cfg.soft_labels and train,
                                 augmentation=(cfg.augmentation if isinstance(cfg.augmentation, Augmentation)
                                               else Augmentation.named(cfg.augmentation)),
                                 max_locations=cfg.max_locations,
                                 class_names=None if train else self.class_names)

    def train_dataset(self) -> Dataset:
        """The training dataset; its volumes are preprocessed into the cache first, each rank its share."""
        from medmoe.distributed import barrier, rank, world_size

        if self._train_ds is None:
            ds = self._dataset("training", train=True)
            counts = ds.prepare(rank=rank(), world_size=world_size(), workers=self.config.cache_workers)
            barrier()
            self._train_ds = ds
            self.class_names = list(ds.class_names)
            log.info("training on %d volumes of %s; %d classes: %s; cache %s (this rank: %s)", len(ds.entries),
                     sorted(ds.sources), len(self.class_names), ", ".join(self.class_names),
                     ds.cache.folder, counts)
        return self._train_ds

    def collate(self, samples: list[Any]) -> dict[str, Any]:
        from medmoe.seg.data import seg_collate

        return seg_collate(samples)

    # ------------------------------------------------------------------ training
    def check_batch(self, batch: dict[str, Any]) -> str | None:
        """Why a collated (host) batch cannot be trained on, or None: every sample failed to load."""
        if batch["image"].numel() == 0:
            return (f"every sample of the batch failed to load ({len(batch['bad'])} skipped); see the "
                    "skipped-sample log lines")
        return None

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Losses of one batch from :meth:`collate`, moved to the model's device; reads nothing back to the
        host (the prompted classes are ``batch["active"]``, chosen when the batch was collated)."""
        if self.class_names is None:
            self.train_dataset()
        image = batch["image"]
        if batch["label_mask"].shape[1] != len(self.class_names):
            raise InvalidInputError(f"label_mask has {batch['label_mask'].shape[1]} classes, expected "
                                    f"{len(self.class_names)} ({', '.join(self.class_names)})")
        prompts = [self.class_names[k] for k in batch["active"]]
        out = model(image, prompts=prompts, return_dict=True)
        cfg = self.config
        losses = partial_label_loss(out["logits"], training_target(batch), batch["active_mask"],
                                    bce_weight=cfg.bce_weight, dice_weight=cfg.dice_weight,
                                    dice_reduction=cfg.dice_reduction)
        if cfg.balance_weight:
            losses["balance_loss"] = cfg.balance_weight * out["balance_loss"]
        else:
            losses["scale_balance"] = out["balance_loss"].detach()
        losses["gate_usage"] = out["gate_usage"].detach()
        losses["prompted_classes"] = torch.full((), float(len(prompts)), device=image.device)
        return losses

    def export(self, model: nn.Module, directory, card: dict | None = None) -> None:
        """Save the model with the classes it was trained on (``config.trained_classes``)."""
        if self.class_names is None:
            self.train_dataset()
        model.config.trained_classes = tuple(self.class_names)
        model.save_pretrained(directory, card=card)

    # ------------------------------------------------------------------ validation
    def _validation_dataset(self):
        if self._val_ds is None:
            if self.class_names is None:
                self.train_dataset()
            self._val_ds = self._dataset(self.config.val_split, train=False)
        return self._val_ds

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Whole-volume Dice per class (sliding window at the training patch, threshold 0.5), counted only
        on the classes each case's dataset labels; ``dice_mean`` averages the classes."""
        if not self.config.val_split:
            return {}
        return validation_dice(model, self._validation_dataset(), max_cases=self.config.val_max_cases,
                               overlap=self.config.val_overlap, progress=self.config.progress)


def training_target(batch: dict[str, Any]) -> Tensor:
    """(B, A, X, Y, Z) target of a collated batch's A active classes, on the batch's device: its float16 class
    fractions (``soft_label``), else the bool multi-hot expanded from its label ids."""
    from medmoe.seg.data import expand_labels

    if "soft_label" in batch:
        return batch["soft_label"]
    return expand_labels(batch["label_ids"], batch["label_table"])


def validation_dice(model: nn.Module, dataset, *, max_cases: int | None = None, overlap: float = 0.25,
                    threshold: float = 0.5, sw_batch_size: int = 2, progress: bool = False) -> dict[str, float]:
    """Mean Dice per class of ``model`` on the whole volumes of a ``SegDataset(train=False)``.

    Under torchrun each rank predicts its share of the cases (``rank::world_size``) and the per-class Dice
    sums and counts are summed over ranks, so every rank returns the same numbers as one process would.
    Each case is prompted with the classes its dataset labels; windows run on the model's device under the
    caller's autocast when one is active (the trainer's bf16), else under the device's own inference autocast
    (:func:`~medmoe.devices.autocast_dtype`: bf16/fp16 on a GPU, none on the CPU), and are stitched on the
    CPU, so GPU memory holds windows, not a whole CT's K-class logits.

    Returns:
        ``{"dice/<class>": mean over cases that label it, "dice_mean": mean over classes, "cases": cases
        scored}``; a class that is absent from a case and not predicted there is left out of that case
        (NaN-aware means).
    """
    from medmoe.devices import autocast_dtype
    from medmoe.distributed import all_reduce_sum, share
    from medmoe.seg.predict import sliding_window_probabilities

    model.eval()
    device = next(model.parameters()).device
    dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
             else autocast_dtype(device))
    names = list(dataset.class_names)
    roi = tuple(model.config.roi_size)
    sums = torch.zeros(len(names), dtype=torch.float64)
    counts = torch.zeros(len(names), dtype=torch.float64)
    n = len(dataset) if max_cases is None else min(len(dataset), max_cases)
    scored = 0
    for i in tqdm(share(n), desc="validation", disable=not progress):
        item = dataset[i]
        if not isinstance(item, dict):
            log.warning("validation: skipping %s (%s)", getattr(item, "path", "?"), getattr(item, "reason", "?"))
            continue
        labelled = item["label_mask"].nonzero().flatten().tolist()
        if not labelled or "label_ids" not in item:
            continue
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            emb = model.embed_prompts([names[k] for k in labelled])
            probs = sliding_window_probabilities(model, item["image"], emb, roi, overlap=overlap,
                                                 sw_batch_size=sw_batch_size, device=device, output_device="cpu",
                                                 amp_dtype=dtype)
        for j, k in enumerate(labelled):
            dice = dice_scores((probs[j] > threshold)[None], dataset.class_mask(item, k)[None])[0].double()
            if not torch.isnan(dice):
                sums[k] += dice
                counts[k] += 1
        scored += 1
    sums, counts = all_reduce_sum(sums), all_reduce_sum(counts)
    out = {f"dice/{name}": float(sums[k] / counts[k]) for k, name in enumerate(names) if counts[k] > 0}
    if out:
        out["dice_mean"] = sum(out.values()) / len(out)
    out["cases"] = float(all_reduce_sum(torch.tensor([scored], dtype=torch.float64))[0])
    return out
