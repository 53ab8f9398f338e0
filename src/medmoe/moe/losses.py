"""Auxiliary router losses, returned as named tensors (never stashed in globals)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medmoe.errors import InvalidInputError
from medmoe.moe.router import RouterOutput


def load_balance_loss(probs: Tensor, expert_index: Tensor) -> Tensor:
    """Switch Transformer load balance: ``K * sum_e f_e * P_e``.

    ``f_e`` is the fraction of routing slots sent to expert e (not differentiable), ``P_e`` the mean router
    probability of e (differentiable). Equals 1 for a perfectly uniform router.

    Args:
        probs: (N, K) router probabilities.
        expert_index: (N, k) chosen experts.
    """
    num_experts = probs.shape[-1]
    counts = torch.bincount(expert_index.reshape(-1), minlength=num_experts).to(probs.dtype)
    fraction = counts / counts.sum().clamp_min(1)
    return num_experts * (fraction * probs.mean(dim=0)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE z-loss: mean squared log-partition; keeps router logits small and the softmax stable."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def router_ce_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Cross-entropy of router **logits** against expert labels (e.g. modality ids).

    The released MedMoE code applies this to softmax outputs, a double softmax; here it takes logits.
    Rows labelled ``ignore_index`` do not count; with no labelled row the loss is 0 (and keeps the graph).
    """
    if labels.shape != logits.shape[:1]:
        raise InvalidInputError(f"labels must be (N,) = {tuple(logits.shape[:1])}, got {tuple(labels.shape)}")
    if not (labels != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def router_distillation_loss(student_logits: Tensor, teacher_logits: Tensor, *, soft: bool = False,
                             temperature: float = 1.0) -> Tensor:
    """Train a student router (e.g. image) to predict a teacher router's (e.g. report) choice.

    The teacher is detached. Hard (default): cross-entropy against the teacher's argmax, i.e. the route
    actually taken under top-1. Soft: KL(teacher || student) at ``temperature``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise InvalidInputError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}"
        )
    teacher = teacher_logits.detach().float()
    student = student_logits.float()
    if not soft:
        return F.cross_entropy(student, teacher.argmax(dim=-1))
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t * t


def router_aux_losses(route: RouterOutput, *, labels: Tensor | None = None, teacher: RouterOutput | None = None,
                      balance_weight: float = 0.0, z_weight: float = 0.0, ce_weight: float = 0.0,
                      distill_weight: float = 0.0) -> dict[str, Tensor]:
    """The weighted auxiliary losses of one routing decision, keyed ``balance_loss``, ``z_loss``,
    ``router_ce_loss``, ``distill_loss``. A term whose weight is 0 (or whose input is absent) is left out."""
    losses: dict[str, Tensor] = {}
    if balance_weight:
        losses["balance_loss"] = balance_weight * load_balance_loss(route.probs, route.expert_index)
    if z_weight:
        losses["z_loss"] = z_weight * router_z_loss(route.logits)
    if ce_weight and labels is not None:
        losses["router_ce_loss"] = ce_weight * router_ce_loss(route.logits, labels)
    if distill_weight and teacher is not None:
        losses["distill_loss"] = distill_weight * router_distillation_loss(route.logits, teacher.logits)
    return losses
