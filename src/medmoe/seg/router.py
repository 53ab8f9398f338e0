"""Text-conditioned voxel router: per class k and voxel x, a softmax over the decoder scales (pyramid levels).

    g_{k,s}(x) = softmax_s( <v(x), W_s t_k> / sqrt(d) ),   v(x) = V f(x) + c

v(x) is a 1x1x1 projection of the decoder feature f at the fusion resolution; W_s t_k a per-scale
projection of the prompt embedding; the scale axis s is the pyramid's level order (finest first), as are the
rows of ``text_proj`` (S blocks of d). Since v is linear in f, the logits are computed as one matmul of the
prompt queries folded into V, ``(W_s t_k)^T V f(x) + (W_s t_k)^T c``, without materialising v. Unlike the
token routers of ``medmoe.moe`` this is a dense (soft) mixture at every voxel, so there is nothing to
dispatch; it keeps the core's conventions (fp32 softmax, auxiliary losses returned, never stored) and takes
its usage statistics and balance loss from the core (:class:`medmoe.moe.SoftUsage`,
:func:`medmoe.moe.soft_load_balance_loss`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmoe.devices import autocast_off


class ScaleRouter(nn.Module):
    """Per-class, per-voxel soft gates over S scales.

    Args:
        voxel_channels: channels C_v of the feature map v(x) is projected from.
        text_dim: width of the prompt embeddings t_k.
        num_scales: S.
        dim: d.

    Shapes:
        voxel_features: (B, C_v, *size); text: (K, T) -> gates (B, K, S, *size) float32, summing to 1 over S
        (scale axis in the pyramid's level order, finest first).
    """

    def __init__(self, voxel_channels: int, text_dim: int, num_scales: int, dim: int) -> None:
        super().__init__()
        self.voxel_proj = nn.Conv3d(voxel_channels, dim, kernel_size=1)
        self.text_proj = nn.Linear(text_dim, num_scales * dim)
        self.num_scales = num_scales
        self.dim = dim

    def queries(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """The prompt queries folded into the voxel projection: weight (K*S, C_v) and bias (K*S, 1), rows
        ordered (k, s), such that ``weight @ f(x) + bias = <v(x), W_s t_k> / sqrt(d)``; float32 with autocast
        off, whatever the caller's autocast."""
        with autocast_off(text):
            q = F.linear(text.float(), self.text_proj.weight.float(), self.text_proj.bias.float())
            q = q.view(-1, self.dim) / math.sqrt(self.dim)  # (K*S, d)
            return q @ self.voxel_proj.weight.flatten(1).float(), (q @ self.voxel_proj.bias.float())[:, None]

    def gates(self, queries: tuple[Tensor, Tensor], voxel_features: Tensor) -> Tensor:
        """(B, K, S, X) float32 gates of flattened voxel features (B, C_v, X); ``queries`` from :meth:`queries`.

        The logits and the softmax run in float32 with autocast off: under bf16 autocast a matmul of float32
        inputs would still run in bf16 (8 mantissa bits), and the gates equal the float32 ones to 1e-5.
        """
        weight, bias = queries
        with autocast_off(voxel_features):
            logits = torch.matmul(weight, voxel_features.float()).add_(bias)  # (B, K*S, X)
            return logits.view(logits.shape[0], -1, self.num_scales, logits.shape[-1]).softmax(dim=2)

    def forward(self, voxel_features: Tensor, text: Tensor) -> Tensor:
        b, _, *size = voxel_features.shape
        gates = self.gates(self.queries(text), voxel_features.flatten(2))  # (B, K, S, X)
        return gates.view(b, text.shape[0], self.num_scales, *size)
