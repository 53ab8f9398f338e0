"""Scale-attention experts: fuse a backbone's 2-D pyramid into one local feature map at its finest level."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmoe.errors import InvalidInputError


class ScaleAttentionExpert(nn.Module):
    """One MedMoE expert.

    Each pyramid level goes through a 1x1 conv + ReLU to width D and is upsampled (2-D bilinear, unlike the
    released code's 1-D interpolation over flattened tokens) to the finest level's grid; a shared MLP
    scores every level at every location, a softmax over levels weights them, and the weighted sum is
    optionally refined by ``refine_depth`` x (conv3x3 + BN + ReLU).

    Args:
        in_channels: channels of each pyramid level, finest first (``feature_info.channels``).
        dim: D, output channels.
        hidden: hidden width of the scale-scoring MLP (0 = D // 2, as the released 768 -> 384 -> 1).
        refine_depth: number of conv refinement blocks.

    Shapes:
        features: [(B, C_s, H_s, W_s)], finest first -> (B, D, H_0, W_0) at the finest level's grid.

    Example:
        >>> expert = ScaleAttentionExpert((24, 48, 96, 192), dim=64)
        >>> pyramid = [torch.randn(2, c, 16 // 2**s, 16 // 2**s) for s, c in enumerate((24, 48, 96, 192))]
        >>> expert(pyramid).shape
        torch.Size([2, 64, 16, 16])
    """

    def __init__(self, in_channels: Sequence[int], dim: int, *, hidden: int = 0, refine_depth: int = 0) -> None:
        super().__init__()
        if not in_channels:
            raise InvalidInputError("ScaleAttentionExpert needs at least one pyramid level")
        hidden = hidden or max(1, dim // 2)
        self.proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, dim, 1), nn.ReLU(inplace=True)) for c in in_channels)
        self.score = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1))
        self.refine = nn.Sequential(*(layer for _ in range(refine_depth) for layer in (
            nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))))

    def scale_weights(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """(levels (B, S, D, H_0, W_0), weights (B, S, 1, H_0, W_0)) before the weighted sum."""
        if len(features) != len(self.proj):
            raise InvalidInputError(f"expected {len(self.proj)} pyramid levels, got {len(features)}")
        size = features[0].shape[-2:]
        levels = [proj(x) for proj, x in zip(self.proj, features)]
        levels = [F.interpolate(y, size=size, mode="bilinear", align_corners=False) if y.shape[-2:] != size
                  else y for y in levels]
        stacked = torch.stack(levels, dim=1)  # (B, S, D, H, W)
        b, s = stacked.shape[:2]
        return stacked, self.score(stacked.flatten(0, 1)).view(b, s, 1, *size).softmax(dim=1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        levels, weights = self.scale_weights(features)
        return self.refine((levels * weights).sum(dim=1))
