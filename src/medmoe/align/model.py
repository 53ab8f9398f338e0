"""MedMoE: image-report alignment with modality-specialised scale-attention experts.

    image (B,3,H,W) -> backbone (backbone.kind: Swin by default) -> [C1@H/4 .. C4@H/32] (finest first) + pooled
    report -> TextTower -> sentence, words
    route (report / image / label in training, image at inference) -> top-1 expert (only it runs)
    expert -> local map (B, D, H/4, W/4) x gate (1; straight-through gradient to the router) -> mean
        -> linear -> global embedding (B, E)
    losses (medmoe.align.losses, weighted by the training task): global InfoNCE (gathered over ranks)
        + GLoRIA local + router losses
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmoe.align.config import MedMoEConfig
from medmoe.align.experts import ScaleAttentionExpert
from medmoe.align.losses import AlignLossWeights, alignment_loss
from medmoe.align.routing import MedMoERouting, RouteDecision
from medmoe.backbones import FeatureInfo, build_backbone
from medmoe.errors import InvalidInputError
from medmoe.moe import MoELayer
from medmoe.saved_model import PretrainedMixin
from medmoe.text import TextOutput, TextTower

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = 100.0


def _projection(in_dim: int, out_dim: int, mode: str, what: str) -> nn.Module:
    if mode == "linear" or (mode == "auto" and in_dim != out_dim):
        return nn.Linear(in_dim, out_dim)
    if in_dim != out_dim:
        raise InvalidInputError(f"text_projection='none' needs the text width {in_dim} to equal {what} {out_dim}")
    return nn.Identity()


class MedMoE(PretrainedMixin, nn.Module):
    """The MedMoE model.

    Args:
        config: :class:`MedMoEConfig`.
        load_pretrained: load the pretrained parts the config names (text encoder, backbone weights).

    Example:
        >>> model = medmoe.create_model("medmoe-nano").eval()
        >>> model.encode_image(torch.rand(2, 3, 64, 64)).shape      # no report, no label
        torch.Size([2, 96])
        >>> out = model(torch.rand(2, 3, 64, 64), ["No effusion.", "CT: small nodule."], return_loss=True)
        >>> sorted(k for k in out if k.endswith("_loss"))    # weighted as medmoe.align.losses.AlignLossWeights()
        ['balance_loss', 'distill_loss', 'global_loss', 'local_loss', 'router_ce_loss']
    """

    config_class = MedMoEConfig
    model_type = "medmoe"
    description = "MedMoE image-report alignment"
    trained_settings = ("dispatch", "router_jitter", "backbone.gradient_checkpointing", "text.freeze")

    def __init__(self, config: MedMoEConfig, *, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.backbone, load_pretrained=load_pretrained)
        self.text = TextTower(config.text, load_pretrained=load_pretrained)
        info = self.backbone.feature_info
        experts = [ScaleAttentionExpert(info.channels, config.local_dim, hidden=config.scale_hidden,
                                        refine_depth=config.refine_depth) for _ in range(config.num_experts)]
        self.moe = MoELayer(experts, dispatch=config.dispatch)
        self.routing = MedMoERouting(self.text.width, info.pooled_channels, config.num_experts,
                                     hidden_dim=config.router_hidden, jitter=config.router_jitter,
                                     detach_image=config.detach_router_input, gate=config.gate)
        self.image_proj = nn.Linear(config.local_dim, config.embed_dim)
        self.text_proj = _projection(self.text.width, config.embed_dim, config.text_projection, "embed_dim")
        self.word_proj = _projection(self.text.width, config.local_dim, config.text_projection, "local_dim")
        self._text_cache: dict[str, tuple[Tensor, Tensor, list[str]]] | None = None
        if config.learn_logit_scale:
            self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale)))
        else:
            self.register_buffer("log_logit_scale", torch.tensor(math.log(config.logit_scale)), persistent=False)

    # ------------------------------------------------------------------ properties
    @property
    def feature_info(self) -> FeatureInfo:
        return self.backbone.feature_info

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    @property
    def may_leave_parameters_unused(self) -> bool:
        """Whether a training step with the default loss weights (:class:`AlignLossWeights`) can leave a
        trainable parameter without a gradient (DDP's ``find_unused_parameters``, see
        :func:`medmoe.train.distributed.may_leave_parameters_unused`).

        True with K > 1 (an expert no sample chose), when a router is idle (``route_by="image"`` never calls
        the text router), when the whole text tower trains (its pooler is unused) or when the image router's
        input is detached from a backbone that says some of its parameters feed only the bottleneck
        (``PyramidBackbone.may_leave_parameters_unused``, e.g. EfficientNet's head conv). A task that weights
        the losses otherwise adds what its weights leave idle (``AlignTask.may_leave_parameters_unused``).
        """
        c = self.config
        return (c.num_experts > 1 or c.route_by == "image" or c.text.freeze == "none"
                or (c.detach_router_input and self.backbone.may_leave_parameters_unused))

    @property
    def compile_targets(self) -> list[nn.Module]:
        """What ``--compile`` compiles: the tensor-only parts. The forward reads report strings, so a
        whole-model graph would be recompiled for every new batch of reports."""
        return [self.backbone.compile_target, *self.moe.experts]

    @property
    def logit_scale(self) -> Tensor:
        """The global InfoNCE scale, clamped to [1, 100]."""
        return self.log_logit_scale.exp().clamp(1.0, MAX_LOGIT_SCALE)

    # ------------------------------------------------------------------ encoders
    def enable_text_cache(self, enabled: bool = True) -> None:
        """Remember the frozen text tower's output per report (training on a fixed corpus re-reads it).

        Entries are kept on the CPU in float16 (sentence + word features: ``(1 + words) x width x 2`` bytes a
        report), so the cache costs host memory, not accelerator memory. The reports of a batch missing from
        the cache are encoded together by :meth:`TextTower.encode_each`, which computes each report's outputs
        from that report alone (grouped by token length, in calls of a fixed shape), so its cached output does
        not depend on the batch it first appeared in and a resumed run computes exactly what an uninterrupted
        one did; :meth:`warm_text_cache` fills it in batches up front. The cache is not part of the saved model.

        Raises:
            InvalidInputError: the text tower is not frozen (its output changes while training).
        """
        if enabled and not self.text.frozen:
            raise InvalidInputError("the text cache needs a frozen text tower (text.freeze='all')")
        self._text_cache = {} if enabled else None

    def text_cache_bytes(self, reports: int) -> int:
        """Host memory the cache needs for ``reports`` distinct reports (at most ``max_length`` words each)."""
        return int(reports) * (1 + int(self.config.text.max_length)) * int(self.text.width) * 2

    def _store(self, report: str, sentence: Tensor, words: Tensor, word_text: list[str]) -> None:
        self._text_cache[report] = (sentence.detach().to("cpu", torch.float16),
                                    words.detach().to("cpu", torch.float16), list(word_text))

    @torch.no_grad()
    def warm_text_cache(self, reports: list[str], *, batch_size: int = 64, progress: bool = False) -> int:
        """Encode the unique ``reports`` into the cache in batches (much faster than one by one).

        Reports are taken in sorted order in fixed batches, so the cached values depend only on the set of
        reports (a resumed run warms identically). Under ``torch.distributed`` each rank encodes every
        world-size-th batch and the ranks exchange their parts, so the corpus is encoded once, not once per
        rank, and every rank ends with the same cache. Returns the number of reports added.
        """
        from tqdm import tqdm

        from medmoe.distributed import all_gather_objects, rank, world_size

        if self._text_cache is None:
            raise InvalidInputError("call enable_text_cache() before warm_text_cache()")
        todo = sorted({r for r in reports if r not in self._text_cache})
        starts = list(range(0, len(todo), batch_size))[rank()::world_size()]
        mine: dict[str, tuple[Tensor, Tensor, list[str]]] = {}
        for start in tqdm(starts, desc="text cache", disable=not progress, leave=False):
            chunk = todo[start:start + batch_size]
            out = self.text(chunk)
            for b, report in enumerate(chunk):
                self._store(report, out.sentence[b], out.words[b, :len(out.word_text[b])], out.word_text[b])
                mine[report] = self._text_cache[report]
        for part in all_gather_objects(mine):
            self._text_cache.update(part)
        log.info("text cache: %d reports encoded (%d cached, %.2f GB in host memory)", len(todo),
                 len(self._text_cache), self.text_cache_bytes(len(self._text_cache)) / 1e9)
        return len(todo)

    def _text(self, reports: list[str]) -> TextOutput:
        if isinstance(reports, str) or not isinstance(reports, list | tuple):
            raise InvalidInputError("reports must be a list of strings")
        if self._text_cache is None:
            return self.text(list(reports))
        cache = self._text_cache
        missing = [r for r in dict.fromkeys(reports) if r not in cache]
        if missing:
            with torch.no_grad():
                for report, encoded in zip(missing, self.text.encode_each(missing)):
                    self._store(report, *encoded)
        entries = [cache[r] for r in reports]
        device = self.image_proj.weight.device  # the cache lives on the CPU; the model may not
        dtype = self.image_proj.weight.dtype
        width = max(1, max(e[1].shape[0] for e in entries))
        words = torch.zeros(len(entries), width, entries[0][0].shape[-1], dtype=dtype)
        for b, (_, w, _) in enumerate(entries):
            words[b, : w.shape[0]] = w
        mask = torch.arange(width) < torch.tensor([e[1].shape[0] for e in entries])[:, None]
        # cast each entry first: stacking float16 under CPU autocast (bf16) is not supported
        sentence = torch.stack([e[0].to(dtype) for e in entries])
        return TextOutput(sentence.to(device), words.to(device, non_blocking=True), mask.to(device),
                          [list(e[2]) for e in entries])

    def encode_text(self, reports: list[str], *, normalize: bool = True) -> Tensor:
        """(B, E) report embeddings (L2-normalised by default)."""
        out = self.text_proj(self._text(reports).sentence)
        return F.normalize(out, dim=-1) if normalize else out

    def _image(self, images: Tensor, **route: Any) -> tuple[Tensor, Tensor, RouteDecision]:
        """Local map, global embedding and route of ``images``; ``route``: the routing's arguments."""
        pyramid = self.backbone(images)
        decision = self.routing(pyramid.pooled, **route)
        local = self.moe(pyramid.features, route=decision.taken).output
        return local, self.image_proj(local.mean(dim=(2, 3))), decision

    def image_features(self, images: Tensor) -> dict[str, Tensor]:
        """Everything the image side computes with the inference route (the image router).

        Returns:
            dict with ``image_embeds`` (B, E) normalised, ``local_features`` (B, D, H/4, W/4),
            ``router_logits`` / ``router_probs`` (B, K) (the probabilities are the route's confidence),
            ``expert_index`` (B,), ``gates`` (B,) the scale of the expert's output (1 unless
            ``config.gate="probability"``).
        """
        local, global_, decision = self._image(images, route_by="image")
        route = decision.taken
        return {"image_embeds": F.normalize(global_, dim=-1), "local_features": local, "router_logits": route.logits,
                "router_probs": route.probs, "expert_index": route.expert_index[:, 0], "gates": route.gates[:, 0]}

    def encode_image(self, images: Tensor, *, normalize: bool = True) -> Tensor:
        """(B, E) image embeddings routed by the image alone: no report and no label needed."""
        _, global_, _ = self._image(images, route_by="image")
        return F.normalize(global_, dim=-1) if normalize else global_

    @torch.no_grad()
    def route(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The inference route of B images: ``(expert_index (B,), probs (B, K))`` (runs no expert)."""
        decision = self.routing(self.backbone(images).pooled, route_by="image")
        return decision.image.expert_index[:, 0], decision.image.probs

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, reports: list[str] | None = None, *, modality: Tensor | None = None,
                return_loss: bool = False, route_by: str | None = None,
                loss_weights: AlignLossWeights | None = None) -> dict[str, Any]:
        """Encode a batch of image-report pairs.

        Args:
            images: (B, 3, H, W) uint8 as ``medmoe.data.ImageTransform`` returns them (normalised on the
                model's device), or float32 already normalised (ImageNet mean / std).
            reports: B report strings (None: image side only, routed by the image).
            modality: (B,) modality ids (negative = unknown), for ``route_by="label"`` and the router CE.
            return_loss: add the weighted loss terms (``*_loss``) and their sum ``loss``, computed by
                :func:`medmoe.align.losses.alignment_loss` (a convenience: training tasks call it themselves).
            route_by: override ``config.route_by`` (e.g. ``"image"`` to evaluate the inference route).
            loss_weights: the weights of ``return_loss`` (None: :class:`AlignLossWeights`' defaults).

        Returns:
            dict: ``image_embeds`` (B, E), ``text_embeds`` (B, E) (both normalised), ``local_features``
            (B, D, H/4, W/4), ``word_features`` (B, W, D), ``word_mask`` (B, W), ``words``,
            ``router_logits`` / ``router_probs`` (B, K) of the router that routed, ``image_router_logits``,
            ``text_router_logits``, ``expert_index`` (B,), ``gates`` (B,) (the scale of the expert's
            output: 1 unless ``config.gate="probability"``), ``route_source``,
            ``logit_scale``; with ``return_loss`` also ``global_loss``, ``local_loss``, the router losses
            whose weight is non-zero, and ``loss``.
        """
        if reports is None:
            if return_loss:
                raise InvalidInputError("return_loss=True needs the reports")
            return self.image_features(images)
        if len(reports) != images.shape[0]:
            raise InvalidInputError(f"got {images.shape[0]} images but {len(reports)} reports")
        route_by = route_by or self.config.route_by
        text = self._text(reports)
        local, global_, decision = self._image(images, sentence=text.sentence, labels=modality,
                                               route_by=route_by)
        out: dict[str, Any] = {
            "image_embeds": F.normalize(global_, dim=-1),
            "text_embeds": F.normalize(self.text_proj(text.sentence), dim=-1),
            "local_features": local,
            "word_features": self.word_proj(text.words),
            "word_mask": text.word_mask,
            "words": text.word_text,
            "router_logits": decision.taken.logits,
            "router_probs": decision.taken.probs,
            "image_router_logits": decision.image.logits,
            "text_router_logits": decision.text.logits if decision.text is not None else None,
            "expert_index": decision.taken.expert_index[:, 0],
            "gates": decision.taken.gates[:, 0],
            "image_expert_index": decision.image.expert_index[:, 0],
            "route_source": decision.source,
            "logit_scale": self.logit_scale,
        }
        if return_loss:
            out.update(alignment_loss(out, loss_weights, modality=modality,
                                      local_temperatures=self.config.local_temperatures))
        return out

    def example_inputs(self, *, seed: int = 0) -> dict[str, Any]:
        """Keyword arguments of a forward on the backbone's smallest input: two random images and two reports
        (for smoke tests: ``model(**model.example_inputs())``)."""
        g = torch.Generator().manual_seed(seed)
        images = torch.rand(2, 3, *self.backbone.smallest_size(), generator=g)
        return {"images": images, "reports": ["No acute cardiopulmonary process.",
                                              "CT: 6 mm nodule in the right upper lobe."]}

    def num_parameters(self, *, active: bool = False) -> int:
        """Parameters of the model; ``active=True`` counts one expert only (what one image runs through)."""
        total = sum(p.numel() for p in self.parameters())
        if active and self.num_experts > 1:
            total -= sum(p.numel() for p in self.moe.experts[0].parameters()) * (self.num_experts - 1)
        return total
