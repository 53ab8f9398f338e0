"""Class-specific dynamic heads (the Universal Model's controller), applied to all classes and samples at once."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DynamicHeads(nn.Module):
    """A controller turns [pooled bottleneck; ReLU(Linear(t_k))] into the weights and biases of three 1x1x1
    convs (C -> h -> h -> 1) for each (sample, class) pair; they run as one batched matmul over B*K groups.

    Args:
        bottleneck_channels: channels of the SwinUNETR bottleneck.
        text_dim: width of the prompt embeddings.
        in_channels: C, channels of the fused expert feature.
        hidden: h (8 in the Universal Model, giving 153 parameters per head).
        proj_dim: width of the projected image and text vectors (256 in the Universal Model).

    Shapes:
        bottleneck: (B, Cb, d, h, w); text: (K, T) -> params (B, K, P).
        params -> :meth:`layers`: three (weight (B*K, out, in), bias (B*K, out, 1)).
        features: (B, K, C, *size) with params -> logits (B, K, *size) (:meth:`forward`, or :meth:`run` on
        (B, K, C, X) voxel chunks with the layers).
    """

    def __init__(self, bottleneck_channels: int, text_dim: int, in_channels: int, hidden: int = 8,
                 proj_dim: int = 256) -> None:
        super().__init__()
        self.image_pool = nn.Sequential(nn.GroupNorm(16 if bottleneck_channels % 16 == 0 else 1, bottleneck_channels),
                                        nn.ReLU())
        self.image_proj = nn.Linear(bottleneck_channels, proj_dim)
        self.text_proj = nn.Linear(text_dim, proj_dim)
        self.in_channels = in_channels
        self.hidden = hidden
        # (weight shape, bias size) of the three convs, in the order the controller emits them
        self.layer_shapes = [((hidden, in_channels), hidden), ((hidden, hidden), hidden), ((1, hidden), 1)]
        self.num_params = sum(o * i + b for (o, i), b in self.layer_shapes)
        self.controller = nn.Linear(2 * proj_dim, self.num_params)

    def head_params(self, bottleneck: Tensor, text: Tensor) -> Tensor:
        image = self.image_proj(self.image_pool(bottleneck).mean(dim=(2, 3, 4)))  # (B, P)
        words = torch.relu(self.text_proj(text.to(image.dtype)))  # (K, P)
        b, k = image.shape[0], words.shape[0]
        joint = torch.cat([image[:, None].expand(b, k, -1), words[None].expand(b, k, -1)], dim=-1)
        return self.controller(joint)

    def layers(self, params: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(B, K, P) params -> the three convs' (weight (B*K, out, in), bias (B*K, out, 1)), as views."""
        sizes = [n for (out_c, in_c), n_bias in self.layer_shapes for n in (out_c * in_c, n_bias)]
        chunks = params.reshape(-1, self.num_params).split(sizes, dim=1)  # weight, bias, weight, bias, ...
        return [(weight.view(-1, *shape), bias[..., None])
                for (shape, _), weight, bias in zip(self.layer_shapes, chunks[::2], chunks[1::2])]

    @staticmethod
    def run(layers: list[tuple[Tensor, Tensor]], features: Tensor) -> Tensor:
        """Run the heads of :meth:`layers` on (B, K, C, X) features -> (B, K, X) logits.

        Each layer is one grouped 1x1x1 conv for all B*K heads: a batched matmul, then the bias added in place.
        """
        b, k, c, n = features.shape
        x = features.reshape(b * k, c, n)
        for i, (weight, bias) in enumerate(layers):
            x = torch.bmm(weight.to(x.dtype), x).add_(bias.to(x.dtype))
            if i < len(layers) - 1:
                x = x.relu_()
        return x.view(b, k, n)

    def forward(self, features: Tensor, params: Tensor) -> Tensor:
        b, k, c, *size = features.shape
        return self.run(self.layers(params), features.reshape(b, k, c, -1)).view(b, k, *size)
