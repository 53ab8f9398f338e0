"""The alignment training task: what the shared trainer (``medmoe.train``) needs to train MedMoE.

It satisfies ``medmoe.train.Task`` structurally (it subclasses nothing of the trainer)::

    task = AlignTask(AlignTaskConfig(data="samples/modality-bench/manifest.csv", model="medmoe-nano"))
    run_training(task, args)        # in medmoe.cli.align
"""

from __future__ import annotations

import logging
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from medmoe.align.evaluate import dataset_size, embed_dataset, make_dataset, routing_report
from medmoe.align.losses import LOSS_FIELDS, AlignLossWeights, alignment_loss
from medmoe.align.retrieval import retrieval_metrics
from medmoe.config import checked_value
from medmoe.data.dataset import BadSample, ImageReportDataset, collate_image_report
from medmoe.data.modalities import MODALITIES
from medmoe.data.reports import clean_report
from medmoe.data.shards import ShardDataset, list_shards, looks_like_shards
from medmoe.data.transforms import ImageTransform, augmentation
from medmoe.distributed import rank as process_rank
from medmoe.distributed import world_size as process_world_size
from medmoe.errors import InvalidInputError
from medmoe.moe import expert_usage, route_agreement, routing_entropy
from medmoe.train.distributed import unwrap_model

log = logging.getLogger(__name__)

# How many other dataset items a bad sample's slot may try before the batch is left short.
REFILL_TRIES = 8


@dataclass(kw_only=True)
class AlignTaskConfig(AlignLossWeights):
    """What to train on and which model; the loss fields (and their documentation) are :class:`AlignLossWeights`'.

    Attributes:
        data: training manifest, or a shard source: a folder of ``.tar`` shards, a brace pattern
            (``corpus/shard-{000000..000999}.tar``), a glob or URLs (``https://``, ``pipe:``, fsspec schemes);
            shards are streamed, each rank and loader worker reading its own (:class:`ShardDataset`).
        model: a registered name (``medmoe-nano``) or a saved model directory to continue from.
        overrides: config fields of the registered model (``{"num_experts": 1, "route_by": "image"}``); a loss
            field given here (``global_loss_weight``) sets that field.
        split: training rows.
        image_size: input side (default: the model's ``backbone.image_size``).
        augment: random training augmentation (deterministic per (seed, epoch, index)).
        augmentation: the augmentation profile: ``mild`` (crops, small rotations, brightness / contrast; for
            generated data) or ``domain`` (for real scans: wider crops, gamma, intensity windows, blur, noise, colour
            to grey and colour casts, the image small on a black screen, burned-in text; see
            :func:`medmoe.data.transforms.augmentation`).
        seed: augmentation seed.
        pretrained: load the pretrained parts the config names (text encoder weights).
        val_data: manifest or shard source of the retrieval / routing check at validation time (None: no
            validation).
        val_split: validation rows of ``val_data``.
        val_max: validation pairs at most.
        text_cache: cache a frozen text tower's outputs per report (see ``MedMoE.enable_text_cache``): on the
            CPU in float16, built once (a manifest's reports are encoded up front, split across ranks and
            exchanged; a shard stream's as they are met). Off by itself when the text tower trains, or when
            the corpus would need more than ``text_cache_gb`` of host memory (then every step encodes its
            reports).
        text_cache_gb: host-memory budget of the text cache, in GB (per process).
        backbone_lr_scale: learning rate of the image backbone as a fraction of the run's ``--lr`` (the usual
            way to fine-tune a pretrained backbone, e.g. 0.1, so it keeps more of what it learned); 0 freezes
            it (no gradients; its BatchNorm statistics, if any, still adapt in training mode).
        upcycle_steps: sparse upcycling (Komatsuzaki et al., ICLR 2023): for the first N steps expert 0
            runs wherever any expert is routed (the routers still learn their routes), then its weights are
            copied into every expert and each specialises from there. 0 = off (experts start from their own
            initialisation and each learns from the 1/K of the data routed to it).
    """

    data: str = field(metadata={"metavar": "MANIFEST|SHARDS"})
    model: str = "medmoe-nano"
    overrides: dict[str, Any] = field(default_factory=dict, metadata={
        "example": "num_experts=4",
        "shortcuts": {"num_experts": {"type": int, "metavar": "K", "help": "the model's number of experts"},
                      "route_by": {"choices": ("text", "image", "label"), "help": "what routes in training"}}})
    split: str | None = "train"
    image_size: int | None = None
    augment: bool = True
    augmentation: str = field(default="mild", metadata={"choices": ("mild", "domain")})
    seed: int = 0
    pretrained: bool = True
    val_data: str | None = field(default=None, metadata={"metavar": "MANIFEST|SHARDS"})
    val_split: str | None = "val"
    val_max: int = 256
    text_cache: bool = True
    text_cache_gb: float = field(default=4.0, metadata={"metavar": "GB"})
    upcycle_steps: int = field(default=0, metadata={"metavar": "N"})
    backbone_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        """Move loss fields given as model overrides (``--set distill_loss_weight=0.5``) to the task's."""
        moved = {key: self.overrides[key] for key in LOSS_FIELDS if key in self.overrides}
        # each moved field is refused when it is also given as a task field (with another value)
        defaults, hints = AlignLossWeights(), typing.get_type_hints(AlignLossWeights)
        for key, value in moved.items():
            value = checked_value(value, hints[key], f"overrides.{key}")
            own = getattr(self, key)
            if own != getattr(defaults, key) and own != value:
                raise InvalidInputError(f"{key} is given twice, {own!r} and {value!r} (overrides); give it once")
            setattr(self, key, value)
        if moved:
            self.overrides = {k: v for k, v in self.overrides.items() if k not in moved}
        if not 0 <= self.backbone_lr_scale <= 1:
            raise InvalidInputError(f"backbone_lr_scale must be in [0, 1], got {self.backbone_lr_scale}")
        super().__post_init__()  # the loss fields, checked (a negative weight is an error)

    @property
    def loss_weights(self) -> AlignLossWeights:
        """The loss fields, checked (a negative weight is an error)."""
        return AlignLossWeights.of(self)


