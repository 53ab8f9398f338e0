"""MedMoE's contrastive losses: global InfoNCE over ranks and GLoRIA's local word-region loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from medmoe.distributed import gather_with_grad
from medmoe.errors import InvalidInputError

Gather = Callable[[Tensor], Tensor]


def _at_least_fp32(x: Tensor) -> Tensor:
    """Losses run in float32 under autocast (half inputs), and keep float64 inputs exact."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _scale_grad(x: Tensor, factor: float) -> Tensor:
    """``x`` in value, ``factor * grad`` in the backward pass."""
    if factor == 1:
        return x
    return x * factor - x.detach() * (factor - 1)


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
    logits = logit_scale * _at_least_fp32(images) @ _at_least_fp32(texts).t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


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
        attn = word_region_attention(w, m, regions, temp1)  # (t, I, W, R)
        context = torch.einsum("tiwr,ird->tiwd", attn, regions)
        cosine = F.cosine_similarity(w[:, None], context, dim=-1, eps=1e-8)  # (t, I, W)
        cosine = (cosine * temp2).masked_fill(~m[:, None, :], float("-inf"))
        columns.append(torch.logsumexp(cosine, dim=-1))  # (t, I)
    return torch.cat(columns, dim=0).t()


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
    keep = word_mask.any(dim=1)
    if not bool(keep.all()):
        local_features, words, word_mask = local_features[keep], words[keep], word_mask[keep]
    if words.shape[0] == 0:
        return local_features.sum() * 0.0
    regions = _at_least_fp32(local_features.flatten(2).transpose(1, 2))  # (B, R, D)
    scores = temp3 * local_similarity(_at_least_fp32(words), word_mask, regions, temp1, temp2, chunk)
    target = torch.arange(scores.shape[0], device=scores.device)
    return (F.cross_entropy(scores, target) + F.cross_entropy(scores.t(), target)) / 2
