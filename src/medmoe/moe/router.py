"""Routers: a conditioning vector -> expert logits, probabilities, the chosen experts and their gates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from medmoe.devices import autocast_off
from medmoe.errors import InvalidInputError

Gating = Literal["top1", "topk", "soft"]
GateMode = Literal["probability", "straight_through"]
GATE_MODES = ("probability", "straight_through")


@dataclass
class RouterOutput:
    """What a router decided for N inputs routed over K experts.

    Attributes:
        logits: (N, K) float32 router logits.
        probs: (N, K) float32 softmax of the logits.
        expert_index: (N, k) long, the experts each input is sent to (k = 1 for top1, K for soft).
        gates: (N, k) float32 weight of each chosen expert's output. top1 with gate ``probability``: the
            chosen expert's probability (Switch); top1 with gate ``straight_through``: exactly 1 in the
            forward, with the probability's gradient in the backward (:func:`straight_through_gate`); topk:
            probabilities renormalised over the k chosen; soft: all probabilities.
    """

    logits: Tensor
    probs: Tensor
    expert_index: Tensor
    gates: Tensor

    @property
    def top1(self) -> Tensor:
        """(N,) the most probable expert of each input."""
        return self.probs.argmax(dim=-1)


def straight_through_gate(probs: Tensor) -> Tensor:
    """A gate whose value is exactly 1 and whose gradient is that of ``probs``.

    ``1 + (p - sg(p))``: ``p - sg(p)`` is exactly 0 in any floating-point format, so the forward value is
    1.0 by construction (not by rounding), while d gate / d p = 1, so the backward is that of ``p * y``.

    Args:
        probs: (N, k) probabilities of the chosen experts.

    Returns:
        (N, k) ones that carry the gradient of ``probs``.
    """
    return torch.ones_like(probs) + (probs - probs.detach())


def select_experts(logits: Tensor, gating: Gating, top_k: int = 2, gate: GateMode = "probability") -> RouterOutput:
    """Turn (N, K) logits into a :class:`RouterOutput`; the softmax runs in float32.

    Args:
        logits: (N, K) router logits.
        gating: ``top1`` | ``topk`` | ``soft``.
        top_k: experts per input for ``topk``.
        gate: top1 only: ``probability`` scales the chosen expert's output by its probability (Switch);
            ``straight_through`` scales it by exactly 1 and gives the router the gradient of ``probability``,
            so an input's output does not depend on which router chose its expert or how confidently.
    """
    if logits.dim() != 2:
        raise InvalidInputError(f"router logits must be (N, K), got shape {tuple(logits.shape)}")
    if gate not in GATE_MODES:
        raise InvalidInputError(f"gate must be one of {GATE_MODES}, got {gate!r}")
    if gate == "straight_through" and gating != "top1":
        # With k > 1 outputs the weights are a mixture; forcing them to 1 would sum the experts instead.
        raise InvalidInputError(f"gate='straight_through' needs gating='top1', got gating={gating!r}")
    logits = logits.float()
    probs = logits.softmax(dim=-1)
    num_experts = logits.shape[-1]
    if gating == "top1":
        gates, index = probs.max(dim=-1, keepdim=True)
        if gate == "straight_through":
            gates = straight_through_gate(gates)
    elif gating == "topk":
        if not 1 <= top_k <= num_experts:
            raise InvalidInputError(f"top_k must be in [1, {num_experts}], got {top_k}")
        gates, index = probs.topk(top_k, dim=-1)
        gates = gates / gates.sum(dim=-1, keepdim=True)
    elif gating == "soft":
        gates = probs
        index = torch.arange(num_experts, device=logits.device).expand(logits.shape[0], -1)
    else:
        raise InvalidInputError(f"gating must be 'top1', 'topk' or 'soft', got {gating!r}")
    return RouterOutput(logits=logits, probs=probs, expert_index=index, gates=gates)


class Router(nn.Module):
    """Maps a conditioning vector to expert logits and a routing decision.

    Args:
        in_dim: width of the conditioning vector (a text embedding, a pooled image feature, ...).
        num_experts: K.
        hidden_dim: 0 for a linear router, else an MLP in_dim -> hidden_dim -> ReLU -> K
            (the released MedMoE router is 768 -> 128 -> K).
        gating: ``top1`` | ``topk`` | ``soft``.
        top_k: experts per input for ``topk``.
        gate: ``probability`` (Switch) or ``straight_through`` (top1 only); see :func:`select_experts`.
        jitter: multiplicative input noise U(1 - jitter, 1 + jitter), applied only in training (Switch).

    The router runs in its parameters' precision (float32 in mixed-precision training) with autocast off,
    as the Switch Transformer keeps its routers: under bf16 / fp16 autocast its logits are those of float32.

    Shapes:
        x: (N, in_dim) -> RouterOutput with (N, K) logits.

    Example:
        >>> router = Router(384, num_experts=6, hidden_dim=128)
        >>> out = router(torch.randn(8, 384)); out.expert_index.shape
        torch.Size([8, 1])
    """

    def __init__(
        self,
        in_dim: int,
        num_experts: int,
        *,
        hidden_dim: int = 0,
        gating: Gating = "top1",
        top_k: int = 2,
        gate: GateMode = "probability",
        jitter: float = 0.0,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise InvalidInputError(f"num_experts must be >= 1, got {num_experts}")
        if jitter < 0:
            raise InvalidInputError(f"jitter must be >= 0, got {jitter}")
        select_experts(torch.zeros(1, num_experts), gating, top_k, gate)  # validates gating, top_k, gate early
        self.num_experts = num_experts
        self.gating = gating
        self.top_k = top_k
        self.gate = gate
        self.jitter = jitter
        self.net = (nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True),
                                  nn.Linear(hidden_dim, num_experts))
                    if hidden_dim > 0 else nn.Linear(in_dim, num_experts))

    def logits(self, x: Tensor) -> Tensor:
        """(N, K) float32 logits of (N, in_dim) inputs: the net in its parameters' dtype, autocast off."""
        with autocast_off(x):
            return self.net(x.to(next(self.net.parameters()).dtype)).float()

    def forward(self, x: Tensor) -> RouterOutput:
        if x.dim() != 2:
            raise InvalidInputError(f"router input must be (N, in_dim), got shape {tuple(x.shape)}")
        if self.training and self.jitter > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        with autocast_off(x):
            return select_experts(self.logits(x), self.gating, self.top_k, self.gate)
