"""Partial-label loss: sigmoid BCE + soft Dice counted only on the classes a sample's dataset annotates.

Every term is computed in float32 with autocast off (a caller's bf16/fp16 autocast does not reach the
voxel sums), and without reading anything back to the host: a batch with nothing labelled gives 0 through
the same arithmetic (counts clamped to 1), not through a Python branch on a device value.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from medmoe.devices import autocast_off
from medmoe.errors import InvalidInputError


class VoxelSums(NamedTuple):
    """Per (sample, class) reductions over the voxels, (B, K) float32 each."""

    bce: Tensor  # mean binary cross-entropy
    intersection: Tensor  # sum of sigmoid(logit) * target
    predicted: Tensor  # sum of sigmoid(logit)
    target: Tensor  # sum of target


def _check(logits: Tensor, target: Tensor, label_mask: Tensor) -> None:
    if logits.ndim < 3:
        raise InvalidInputError(f"logits must be (B, K, *spatial), got {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise InvalidInputError(f"target {tuple(target.shape)} and logits {tuple(logits.shape)} differ in shape")
    if label_mask.shape != logits.shape[:2]:
        raise InvalidInputError(f"label_mask must be (B, K) = {tuple(logits.shape[:2])}, got {tuple(label_mask.shape)}")


def voxel_sums(logits: Tensor, target: Tensor) -> VoxelSums:
    """The (B, K) voxel reductions every loss term is made of, in float32 outside autocast.

    Args:
        logits: (B, K, *spatial), any float dtype.
        target: (B, K, *spatial) multi-hot (bool or float) or class fractions in [0, 1].
    """
    with autocast_off(logits):
        logits = logits.float().flatten(2)
        target = target.float().flatten(2)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=2)
        prob = torch.sigmoid(logits)
        return VoxelSums(bce, (prob * target).sum(dim=2), prob.sum(dim=2), target.sum(dim=2))


def _dice(intersection: Tensor, total: Tensor, smooth: float) -> Tensor:
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def per_class_losses(logits: Tensor, target: Tensor, *, smooth: float = 1.0) -> tuple[Tensor, Tensor]:
    """(B, K) BCE (mean over voxels) and (B, K) soft Dice loss ``1 - (2|PT| + s) / (|P| + |T| + s)``, in fp32.

    ``smooth`` = 1 (as the Universal Model) makes a labelled-but-absent class push its prediction to 0
    instead of giving an undefined ratio.
    """
    sums = voxel_sums(logits, target)
    return sums.bce, _dice(sums.intersection, sums.predicted + sums.target, smooth)


def pooled_dice_loss(sums: VoxelSums, mask: Tensor, *, smooth: float = 1.0, min_target: float = 0.5) -> Tensor:
    """Soft Dice loss per class with intersection and sums pooled over the batch's samples that label the
    class (nnU-Net's "batch Dice"), averaged over the classes that are labelled by at least one sample and
    present in them (pooled target >= ``min_target`` voxels); 0 when there is no such class.

    Pooling keeps a class that is absent from one small patch from dominating the loss, as a per-sample
    Dice of an empty target does (its only optimum is predicting exactly nothing). A class absent from the
    whole batch is left to BCE: its Dice ``1 - s / (P + s)`` would pull its predictions to zero with a
    gradient of ~1 per unit of predicted mass, far stronger than the ~2 / (P + T) per voxel with which
    batches holding a small, rare class (a tumour in half the cases of one dataset) pull it up, so such
    classes died in training. BCE still penalises false positives of absent classes.

    Args:
        sums: :func:`voxel_sums` of the batch.
        mask: (B, K) float32, 1 where the sample's dataset labels the class.
    """
    inter = (sums.intersection * mask).sum(0)
    target_sum = (sums.target * mask).sum(0)
    total = (sums.predicted * mask).sum(0) + target_sum
    counted = (mask.sum(0) > 0) & (target_sum >= min_target)
    return (_dice(inter, total, smooth) * counted).sum() / counted.sum().clamp_min(1)


def partial_label_loss(logits: Tensor, target: Tensor, label_mask: Tensor, *, bce_weight: float = 1.0,
                       dice_weight: float = 1.0, smooth: float = 1.0, dice_reduction: str = "batch") -> dict[str, Tensor]:
    """BCE + Dice counted only on the (sample, class) pairs whose class the sample's dataset labels.

    A class outside ``label_mask`` contributes neither loss nor gradient: its voxels may hold that organ
    unlabelled (a liver in a kidney dataset), so "0" there is not a negative.

    Args:
        logits: (B, K, *spatial).
        target: (B, K, *spatial) multi-hot (bool or {0, 1} float) or class fractions.
        label_mask: (B, K) bool.
        bce_weight, dice_weight: term weights.
        smooth: Dice smoothing.
        dice_reduction: ``"batch"`` (per class present in the batch, pooled over the samples that label it;
            see :func:`pooled_dice_loss`) or ``"sample"`` (per sample and class, empty targets included, then
            averaged, as the Universal Model does).

    Returns:
        ``{"bce_loss": (), "dice_loss": ()}``, weighted, float32; both 0 (keeping the graph) when nothing
        is labelled.
    """
    _check(logits, target, label_mask)
    if dice_reduction not in ("batch", "sample"):
        raise InvalidInputError(f"dice_reduction must be 'batch' or 'sample', got {dice_reduction!r}")
    sums = voxel_sums(logits, target)
    with autocast_off(logits):
        mask = label_mask.to(device=logits.device, dtype=torch.float32)
        count = mask.sum().clamp_min(1)  # nothing labelled: every masked sum is 0, and so is each term
        dice_loss = (pooled_dice_loss(sums, mask, smooth=smooth) if dice_reduction == "batch" else
                     (_dice(sums.intersection, sums.predicted + sums.target, smooth) * mask).sum() / count)
        return {"bce_loss": bce_weight * (sums.bce * mask).sum() / count, "dice_loss": dice_weight * dice_loss}
