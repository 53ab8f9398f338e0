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

    The route is data-dependent (each image picks its expert), so every expert runs on the whole batch and
    each sample's output is gathered from the expert its router picked (argmax of the probabilities, the
    first one on a tie, as ``torch.max`` and ONNX ``ArgMax`` both do). The graph is static and the result
    exact: the gather copies the chosen expert's output and nothing else contributes. The price is K expert
    passes instead of one; the backbone runs once.

    Shapes:
        images: (B, 3, H, W) float32, normalised with ImageNet mean / std (``medmoe.data.ImageTransform``
        then ``normalize_uint8_batch``); H, W the model's ``backbone.image_size``.
        -> ``image_embeds`` (B, E) L2-normalised, ``router_probs`` (B, K) float32, ``expert_index`` (B,) int64.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.router = model.routing.image_router
        self.experts = model.moe.experts
        self.image_proj = model.image_proj
        self.gate = model.config.gate

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pyramid = self.backbone(images)
        probs = self.router.net(pyramid.pooled).float().softmax(dim=-1)  # as select_experts: fp32 softmax
        top, index = probs.max(dim=-1)
        outputs = torch.stack([expert(pyramid.features) for expert in self.experts], dim=1)  # (B, K, D, h, w)
        b, _, d, h, w = outputs.shape
        local = outputs.gather(1, index.view(b, 1, 1, 1, 1).expand(b, 1, d, h, w)).squeeze(1)
        if self.gate == "probability":  # straight_through gates are exactly 1 in the forward
            local = local * top.to(local.dtype).view(b, 1, 1, 1)
        embeds = self.image_proj(local.mean(dim=(2, 3)))
        return F.normalize(embeds, dim=-1), probs, index


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
