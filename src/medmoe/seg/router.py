"""Text-conditioned voxel router: per class k and voxel x, a softmax over the decoder scales.

    g_{k,s}(x) = softmax_s( <v(x), W_s t_k> / sqrt(d) )

v(x) is a 1x1x1 projection of the finest decoder feature at the fusion resolution; W_s t_k a per-scale
projection of the prompt embedding. Unlike the token routers of ``medmoe.moe`` this is a dense (soft)
mixture at every voxel, so there is nothing to dispatch; it keeps the core's conventions: fp32 softmax and
auxiliary losses returned, never stored.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ScaleRouter(nn.Module):
    """Per-class, per-voxel soft gates over S scales.

    Args:
        voxel_channels: channels of the feature map v(x) is projected from.
        text_dim: width of the prompt embeddings t_k.
        num_scales: S.
        dim: d.

    Shapes:
        voxel_features: (B, C, *size); text: (K, T) -> gates (B, K, S, *size) float32, summing to 1 over S.
    """

    def __init__(self, voxel_channels: int, text_dim: int, num_scales: int, dim: int) -> None:
        super().__init__()
        self.voxel_proj = nn.Conv3d(voxel_channels, dim, kernel_size=1)
        self.text_proj = nn.Linear(text_dim, num_scales * dim)
        self.num_scales = num_scales
        self.dim = dim

    def flat(self, voxel_features: Tensor, text: Tensor) -> Tensor:
        """(B, K, S, X) gates, X = voxels flattened (contiguous): the layout the fusion reads."""
        b = voxel_features.shape[0]
        k = text.shape[0]
        v = self.voxel_proj(voxel_features).flatten(2)  # (B, d, X)
        q = self.text_proj(text).view(k * self.num_scales, self.dim) / math.sqrt(self.dim)  # rows: (k, s)
        logits = torch.matmul(q.float(), v.float())  # (B, K*S, X), fp32 for the softmax
        return logits.view(b, k, self.num_scales, -1).softmax(dim=2)  # voxels stay contiguous

    def forward(self, voxel_features: Tensor, text: Tensor) -> Tensor:
        b, _, *size = voxel_features.shape
        return self.flat(voxel_features, text).view(b, text.shape[0], self.num_scales, *size)


def gate_usage(gates: Tensor) -> Tensor:
    """(S,) mean gate of each scale over samples, classes and voxels."""
    dims = [d for d in range(gates.ndim) if d != 2]
    return gates.float().mean(dim=dims)


def gate_balance_loss(gates: Tensor) -> Tensor:
    """Soft Switch-style balance: ``S * sum_s usage_s^2``; 1 when the scales are used equally, S when one
    scale takes every voxel. Differentiable through the mean gates."""
    usage = gate_usage(gates)
    return usage.numel() * usage.pow(2).sum()
