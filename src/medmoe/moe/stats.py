"""Routing statistics: expert usage (hard and soft routing), entropy, agreement between routings and with labels."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from medmoe.errors import InvalidInputError


def expert_counts(expert_index: Tensor, num_experts: int) -> Tensor:
    """(K,) long: the routing slots that went to each expert, on ``expert_index``'s device, with no host read.

    Counted by comparison with ``arange(K)``, not ``bincount`` (which reads the largest index back to the host
    to size its output on CUDA); an index outside ``[0, K)`` matches no expert and is not counted.

    Args:
        expert_index: (N,) or (N, k) long, the chosen experts.
        num_experts: K.
    """
    return (expert_index.reshape(-1, 1) == torch.arange(num_experts, device=expert_index.device)).sum(dim=0)


def expert_usage(expert_index: Tensor, num_experts: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """(K,) fraction of routing slots that went to each expert of a hard routing, on ``expert_index``'s device
    (no host read).

    Args:
        expert_index: (N,) or (N, k) long, the chosen experts.
        num_experts: K.
        dtype: of the result (float64 keeps a report's fractions exact to print).
    """
    counts = expert_counts(expert_index, num_experts).to(dtype)
    return counts / counts.sum().clamp_min(1)


class SoftUsage:
    """Mean gate of each expert of a soft routing, accumulated over chunks of the routed inputs.

    The soft-gate counterpart of :func:`expert_usage`: with every input spread over all experts, expert e's
    share is its mean gate. MoME gates its decoder scales per class and voxel (``gates`` (B, K, S, n) for n
    voxels of a chunk, ``expert_dim=2``) and never holds the whole volume's gates, so the usage is summed
    chunk by chunk along ``chunk_dim``. Differentiable; float32.

    Args:
        expert_dim: the dimension of ``gates`` that indexes the experts (non-negative).
        chunk_dim: the dimension along which the inputs are split into chunks.

    Example:
        >>> SoftUsage(expert_dim=1).update(torch.full((4, 2, 8), 0.5)).usage()
        tensor([0.5000, 0.5000])
    """

    def __init__(self, expert_dim: int, chunk_dim: int = -1) -> None:
        if expert_dim < 0:
            raise InvalidInputError(f"expert_dim must be >= 0, got {expert_dim}")
        self.expert_dim = expert_dim
        self.chunk_dim = chunk_dim
        self._sum: Tensor | None = None
        self._sum_expert_dim = expert_dim
        self._count = 0

    def update(self, gates: Tensor) -> SoftUsage:
        """Add a chunk of gates (the experts along ``expert_dim``, the chunk's inputs along ``chunk_dim``)."""
        if gates.ndim <= self.expert_dim or self.chunk_dim % gates.ndim == self.expert_dim:
            raise InvalidInputError(
                f"gates of shape {tuple(gates.shape)} need expert_dim={self.expert_dim} apart from chunk_dim={self.chunk_dim}"
            )
        chunk = gates.sum(dim=self.chunk_dim, dtype=torch.float32)
        # the experts' dimension in the chunk sums, one lower when the summed dimension came before it
        self._sum_expert_dim = self.expert_dim - int(self.chunk_dim % gates.ndim < self.expert_dim)
        self._sum = chunk if self._sum is None else self._sum + chunk
        self._count += gates.shape[self.chunk_dim]
        return self

    def usage(self) -> Tensor:
        """(K,) mean gate of each expert over every input added so far."""
        if self._sum is None:
            raise InvalidInputError("SoftUsage.usage() before any update()")
        others = [d for d in range(self._sum.ndim) if d != self._sum_expert_dim]
        inputs = self._count * (self._sum.numel() // self._sum.shape[self._sum_expert_dim])
        total = self._sum.sum(dim=others) if others else self._sum  # sum(dim=[]) would reduce every dimension
        return total / inputs


def routing_entropy(probs: Tensor) -> Tensor:
    """Mean per-input entropy (nats) of the router distribution: 0 = confident, log K = uniform."""
    p = probs.float().clamp_min(1e-12)
    return -(p * p.log()).sum(dim=-1).mean()


def route_agreement(expert_index: Tensor, other_index: Tensor) -> Tensor:
    """Fraction of inputs that two routings (e.g. the report's and the image's router) send to the same
    expert: a float32 scalar tensor on the inputs' device (no host read).

    Args:
        expert_index, other_index: (N,) long, one expert per input each.
    """
    if expert_index.shape != other_index.shape:
        raise InvalidInputError(
            f"routings differ in shape: {tuple(expert_index.shape)} vs {tuple(other_index.shape)}"
        )
    return (expert_index == other_index).float().mean()


def confusion_matrix(labels: Tensor | np.ndarray, experts: Tensor | np.ndarray, num_labels: int,
                     num_experts: int) -> np.ndarray:
    """(num_labels, num_experts) counts: row = true label (e.g. modality), column = chosen expert.
    Rows with a negative label are ignored."""
    labels, experts = (np.asarray(x.cpu() if isinstance(x, Tensor) else x).reshape(-1)
                       for x in (labels, experts))
    keep = labels >= 0
    matrix = np.zeros((num_labels, num_experts), dtype=np.int64)
    np.add.at(matrix, (labels[keep], experts[keep]), 1)
    return matrix


def routing_agreement(matrix: np.ndarray, *, match: str = "hungarian") -> tuple[float, dict[int, int]]:
    """Accuracy of routing against labels and the label -> expert mapping used.

    ``identity`` scores expert e as label e (routes trained with label supervision). ``hungarian`` finds the
    one-to-one label -> expert assignment maximising agreement (routes learned without labels, where expert
    numbering is arbitrary); labels left without an expert count as wrong.
    """
    total = matrix.sum()
    if total == 0:
        return float("nan"), {}
    if match == "identity":
        n = min(matrix.shape)
        return float(np.trace(matrix[:n, :n]) / total), {i: i for i in range(n)}
    if match != "hungarian":
        raise ValueError(f"match must be 'hungarian' or 'identity', got {match!r}")
    rows, cols = linear_sum_assignment(-matrix)
    return float(matrix[rows, cols].sum() / total), {int(r): int(c) for r, c in zip(rows, cols)}
