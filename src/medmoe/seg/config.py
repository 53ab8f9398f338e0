"""MoME configuration, readable at a glance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from medmoe.text.config import TextConfig


@dataclass
class VolumeBackboneConfig:
    """MoME's 3-D backbone: a feature pyramid of decoder outputs (``medmoe.backbones``), by default MONAI's
    SwinUNETR. A 3-D kind is built as ``cls(config, in_channels=..., load_pretrained=...)`` (the image's
    channels are the model's ``in_channels``).

    Attributes:
        kind: ``swinunetr`` (default) or ``segresnet`` (MONAI's SegResNet); any 3-D kind of
            ``medmoe.backbones.backbone_kinds(3)``. A field its kind does not read must keep its default.
        feature_size: the width of the finest level: SwinUNETR's ``feature_size`` (48 in the Universal
            Model; a multiple of 12), SegResNet's ``init_filters``.
        depths: SwinUNETR: Swin blocks per stage (4 stages); SegResNet: residual blocks per encoder level
            (its ``blocks_down``, one level per entry).
        num_heads: attention heads per Swin stage (swinunetr).
        window_size: Swin attention window (swinunetr).
        norm: normalisation of the conv blocks: ``instance`` (MONAI default), ``group`` (works on 32^3
            patches whose 1^3 bottleneck instance norm cannot normalise), ``batch``.
        use_checkpoint: gradient checkpointing in the Swin stages (swinunetr; less memory, slower).
        drop_path_rate: stochastic depth of the Swin stages (swinunetr).
        init_weights: a whole SwinUNETR checkpoint (a MONAI ``SwinUNETR`` state dict, or the Universal Model's
            ``{"net": {"module.backbone.*"}}``) loaded into the backbone and decoder when the model is built
            (see :mod:`medmoe.weights.monai_swin`); empty: random init.
        encoder_weights: MONAI's self-supervised Swin ViT checkpoint (``model_swinvit.pt``) loaded into the
            encoder when the model is built (after ``init_weights``); empty: none.
    """

    kind: str = "swinunetr"
    feature_size: int = 48
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    norm: str = "instance"
    use_checkpoint: bool = False
    drop_path_rate: float = 0.0
    init_weights: str = ""
    encoder_weights: str = ""

    def __post_init__(self) -> None:
        from medmoe.backbones import check_backbone_config

        check_backbone_config(self, spatial_dims=3)


@dataclass
class MoMEConfig:
    """Architecture of a MoME text-prompted segmentation model.

    Attributes:
        in_channels: image channels (1 for CT).
        backbone: the 3-D feature pyramid (:class:`VolumeBackboneConfig`).
        expert_channels: c_e, channels of each scale expert; also the dynamic head's input width.
        fusion_scale: 1 = experts, router and heads at full resolution; 2 = at half resolution, logits
            upsampled trilinearly at the end (about 8x less memory for the K-class tensors).
        router_dim: d, width of the voxel feature v(x) and of each projected prompt W_s t_k.
        head_hidden: width of the two hidden layers of the per-class dynamic head (8 in the Universal Model).
        text_proj_dim: width of ReLU(Linear(text)) and of the projected pooled bottleneck fed to the controller.
        normalize_text: L2-normalise prompt embeddings before use (sentence encoders are trained for cosine).
        center_text: subtract the mean embedding of the cached class set (then re-normalise): prompts such as
            "right kidney" / "left kidney" have cosine ~0.97 in MiniLM space; centring spreads the classes
            apart so the heads and router separate them sooner. The centre is a saved buffer, applied to
            unseen prompts too.
        scale_text: feed the heads and the router ``sqrt(T) * t_k`` (unit RMS per element) instead of the
            unit-norm t_k. ``nn.Linear``'s default init expects inputs of unit scale; a unit-norm 384-d vector
            has elements of ~0.05, which left the text path ~20x weaker than the pooled image path in the
            controller, so every class started with the same head and small classes died before their
            prompts could tell them apart.
        classes: the class names whose prompt embeddings are cached (empty: every class of the template;
            filled in with the explicit list when the model is built, so a saved model keeps its set).
        trained_classes: the classes the model was trained to segment (written by ``SegTask`` when it saves
            the model; empty for a model never trained here). ``seg predict --prompt all`` predicts these.
        roi_size: training patch / sliding-window size (a size the backbone accepts: multiples of 32 for
            SwinUNETR).
        spacing: voxel spacing in mm the model was trained at.
        hu_window: HU range mapped to [0, 1].
        text: the text tower (frozen by default: prompt embeddings are cached).
        prompt_embeddings: a file of precomputed prompt embeddings with their class names (see
            :mod:`medmoe.weights.prompt_embeddings`), used for the class set instead of the text tower;
            prompts outside the file are then refused.
    """

    in_channels: int = 1
    backbone: VolumeBackboneConfig = field(default_factory=VolumeBackboneConfig)
    expert_channels: int = 8
    fusion_scale: int = 1
    router_dim: int = 32
    head_hidden: int = 8
    text_proj_dim: int = 256
    normalize_text: bool = True
    center_text: bool = True
    scale_text: bool = True
    classes: tuple[str, ...] = ()
    trained_classes: tuple[str, ...] = ()
    roi_size: tuple[int, int, int] = (96, 96, 96)
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    hu_window: tuple[float, float] = (-175.0, 250.0)
    text: TextConfig = field(default_factory=lambda: TextConfig(model="minilm", max_length=32, freeze="all"))
    prompt_embeddings: str = ""

    #: (minimum, maximum) of integer fields (dotted for nested sections; each element of a tuple field), checked
    #: before the model is built (:func:`medmoe.model_checks.check_sizes`); the backbone section's limits are
    #: its kind's (``size_limits`` of its class)
    size_limits: ClassVar[dict[str, tuple[int, int]]] = {
        "in_channels": (1, 64), "expert_channels": (1, 1024), "fusion_scale": (1, 8), "router_dim": (1, 8192), "head_hidden": (1, 8192),
        "text_proj_dim": (1, 8192), "roi_size": (1, 2048), "text.max_length": (1, 8192), "text.word_layers": (1, 64),
    }
