"""MedMoE routing: a text router on the report, an image router on the pooled image feature.

Training routes by ``route_by`` (the report, the image or the modality label); the image router always
learns to predict the route that was taken (``distill_loss`` in :mod:`medmoe.align.losses`), so inference
routes by the image alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from medmoe.errors import InvalidInputError
from medmoe.moe import Router, RouterOutput

IGNORE = -100


@dataclass
class RouteDecision:
    """The routes of one batch.

    Attributes:
        taken: the route the experts were run with; ``taken.logits`` are the routing router's.
        image: the image router's own decision (the inference route).
        text: the text router's decision, None when no report was given.
        source: which signal routed: ``text``, ``image`` or ``label``.
    """

    taken: RouterOutput
    image: RouterOutput
    text: RouterOutput | None
    source: str


def clean_modality_labels(labels: Tensor | None, num_experts: int, batch: int,
                          device: torch.device) -> Tensor | None:
    """(B,) modality ids as long on ``device``, with unknown (< 0) or out-of-range ids set to IGNORE; None
    stays None."""
    if labels is None:
        return None
    labels = torch.as_tensor(labels, device=device).long().reshape(-1)
    if labels.shape[0] != batch:
        raise InvalidInputError(f"modality labels must be (B,) = ({batch},), got {tuple(labels.shape)}")
    return torch.where((labels >= 0) & (labels < num_experts), labels, torch.full_like(labels, IGNORE))


class MedMoERouting(nn.Module):
    """The two routers of MedMoE and the rule that picks the route.

    Args:
        text_dim: width of the report's sentence embedding.
        image_dim: width of the pooled image feature.
        num_experts: K.
        hidden_dim: routers' MLP width (0 = linear).
        jitter: multiplicative input noise in training.
        detach_image: stop the gradient of the image router's input (the pooled feature).
        gate: ``straight_through`` (the chosen expert's output is scaled by exactly 1, the router gets the
            gradient of its probability) or ``probability`` (scaled by the routing router's probability, so
            the same image gets another embedding when the text router routed it in training than when
            the image router does at inference).
    """

    def __init__(self, text_dim: int, image_dim: int, num_experts: int, *, hidden_dim: int = 128,
                 jitter: float = 0.0, detach_image: bool = False, gate: str = "straight_through") -> None:
        super().__init__()
        self.num_experts = num_experts
        self.detach_image = detach_image
        options = {"hidden_dim": hidden_dim, "gating": "top1", "gate": gate, "jitter": jitter}
        self.text_router = Router(text_dim, num_experts, **options)
        self.image_router = Router(image_dim, num_experts, **options)

    def forward(self, pooled: Tensor, sentence: Tensor | None = None, *, labels: Tensor | None = None,
                route_by: str = "image") -> RouteDecision:
        """Decide the route of B images.

        Args:
            pooled: (B, C) pooled image features.
            sentence: (B, H) report embeddings (needed for ``route_by`` text / label).
            labels: (B,) modality ids, negative = unknown (``route_by="label"``).
            route_by: ``text`` | ``image`` | ``label``.
        """
        image = self.image_router(pooled.detach() if self.detach_image else pooled)
        if route_by == "image":
            return RouteDecision(image, image, None, "image")
        if sentence is None:
            raise InvalidInputError(f"route_by={route_by!r} needs the reports; use route_by='image' without them")
        text = self.text_router(sentence)
        if route_by == "text":
            return RouteDecision(text, image, text, "text")
        if route_by != "label":
            raise InvalidInputError(f"route_by must be 'text', 'image' or 'label', got {route_by!r}")
        labels = clean_modality_labels(labels, self.num_experts, pooled.shape[0], pooled.device)
        if labels is None:
            raise InvalidInputError("route_by='label' needs modality labels")
        known = labels != IGNORE
        # Labelled rows go to their modality's expert with a constant gate 1 (the label chose, not a router,
        # so no gradient); the rest fall back to the report's route and gate.
        index = torch.where(known, labels, text.expert_index[:, 0]).unsqueeze(1)
        gates = torch.where(known, torch.ones_like(text.gates[:, 0]), text.gates[:, 0]).unsqueeze(1)
        return RouteDecision(replace(text, expert_index=index, gates=gates), image, text, "label")
