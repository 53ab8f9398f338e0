"""A Mixture-of-Experts layer: a router (optional) + K experts + dispatch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from medmoe.errors import InvalidInputError
from medmoe.moe.dispatch import Inputs, dense_dispatch, sparse_dispatch
from medmoe.moe.router import Router, RouterOutput


@dataclass
class MoEOutput:
    """output: (N, ...) combined expert outputs; route: the routing decision that produced it."""

    output: Tensor
    route: RouterOutput


class MoELayer(nn.Module):
    """Route rows of ``inputs`` to experts and combine the gated outputs.

    The routing decision comes either from ``router(condition)`` or ready-made (``route=``), which lets a
    model route by one signal (the report) while training another router (the image) to imitate it.

    Args:
        experts: K modules with identical output shapes.
        router: maps (N, in_dim) conditions to a RouterOutput; may be None when routes are always given.
        dispatch: ``sparse`` (run only the experts chosen in the batch) or ``dense`` (reference).

    Example:
        >>> layer = MoELayer([nn.Linear(16, 16) for _ in range(4)], Router(8, 4))
        >>> out = layer(torch.randn(10, 16), condition=torch.randn(10, 8)); out.output.shape
        torch.Size([10, 16])
    """

    def __init__(self, experts: Sequence[nn.Module], router: Router | None = None,
                 dispatch: Literal["sparse", "dense"] = "sparse") -> None:
        super().__init__()
        if not experts:
            raise InvalidInputError("MoELayer needs at least one expert")
        if router is not None and router.num_experts != len(experts):
            raise InvalidInputError(f"router has {router.num_experts} outputs but there are {len(experts)} experts")
        if dispatch not in ("sparse", "dense"):
            raise InvalidInputError(f"dispatch must be 'sparse' or 'dense', got {dispatch!r}")
        self.experts = nn.ModuleList(experts)
        self.router = router
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

    def forward(self, inputs: Inputs, *, condition: Tensor | None = None, route: RouterOutput | None = None) -> MoEOutput:
        if route is None:
            if self.router is None or condition is None:
                raise InvalidInputError("MoELayer needs `condition` (for its router) or a ready-made `route`")
            route = self.router(condition)
        combine = sparse_dispatch if self.dispatch == "sparse" else dense_dispatch
        index = torch.zeros_like(route.expert_index) if self.tied else route.expert_index
        return MoEOutput(combine(self.experts, inputs, index, route.gates), route)
