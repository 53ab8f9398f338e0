"""Auxiliary router losses, returned as tensors (never stashed in globals).

Both tasks take theirs from here: MedMoE's top-1 routers (:func:`load_balance_loss`, :func:`router_ce_loss`,
:func:`router_distillation_loss`) and MoME's soft per-voxel gate over decoder scales
(:func:`soft_load_balance_loss`).

Every loss runs in float32 under autocast (:func:`~medmoe.moe.precision.full_precision`) and reads nothing
back to the host, so a training step pays no device synchronisation for them.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from medmoe.errors import InvalidInputError
from medmoe.moe.precision import full_precision
from medmoe.moe.stats import expert_usage


@full_precision
def load_balance_loss(probs: Tensor, expert_index: Tensor) -> Tensor:
    """Switch Transformer load balance: ``K * sum_e f_e * P_e``.

    ``f_e`` is the fraction of routing slots sent to expert e (not differentiable), ``P_e`` the mean router
    probability of e (differentiable). Equals 1 for a perfectly uniform router.

    Args:
        probs: (N, K) router probabilities.
        expert_index: (N, k) chosen experts.

    Returns:
        Scalar loss, in ``[1, K]`` for top-1 routing.
    """
    num_experts = probs.shape[-1]
    fraction = expert_usage(expert_index, num_experts, dtype=probs.dtype)
    return num_experts * (fraction * probs.mean(dim=0)).sum()


@full_precision
def soft_load_balance_loss(usage: Tensor) -> Tensor:
    """The soft-gate variant of :func:`load_balance_loss`: ``K * sum_e u_e ** 2``.

    A soft gate sends every input to every expert with weight ``g_e``, so the fraction routed to expert e
    is its mean gate ``u_e`` (:class:`medmoe.moe.SoftUsage`), which is also its mean probability:
    Switch's ``K * sum_e f_e * P_e`` becomes ``K * sum_e u_e ** 2``, differentiable through both factors.

    Args:
        usage: (K,) mean gate of each expert (sums to 1).

    Returns:
        Scalar loss: 1 when the experts are used equally, K when one expert takes every input.
    """
    if usage.dim() != 1:
        raise InvalidInputError(f"usage must be (K,) mean gates, got shape {tuple(usage.shape)}")
    return usage.numel() * usage.pow(2).sum()


@full_precision
def router_ce_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Cross-entropy of router **logits** against expert labels (e.g. modality ids).

    The released MedMoE code applies this to softmax outputs, a double softmax; here it takes logits.
    Rows labelled ``ignore_index`` do not count; with no labelled row the loss is 0 (and keeps the graph).

    Args:
        logits: (N, K) router logits.
        labels: (N,) long expert labels, ``ignore_index`` for unlabelled rows.
        ignore_index: the label of rows that do not count.
    """
    if labels.shape != logits.shape[:1]:
        raise InvalidInputError(f"labels must be (N,) = {tuple(logits.shape[:1])}, got {tuple(labels.shape)}")
    # the mean over labelled rows, as a sum over them divided by their count (at least 1): no host read
    # decides whether any row is labelled, and with none the sum is 0 and keeps the graph
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp_min(1)


@full_precision
def router_distillation_loss(student_logits: Tensor, taken: Tensor) -> Tensor:
    """Train a student router (e.g. the image router) to predict the route that was actually taken.

    Cross-entropy of the student's logits against the experts the inputs were sent to (by a teacher router,
    e.g. the report's, or by labels), which are detached: only the student learns.

    Args:
        student_logits: (N, K) logits of the router that learns.
        taken: (N,) long, the expert each input was sent to.
    """
    if taken.shape != student_logits.shape[:1]:
        raise InvalidInputError(
            f"taken experts must be (N,) = {tuple(student_logits.shape[:1])}, got {tuple(taken.shape)}"
        )
    return router_ce_loss(student_logits, taken.detach())
