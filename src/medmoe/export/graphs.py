"""The modules that ``medmoe export`` traces: tensor-in, tensor-out views of the models' inference paths.

Each wraps a model in eval mode and computes what the model's own method computes, written so that the
graph is static: no host reads and no Python branches on tensor values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RoutedImageEncoder(nn.Module):
    """MedMoE's image side routed by the image router, as :meth:`MedMoE.image_features` computes it.

    The route is data-dependent (each image picks its expert). In the graph each expert sits in a
    ``torch.cond`` (ONNX ``If``) that runs it on the whole batch when at least one image chose it and yields
    zeros otherwise; each image's output is then gathered from the expert its router chose (argmax of the
    probabilities, the first one on a tie, as ``torch.max`` and ONNX ``ArgMax`` both do). The result is exact:
    the gather copies the chosen expert's output and nothing else contributes. A batch of one runs one
    expert, like the model; a batch that uses m experts runs m experts on all its images (the model's sparse
    dispatch runs each on its own images only).

    Args:
        model: a MedMoE.
        branches: False: run every expert unconditionally (no ``If``; for tracers that cannot keep a
            data-dependent branch, such as the TorchScript exporter, which would freeze one side of it).

    Shapes:
        images: (B, 3, H, W) float32, normalised with ImageNet mean / std (``medmoe.data.ImageTransform``
        then ``normalize_uint8_batch``); H, W the model's ``backbone.image_size``.
        -> ``image_embeds`` (B, E) L2-normalised, ``router_probs`` (B, K) float32, ``expert_index`` (B,) int64.
    """

    def __init__(self, model: nn.Module, *, branches: bool = True) -> None:
        super().__init__()
        self.branches = branches
        self.backbone = model.backbone
        self.router = model.routing.image_router
        self.experts = model.moe.experts
        self.image_proj = model.image_proj
        self.gate = model.config.gate
        self.local_dim = model.config.local_dim

    def _expert_if_chosen(self, e: int, chosen: Tensor, features: tuple[Tensor, ...]) -> Tensor:
        """Expert ``e`` on the whole batch if ``chosen`` (a bool scalar), else zeros of its output's shape."""
        def run(*levels: Tensor) -> Tensor:
            return self.experts[e](list(levels))

        def skip(*levels: Tensor) -> Tensor:
            first = levels[0]
            return first.new_zeros(first.shape[0], self.local_dim, first.shape[2], first.shape[3])

        return torch.cond(chosen, run, skip, features) if self.branches else run(*features)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pyramid = self.backbone(images)
        probs = self.router.logits(pyramid.pooled).softmax(dim=-1)  # as select_experts: fp32 softmax
        top, index = probs.max(dim=-1)
        features = tuple(pyramid.features)
        outputs = torch.stack([self._expert_if_chosen(e, (index == e).any(), features)
                               for e in range(len(self.experts))], dim=1)  # (B, K, D, h, w)
        b, _, d, h, w = outputs.shape
        local = outputs.gather(1, index.view(b, 1, 1, 1, 1).expand(b, 1, d, h, w)).squeeze(1)
        if self.gate == "probability":  # straight_through gates are exactly 1 in the forward
            local = local * top.to(local.dtype).view(b, 1, 1, 1)
        return F.normalize(self.image_proj(local.mean(dim=(2, 3))), dim=-1), probs, index


class TextEncoder(nn.Module):
    """MedMoE's report side: token ids and attention mask -> :meth:`MedMoE.encode_text`'s embedding.

    Runs the tower's Hugging Face encoder, pools its last hidden state with the tower's own pooling (mean,
    first token or end-of-text token), applies CLIP's text projection when the tower does, then the model's
    text projection. ``token_type_ids`` are left out: the tower's single-sentence inputs are all zeros, the
    encoder's default.

    Shapes:
        input_ids, attention_mask: (B, L) int64 from the model's tokenizer (``padding=True``).
        -> ``text_embeds`` (B, E) L2-normalised.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.tower = model.text
        self.text_proj = model.text_proj

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        tower = self.tower
        last = tower.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        sentence = tower._pool(last, attention_mask)
        if tower.config.projection:
            sentence = tower.encoder.text_projection(sentence)
        return F.normalize(self.text_proj(sentence), dim=-1)


class PromptedSegmenter(nn.Module):
    """MoME's forward with the prompt embeddings as an input: ``model(volume, text_emb=text_emb)``.

    The model's CPU voxel chunking (a Python loop whose length depends on B and K) is switched off while
    tracing, so the per-voxel stage is one pass over all voxels; chunking changes speed, not values.

    Shapes:
        volume: (B, C, D, H, W) float32; text_emb: (K, T) from ``MoME.embed_prompts``.
        -> ``logits`` (B, K, D, H, W).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, volume: Tensor, text_emb: Tensor) -> Tensor:
        chunk = self.model.cpu_chunk_elements
        self.model.cpu_chunk_elements = None
        try:
            return self.model.forward_outputs(volume, text_emb=text_emb)["logits"]
        finally:
            self.model.cpu_chunk_elements = chunk


@contextlib.contextmanager
def eager_attention(*modules: nn.Module) -> Iterator[None]:
    """Run the Hugging Face attention of ``modules`` with the plain (eager) implementation while tracing.

    The exporter's decomposition of ``scaled_dot_product_attention`` in HF Swin fails with a dynamic batch
    (a view of a transposed tensor); the eager implementation is the same math (softmax(QK^T s + mask) V).
    """
    configs = [m.config for module in modules for m in module.modules() if hasattr(getattr(m, "config", None),
                                                                               "_attn_implementation")]
    saved = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = "eager"
        yield
    finally:
        for c, impl in zip(configs, saved):
            c._attn_implementation = impl
