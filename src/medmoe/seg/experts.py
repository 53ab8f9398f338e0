"""Scale experts: one conv block per decoder output, brought to a common resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _groups(channels: int) -> int:
    return next(g for g in (4, 2, 1) if channels % g == 0)


class ScaleExperts(nn.Module):
    """Expert s: Conv3d 3x3x3 (C_s -> c_e) + GroupNorm + LeakyReLU on decoder output s, then trilinear
    upsampling to the fusion resolution (average pooling for a scale finer than it).

    The conv runs at the scale's own (coarse) resolution, so the cost is dominated by the finest scales.
    GroupNorm rather than InstanceNorm: the coarsest scale of a 32^3 patch has a single voxel.

    Args:
        in_channels: C_s of each decoder output, coarse to fine.
        out_channels: c_e.

    Shapes:
        features: S tensors (B, C_s, *size_s) -> (B, S, c_e, *size).
    """

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(c, out_channels, kernel_size=3, padding=1, bias=False),
                nn.GroupNorm(_groups(out_channels), out_channels),
                nn.LeakyReLU(0.01),
            )
            for c in in_channels
        )
        self.out_channels = out_channels

    @property
    def num_experts(self) -> int:
        return len(self.blocks)

    def forward(self, features: list[Tensor], size: tuple[int, int, int]) -> Tensor:
        outs = []
        for block, feat in zip(self.blocks, features):
            y = block(feat)
            if tuple(y.shape[2:]) == tuple(size):
                pass
            elif all(a >= b for a, b in zip(y.shape[2:], size)):
                y = F.adaptive_avg_pool3d(y, size)  # the full-res scale under half-res fusion: average, not alias
            else:
                y = F.interpolate(y, size=size, mode="trilinear", align_corners=False)
            outs.append(y)
        return torch.stack(outs, dim=1)
