"""The shared Mixture-of-Experts core: routers, sparse dispatch, auxiliary losses, routing statistics.

Used by MedMoE (one expert per image over its whole feature pyramid) and available for token routing.
"""

from medmoe.moe.dispatch import dense_dispatch, sparse_dispatch
from medmoe.moe.layer import MoELayer, MoEOutput
from medmoe.moe.losses import (
    load_balance_loss,
    router_aux_losses,
    router_ce_loss,
    router_distillation_loss,
    router_z_loss,
)
from medmoe.moe.router import GATE_MODES, Router, RouterOutput, select_experts, straight_through_gate
from medmoe.moe.stats import (
    RoutingTracker,
    confusion_matrix,
    expert_usage,
    routing_agreement,
    routing_entropy,
    routing_scalars,
)

__all__ = [
    "GATE_MODES", "MoELayer", "MoEOutput", "Router", "RouterOutput", "RoutingTracker", "confusion_matrix",
    "dense_dispatch", "expert_usage", "load_balance_loss", "router_aux_losses", "router_ce_loss",
    "router_distillation_loss", "router_z_loss", "routing_agreement", "routing_entropy", "routing_scalars",
    "select_experts", "sparse_dispatch", "straight_through_gate",
]
