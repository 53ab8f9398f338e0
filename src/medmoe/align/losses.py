"""MedMoE's loss: its terms and their weighting, in one place.

The terms: global InfoNCE over ranks, GLoRIA's local word-region loss, and the router losses of the shared
MoE core (Switch balance, modality cross-entropy, distillation of the image router). Their weights are
the training task's (:class:`AlignLossWeights`, the loss fields of ``AlignTaskConfig``), not the model's.
Each term runs in float32 under autocast, on inputs promoted to at least float32
(:func:`~medmoe.moe.precision.full_precision`), and none reads a tensor back to the host::

    out = model(images, reports, modality=modality)
    losses = alignment_loss(out, AlignLossWeights(distill_loss_weight=0.5), modality=modality,
                            local_temperatures=model.config.local_temperatures)
    losses["loss"].backward()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medmoe.align.routing import IGNORE, clean_modality_labels
from medmoe.distributed import gather_with_grad
from medmoe.errors import InvalidInputError
from medmoe.moe import load_balance_loss, router_ce_loss, router_distillation_loss
from medmoe.moe.precision import full_precision

Gather = Callable[[Tensor], Tensor]


def _scale_grad(x: Tensor, factor: float) -> Tensor:
    """``x`` in value, ``factor * grad`` in the backward pass."""
    if factor == 1:
        return x
    return x * factor - x.detach() * (factor - 1)


@full_precision
def global_contrastive_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor | float, *,
                            gather: Gather = gather_with_grad) -> Tensor:
    """Symmetric InfoNCE between image and text embeddings of the global batch.

    Each rank gathers every rank's embeddings (its own put back so that their gradient survives) and
    computes the loss of the whole global batch, so the value equals the single-process loss on the
    concatenated batch. Every rank back-propagates only through its own rows and DDP then averages over
    the R ranks, which would shrink this term's gradient R times relative to per-rank losses; the local
    embeddings' gradients are therefore scaled by R, making the DDP gradient equal to the single-process
    one (the scale's gradient is complete on every rank and is left as it is).

    Args:
        image_embeds: (B, E) L2-normalised.
        text_embeds: (B, E) L2-normalised; row b pairs with image b.
        logit_scale: scalar multiplying the cosine similarities (1 / temperature).
        gather: concatenates a (B, E) tensor over ranks; :func:`medmoe.distributed.gather_with_grad` by default.

    Returns:
        Scalar: (CE(image -> text) + CE(text -> image)) / 2 over the R * B pairs.
    """
    if image_embeds.shape != text_embeds.shape or image_embeds.dim() != 2:
        raise InvalidInputError(
            f"image and text embeddings must both be (B, E); got {tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}"
        )
    images, texts = gather(image_embeds), gather(text_embeds)
    ranks = images.shape[0] // max(image_embeds.shape[0], 1)
    # Only the local rows of a gathered tensor carry a gradient, so scaling the whole tensor scales theirs.
    images, texts = _scale_grad(images, ranks), _scale_grad(texts, ranks)
    logits = logit_scale * images @ texts.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


@full_precision
def word_region_attention(words: Tensor, word_mask: Tensor, regions: Tensor, temp1: float) -> Tensor:
    """GLoRIA's attention of each word over the image regions, for every (report, image) pair.

    The raw dot products are first normalised over the words of the report (softmax), then sharpened by
    ``temp1`` and normalised over regions (softmax).

    Args:
        words: (T, W, D) word features of T reports.
        word_mask: (T, W) bool, True for real words.
        regions: (I, R, D) region features of I images.
        temp1: tau_1.

    Returns:
        (T, I, W, R) attention weights; rows of padded words are meaningless.
    """
    scores = torch.einsum("twd,ird->tiwr", words, regions)
    scores = scores.masked_fill(~word_mask[:, None, :, None], float("-inf")).softmax(dim=2)
    scores = scores.nan_to_num(0.0)  # a report with no word at all
    return (scores * temp1).softmax(dim=3)


@full_precision
def local_similarity(words: Tensor, word_mask: Tensor, regions: Tensor, temp1: float = 4.0,
                     temp2: float = 5.0, chunk: int = 0) -> Tensor:
    """GLoRIA's local image-report score Z for every pair.

    ``Z(image i, report t) = log sum_w exp(temp2 * cos(e_tw, c_tiw))`` where ``c_tiw`` is the
    attention-weighted sum of image i's regions for word w of report t.

    Args:
        words: (T, W, D); word_mask: (T, W) bool; regions: (I, R, D).
        chunk: reports per chunk (0 = all at once) to bound the (T, I, W, R) attention tensor.

    Returns:
        (I, T) scores; -inf in the columns of reports without any word.
    """
    if words.dim() != 3 or regions.dim() != 3 or words.shape[-1] != regions.shape[-1]:
        raise InvalidInputError(
            f"words must be (T, W, D) and regions (I, R, D) with one D; got {tuple(words.shape)} and {tuple(regions.shape)}"
        )
    if word_mask.shape != words.shape[:2]:
        raise InvalidInputError(f"word_mask must be (T, W) = {tuple(words.shape[:2])}, got {tuple(word_mask.shape)}")
    step = chunk if chunk > 0 else words.shape[0]
    columns = []
    for start in range(0, words.shape[0], step):
        w, m = words[start:start + step], word_mask[start:start + step]
        # the (t, I, W, R) attention's weighted sum of the regions: (t, I, W, D)
        context = torch.einsum("tiwr,ird->tiwd", word_region_attention(w, m, regions, temp1), regions)
        cosine = F.cosine_similarity(w[:, None], context, dim=-1, eps=1e-8)  # (t, I, W)
        cosine = (cosine * temp2).masked_fill(~m[:, None, :], float("-inf"))
        columns.append(torch.logsumexp(cosine, dim=-1))  # (t, I)
    return torch.cat(columns, dim=0).t()


@full_precision
def local_contrastive_loss(local_features: Tensor, words: Tensor, word_mask: Tensor,
                           temperatures: tuple[float, float, float] = (4.0, 5.0, 10.0), chunk: int = 0) -> Tensor:
    """GLoRIA's local loss: symmetric cross-entropy over ``temp3 * Z`` on this rank's batch.

    Args:
        local_features: (B, D, h, w) local image map (region r = one location).
        words: (B, W, D) word features; word_mask: (B, W) bool. Report b pairs with image b.
        temperatures: (tau1, tau2, tau3).

    Returns:
        Scalar (CE(image -> report) + CE(report -> image)) / 2; pairs whose report has no word are left out.
    """
    if local_features.dim() != 4 or local_features.shape[0] != words.shape[0]:
        raise InvalidInputError(
            f"local_features must be (B, D, h, w) with the words' B; got {tuple(local_features.shape)} and {tuple(words.shape)}"
        )
    temp1, temp2, temp3 = temperatures
    if words.shape[0] == 0:
        return local_features.sum() * 0.0
    regions = local_features.flatten(2).transpose(1, 2)  # (B, R, D)
    scores = temp3 * local_similarity(words, word_mask, regions, temp1, temp2, chunk)
    return _paired_cross_entropy(scores, keep=word_mask.any(dim=1))


def _paired_cross_entropy(scores: Tensor, keep: Tensor) -> Tensor:
    """(CE(rows) + CE(columns)) / 2 of a (B, B) score matrix whose pair b is (row b, column b), over the
    pairs ``keep`` holds only, with no host read.

    Equal to the loss of the matrix cut to the kept rows and columns: the other entries (-inf in the columns
    of reports without words) are set to the dtype's lowest finite value, whose ``exp`` underflows to exactly
    0 next to any kept score, and the terms of the other pairs weigh 0. With every entry finite, each
    cross-entropy term is finite and so is its gradient.
    """
    scores = scores.masked_fill(~(keep[:, None] & keep[None, :]), torch.finfo(scores.dtype).min)
    target = torch.arange(scores.shape[0], device=scores.device)
    weight = keep.to(scores.dtype)
    count = weight.sum().clamp_min(1)
    rows = (F.cross_entropy(scores, target, reduction="none") * weight).sum() / count
    columns = (F.cross_entropy(scores.t(), target, reduction="none") * weight).sum() / count
    return (rows + columns) / 2


@dataclass(kw_only=True)
class AlignLossWeights:
    """The weights of MedMoE's loss terms and the loss-only settings (``AlignTaskConfig`` extends it).

    Attributes:
        global_loss_weight: weight of the global image-report InfoNCE (gathered over ranks).
        local_loss_weight: weight of GLoRIA's local word-region contrastive loss.
        balance_loss_weight: weight of the Switch load balance of the router that routes (0 when labels route).
        router_ce_loss_weight: weight of the cross-entropy of the routing router's logits against modality
            labels (rows without a label are ignored; with one expert per modality it makes expert e modality e's).
        distill_loss_weight: weight of the image router's distillation towards the route taken (the image
            router routes at inference).
        local_loss_chunk: reports processed together in the local loss (bounds its memory; 0 = all at once;
            the loss value does not change).
    """

    global_loss_weight: float = 0.5
    local_loss_weight: float = 0.5
    balance_loss_weight: float = 0.01
    router_ce_loss_weight: float = 1.0
    distill_loss_weight: float = 1.0
    local_loss_chunk: int = 0

    def __post_init__(self) -> None:
        for name in LOSS_FIELDS:
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def of(cls, settings: Any) -> AlignLossWeights:
        """The weights held by ``settings`` (e.g. an ``AlignTaskConfig``): its attributes of the same names."""
        return cls(**{name: getattr(settings, name) for name in LOSS_FIELDS})


LOSS_FIELDS = tuple(f.name for f in dataclasses.fields(AlignLossWeights))


def routing_losses(outputs: Mapping[str, Any], modality: Tensor | None,
                   weights: AlignLossWeights) -> dict[str, Tensor]:
    """Weighted router losses of a MedMoE forward; a key is present whenever its weight is non-zero, so
    every step returns the same keys.

    balance_loss: Switch load balance of the router that routed (0 when labels routed).
    router_ce_loss: CE of the routing router's logits against modality labels (unlabelled rows ignored;
        the text router when labels routed, so that it serves unlabelled rows).
    distill_loss: CE of the image router's logits against the expert actually used (0 when the image
        router itself routed).

    Args:
        outputs: the model's forward dict (``router_logits``, ``router_probs``, ``expert_index``,
            ``image_router_logits``, ``route_source``).
        modality: (B,) modality ids, negative = unknown; None: no labels.
        weights: the term weights.
    """
    image_logits = outputs["image_router_logits"]
    source, taken = outputs["route_source"], outputs["expert_index"]
    zero = image_logits.sum() * 0.0
    out: dict[str, Tensor] = {}
    if weights.balance_loss_weight:
        balance = zero if source == "label" else load_balance_loss(outputs["router_probs"], taken[:, None])
        out["balance_loss"] = weights.balance_loss_weight * balance
    if weights.router_ce_loss_weight:
        logits = outputs["router_logits"]
        labels = clean_modality_labels(modality, logits.shape[-1], logits.shape[0], logits.device)
        ce = zero if labels is None else router_ce_loss(logits, labels, ignore_index=IGNORE)
        out["router_ce_loss"] = weights.router_ce_loss_weight * ce
    if weights.distill_loss_weight:
        distill = zero if source == "image" else router_distillation_loss(image_logits, taken)
        out["distill_loss"] = weights.distill_loss_weight * distill
    return out


def alignment_loss(outputs: Mapping[str, Any], weights: AlignLossWeights | None = None, *,
                   modality: Tensor | None = None,
                   local_temperatures: tuple[float, float, float] = (4.0, 5.0, 10.0),
                   gather: Gather = gather_with_grad) -> dict[str, Tensor]:
    """MedMoE's weighted loss terms (``*_loss``) of a forward with reports, and their sum under ``loss``.

    Args:
        outputs: ``MedMoE.forward(images, reports, ...)``'s dict.
        weights: term weights and loss settings (None: :class:`AlignLossWeights`' defaults).
        modality: (B,) modality ids (negative = unknown) for the router cross-entropy.
        local_temperatures: GLoRIA's (tau1, tau2, tau3), the model's ``config.local_temperatures``.
        gather: concatenates a tensor over ranks for the global term.

    Returns:
        ``global_loss``, ``local_loss`` and the router losses whose weight is non-zero, and ``loss``.
    """
    weights = AlignLossWeights() if weights is None else weights
    if "text_embeds" not in outputs:
        raise InvalidInputError("the alignment loss needs a forward with the reports (no text_embeds in the outputs)")
    terms: dict[str, Tensor] = {}
    if weights.global_loss_weight:
        terms["global_loss"] = weights.global_loss_weight * global_contrastive_loss(
            outputs["image_embeds"], outputs["text_embeds"], outputs["logit_scale"], gather=gather)
    if weights.local_loss_weight:
        terms["local_loss"] = weights.local_loss_weight * local_contrastive_loss(
            outputs["local_features"], outputs["word_features"], outputs["word_mask"], tuple(local_temperatures),
            weights.local_loss_chunk)
    terms.update(routing_losses(outputs, modality, weights))
    terms["loss"] = sum(terms.values(), torch.zeros((), device=outputs["image_embeds"].device))
    return terms
