"""A Mixture-of-Experts layer: K experts + sparse or dense dispatch of a given routing decision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from medmoe.errors import InvalidInputError
from medmoe.moe.dispatch import Inputs, dense_dispatch, sparse_dispatch
from medmoe.moe.router import RouterOutput


@dataclass
class MoEOutput:
    """output: (N, ...) combined expert outputs; route: the routing decision that produced it."""

    output: Tensor
    route: RouterOutput


class MoELayer(nn.Module):
    """Run rows of ``inputs`` through the experts a routing decision chose and combine the gated outputs.

    The layer holds no router: the caller routes (a :class:`~medmoe.moe.Router`, or several, as MedMoE
    routes by the report in training while its image router learns to imitate that route) and passes the
    decision, so one set of experts can serve any routing signal.

    Args:
        experts: K modules with identical output shapes.
        dispatch: ``sparse`` (run only the experts chosen in the batch) or ``dense`` (reference).

    Example:
        >>> layer = MoELayer([nn.Linear(16, 16) for _ in range(4)])
        >>> route = Router(8, 4)(torch.randn(10, 8))
        >>> layer(torch.randn(10, 16), route=route).output.shape
        torch.Size([10, 16])
    """

    def __init__(self, experts: Sequence[nn.Module], dispatch: Literal["sparse", "dense"] = "sparse") -> None:
        super().__init__()
        if not experts:
            raise InvalidInputError("MoELayer needs at least one expert")
        if dispatch not in ("sparse", "dense"):
            raise InvalidInputError(f"dispatch must be 'sparse' or 'dense', got {dispatch!r}")
        self.experts = nn.ModuleList(experts)
        self.dispatch = dispatch
        self.tied = False

    def tie_experts(self) -> None:
        """Run expert 0 wherever any expert is routed (the route and gates still come from the router).

        The first phase of sparse upcycling: one expert learns from every sample while the routers learn
        their routes. Not saved with the model; :meth:`upcycle` ends it.
        """
        self.tied = True

    @torch.no_grad()
    def upcycle(self) -> None:
        """Copy expert 0's weights (parameters and buffers) into every other expert and untie them.

        Sparse upcycling (Komatsuzaki et al., ICLR 2023): each expert starts its specialisation from the
        expert trained on all the data instead of from a fresh initialisation on 1/K of it.
        """
        state = self.experts[0].state_dict()
        for expert in self.experts[1:]:
            expert.load_state_dict(state)
        self.tied = False

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def forward(self, inputs: Inputs, *, route: RouterOutput) -> MoEOutput:
        """Combine the chosen experts' outputs.

        Args:
            inputs: (N, ...) tensor, or a list of tensors sharing the first dimension N (a feature pyramid).
            route: the routing decision for the N rows, over the layer's K experts.

        Returns:
            ``output`` (N, ...) the combined expert outputs, and ``route`` as given.
        """
        if route.probs.shape[-1] != self.num_experts:
            raise InvalidInputError(f"the route is over {route.probs.shape[-1]} experts but the layer has {self.num_experts}")
        combine = sparse_dispatch if self.dispatch == "sparse" else dense_dispatch
        index = torch.zeros_like(route.expert_index) if self.tied else route.expert_index
        return MoEOutput(combine(self.experts, inputs, index, route.gates), route)