def _check_source(flag: str, source: str) -> None:
    """Fail before any work on a ``--data`` that is neither a manifest file nor a shard source."""
    if looks_like_shards(source):
        list_shards(source)  # local shards must exist; remote ones are opened when read
    elif not Path(source).is_file():
        raise InvalidInputError(f"{flag} {source}: no such manifest file, shard folder or shard pattern")


class AlignTask:
    """MedMoE image-report alignment for :func:`medmoe.train.run_training`."""

    def __init__(self, config: AlignTaskConfig) -> None:
        _check_source("--data", config.data)
        if config.upcycle_steps < 0:
            raise InvalidInputError(f"upcycle_steps must be >= 0, got {config.upcycle_steps}")
        if config.val_data is not None:
            _check_source("--val-data", config.val_data)
        self.config = config
        self.loss_weights = config.loss_weights
        self._dataset: ImageReportDataset | ShardDataset | None = None
        self._val_dataset: ImageReportDataset | ShardDataset | str | None = None  # str: why there is none
        self._model: nn.Module | None = None
        self._image_size: int | None = config.image_size

    # ---- model and data ------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from medmoe.registry import create_model

        cfg = self.config
        model = create_model(cfg.model, pretrained=cfg.pretrained, family="medmoe", **cfg.overrides).train()
        model.backbone.check_size(self.image_size, self.image_size)
        if cfg.backbone_lr_scale == 0:
            model.backbone.requires_grad_(False)
        # saved with the model: whether expert e learns modality e (displays name the experts by it)
        model.config.modality_experts = bool(self.loss_weights.router_ce_loss_weight) and model.num_experts == len(MODALITIES)
        if self.config.text_cache and model.text.frozen:
            model.enable_text_cache()
        self._model = model
        return model

    @property
    def image_size(self) -> int:
        """Training input side: ``config.image_size`` or the model's own."""
        if self._image_size is None:
            from medmoe.registry import build_config

            name = self.config.model
            if Path(name).is_dir():
                from medmoe.saved_model import read_model_config

                self._image_size = int(read_model_config(name)[1]["backbone"]["image_size"])
            else:
                self._image_size = int(build_config(name, **self.config.overrides).backbone.image_size)
        return self._image_size

    def train_dataset(self) -> Dataset:
        cfg = self.config
        if looks_like_shards(cfg.data):
            self._dataset = ShardDataset(cfg.data, split=cfg.split, seed=cfg.seed, progress=process_rank() == 0,
                                         transform=self._transform())
            if self._dataset.num_samples == 0:
                raise InvalidInputError(f"{cfg.data}: no training sample of split {cfg.split!r} in the shards")
            self._budget_text_cache(self._dataset.num_samples)
            return self._dataset
        self._dataset = ImageReportDataset(cfg.data, split=cfg.split, seed=cfg.seed, transform=self._transform())
        if len(self._dataset) == 0:
            raise InvalidInputError(f"{cfg.data}: no training row in split {cfg.split!r}")
        reports = sorted({clean_report(r.report) for r in self._dataset.rows})
        if self._budget_text_cache(len(reports)):
            self._model.warm_text_cache(reports, progress=process_rank() == 0)
        return self._dataset

    def _transform(self) -> ImageTransform:
        return augmentation(self.config.augmentation, self.image_size, train=self.config.augment)

    def _budget_text_cache(self, reports: int) -> bool:
        """Keep the text cache only if ``reports`` fit in ``text_cache_gb``; True when it is on."""
        model = self._model
        if model is None or getattr(model, "_text_cache", None) is None:
            return False
        need = model.text_cache_bytes(reports)
        if need > self.config.text_cache_gb * 1e9:
            model.enable_text_cache(False)
            log.info("text cache off: %d reports would take %.1f GB of host memory (text_cache_gb=%g); "
                     "each step encodes its reports", reports, need / 1e9, self.config.text_cache_gb)
            return False
        return True

    def collate(self, samples: list[Any]) -> dict[str, Any]:
        """Stack a batch; each bad sample is reported and its slot refilled with another dataset item.

        A fixed batch size keeps the contrastive negatives' count constant and lets ranks gather features
        of one shape; the refill is deterministic (it depends only on the batch), so resume stays exact.
        The batch stays short only when no good item is found within a few tries; ``"requested"`` keeps its
        intended size for :meth:`check_batch`.
        """
        bad = [s for s in samples if isinstance(s, BadSample)]
        good = [s for s in samples if not isinstance(s, BadSample)]
        # A shard stream refills bad slots itself (the next sample of the reader), a manifest here.
        if bad and isinstance(self._dataset, ImageReportDataset):
            for item in bad:
                replacement = self._replacement(item.index, {s["index"] for s in good})
                if replacement is not None:
                    good.append(replacement)
        batch = {k: v for k, v in collate_image_report(good, self.image_size).items() if k != "paths"}
        return {**batch, "bad": bad, "requested": len(samples)}

    def check_batch(self, batch: dict[str, Any]) -> str | None:
        """Why ``batch`` cannot be trained on: it is short (some samples failed to load and no stand-in was
        found). Every rank then skips the step: a short batch would change the count of contrastive
        negatives, and the ranks' features could not be gathered (their shapes differ)."""
        n, wanted = batch["images"].shape[0], batch.get("requested", batch["images"].shape[0])
        return (f"{wanted - n} of {wanted} samples could not be loaded and no stand-in was found"
                if n < wanted else None)

    def _replacement(self, index: int, taken: set[int]) -> dict[str, Any] | None:
        """A good item standing in for bad item ``index``, a fixed stride away. Bad items met here are not
        counted: they are counted when the sampler draws them."""
        for k in range(1, REFILL_TRIES + 1):
            j = (index + 7919 * k) % len(self._dataset)
            if j not in taken and not isinstance(candidate := self._dataset[j], BadSample):
                return candidate
        return None

    # ---- steps ---------------------------------------------------------------------------------------
    def before_step(self, model: nn.Module, step: int) -> None:
        """Sparse upcycling: experts tied before ``upcycle_steps``, copied from expert 0 at that step."""
        n = self.config.upcycle_steps
        if n <= 0 or model.num_experts == 1:
            return
        if step < n:
            model.moe.tie_experts()
        elif step == n:
            model.moe.upcycle()
            log.info("step %d: expert 0 copied into all %d experts (sparse upcycling)", step, model.num_experts)

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        if batch["images"].shape[0] * process_world_size() < 2:  # the same on every rank: no rank raises alone
            raise InvalidInputError("a contrastive step needs at least 2 samples in the global batch (--batch-size)")
        out = model(batch["images"], batch["reports"], modality=batch["modality"])
        temperatures = unwrap_model(model).config.local_temperatures
        values = alignment_loss(out, self.loss_weights, modality=batch["modality"], local_temperatures=temperatures)
        probs = torch.softmax(out["router_logits"].detach().float(), dim=-1)
        values["route/usage"] = expert_usage(out["expert_index"].detach(), probs.shape[-1])
        values["route/entropy"] = routing_entropy(probs).reshape(1)
        agree = route_agreement(out["image_expert_index"], out["expert_index"])
        values["route/image_agreement"] = agree.detach().reshape(1)
        values["logit_scale"] = out["logit_scale"].detach().float().reshape(1)
        return values

    def may_leave_parameters_unused(self, model: nn.Module) -> bool:
        """Whether a training step can leave a trainable parameter of ``model`` without a gradient (DDP's
        ``find_unused_parameters``): when the model says so for its architecture, when the image router
        gets no distillation (it then learns from nothing unless it routes) or when a contrastive term is
        off (its projection gets no gradient)."""
        w = self.loss_weights
        return bool(model.may_leave_parameters_unused or not w.distill_loss_weight
                    or not (w.global_loss_weight and w.local_loss_weight))

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Retrieval R@1/R@5 both ways and image-router agreement on up to ``val_max`` validation pairs.

        Under torch.distributed every rank scores the whole validation set, so the numbers do not depend on
        the number of GPUs and equal ``medmoe align eval`` of the same model on the same rows: a manifest's
        rows are embedded in one share per rank and gathered; a shard source is read whole by every rank.
        """
        if self.config.val_data is None:
            return {}
        if self._val_dataset is None:  # built once: shards are counted, a manifest is read, only here
            try:
                self._val_dataset = make_dataset(self.config.val_data, self.config.val_split, self.image_size,
                                                 by_rank=False)
            except InvalidInputError as err:
                self._val_dataset = str(err)
        dataset = self._val_dataset
        if isinstance(dataset, str) or dataset_size(dataset) < 2:
            reason = dataset if isinstance(dataset, str) else f"fewer than 2 pairs in split {self.config.val_split!r}"
            log.warning("validation skipped: %s (%s)", reason, self.config.val_data)
            return {}
        emb = embed_dataset(model, dataset, device=str(next(model.parameters()).device), progress=False,
                            max_items=self.config.val_max, across_ranks=True)
        metrics = retrieval_metrics(emb.image_embeds, emb.text_embeds, ks=(1, 5))
        out = {f"{direction}/{key}": value for direction in ("image_to_text", "text_to_image")
               for key, value in metrics[direction].items() if key.startswith("R@")}
        routing = routing_report(emb, model.num_experts)
        if "agreement" in routing:
            out.update({f"routing/{key}": routing[key] for key in ("agreement", "agreement_identity")})
        return out

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Weight decay on matrices and kernels only; none on biases, norms and the temperature. The image
        backbone's parameters come last, at ``backbone_lr_scale`` of the run's learning rate."""
        scale = self.config.backbone_lr_scale
        settings = [{}, {"weight_decay": 0.0}, {"lr_scale": scale}, {"lr_scale": scale, "weight_decay": 0.0}]
        params: list[list[nn.Parameter]] = [[] for _ in settings]
        for name, p in model.named_parameters():
            if p.requires_grad:
                in_backbone = scale != 1.0 and name.startswith("backbone.")
                decays = p.ndim >= 2 and "logit_scale" not in name
                params[2 * in_backbone + (not decays)].append(p)
        return [{"params": group, **extra} for group, extra in zip(params, settings) if group]

    def export(self, model: nn.Module, directory: str | os.PathLike, card: dict | None = None) -> None:
        if model.moe.tied:  # the run ended before the upcycling step: every expert is expert 0
            model.moe.upcycle()
        model.save_pretrained(directory, card=card)
