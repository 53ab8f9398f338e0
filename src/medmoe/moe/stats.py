"""Routing statistics: expert usage, entropy, agreement with labels."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def expert_usage(expert_index: Tensor, num_experts: int) -> Tensor:
    """(K,) fraction of routing slots that went to each expert."""
    counts = torch.bincount(expert_index.reshape(-1).cpu(), minlength=num_experts).float()
    return counts / counts.sum().clamp_min(1)


def routing_entropy(probs: Tensor) -> Tensor:
    """Mean per-input entropy (nats) of the router distribution: 0 = confident, log K = uniform."""
    p = probs.float().clamp_min(1e-12)
    return -(p * p.log()).sum(dim=-1).mean()


def usage_entropy(usage: Tensor) -> Tensor:
    """Entropy (nats) of the expert-usage histogram: log K when every expert is used equally."""
    p = usage.float().clamp_min(1e-12)
    return -(p * p.log()).sum()


def routing_scalars(probs: Tensor, expert_index: Tensor, prefix: str = "route") -> dict[str, float]:
    """Scalars a trainer logs per step: usage of each expert, mean entropy, usage entropy."""
    num_experts = probs.shape[-1]
    usage = expert_usage(expert_index, num_experts)
    out = {f"{prefix}/usage_{e}": float(u) for e, u in enumerate(usage)}
    out[f"{prefix}/entropy"] = float(routing_entropy(probs.detach()))
    out[f"{prefix}/usage_entropy"] = float(usage_entropy(usage))
    return out


def confusion_matrix(labels: Tensor | np.ndarray, experts: Tensor | np.ndarray, num_labels: int,
                     num_experts: int) -> np.ndarray:
    """(num_labels, num_experts) counts: row = true label (e.g. modality), column = chosen expert.
    Rows with a negative label are ignored."""
    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).reshape(-1)
    experts = np.asarray(experts.cpu() if isinstance(experts, Tensor) else experts).reshape(-1)
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


class RoutingTracker:
    """Accumulates routing decisions over many batches (e.g. an evaluation pass)."""

    def __init__(self, num_experts: int, num_labels: int | None = None) -> None:
        self.num_experts = num_experts
        self.num_labels = num_labels
        self._experts: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._entropy_sum = 0.0
        self._count = 0

    def update(self, probs: Tensor, expert_index: Tensor, labels: Tensor | None = None) -> None:
        self._experts.append(expert_index[:, 0].detach().cpu())
        if labels is not None:
            self._labels.append(labels.detach().cpu())
        self._entropy_sum += float(routing_entropy(probs.detach())) * probs.shape[0]
        self._count += probs.shape[0]

    def summary(self, match: str = "hungarian") -> dict:
        experts = torch.cat(self._experts) if self._experts else torch.zeros(0, dtype=torch.long)
        usage = expert_usage(experts, self.num_experts)
        out = {"usage": usage.tolist(), "entropy": self._entropy_sum / max(self._count, 1), "count": self._count}
        if self._labels and self.num_labels:
            matrix = confusion_matrix(torch.cat(self._labels), experts, self.num_labels, self.num_experts)
            accuracy, mapping = routing_agreement(matrix, match=match)
            out.update(confusion=matrix.tolist(), agreement=accuracy, mapping=mapping)
        return out
