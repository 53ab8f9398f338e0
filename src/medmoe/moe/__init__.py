"""The shared Mixture-of-Experts core: routers, sparse dispatch, auxiliary losses, routing statistics.

Both tasks use it. MedMoE (``medmoe.align``) routes one expert per image over its whole feature pyramid
with top-1 routers, Switch balance, router cross-entropy and distillation; MoME (``medmoe.seg``) mixes its
decoder scales per voxel with a soft gate and takes the soft-gate balance loss and usage from here.
"""

from medmoe.moe.dispatch import dense_dispatch, sparse_dispatch
from medmoe.moe.layer import MoELayer, MoEOutput
from medmoe.moe.losses import (
    load_balance_loss,
    router_ce_loss,
    router_distillation_loss,
    soft_load_balance_loss,
)
from medmoe.moe.router import Router, RouterOutput, select_experts, straight_through_gate
from medmoe.moe.stats import (
    SoftUsage,
    confusion_matrix,
    expert_counts,
    expert_usage,
    route_agreement,
    routing_agreement,
    routing_entropy,
)

__all__ = [
    "MoELayer", "MoEOutput", "Router", "RouterOutput", "SoftUsage", "confusion_matrix", "dense_dispatch", "expert_counts",
    "expert_usage", "load_balance_loss", "route_agreement", "router_ce_loss", "router_distillation_loss", "routing_agreement",
    "routing_entropy", "select_experts", "soft_load_balance_loss", "sparse_dispatch",
    "straight_through_gate",
]
