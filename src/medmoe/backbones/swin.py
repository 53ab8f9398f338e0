"""The 2-D Swin backbone (``backbone.kind = "swin"``): HF transformers ``SwinBackbone`` as a channels-first
feature pyramid.

``SwinPyramid(config)(images)`` returns the four stage outputs at H/4, H/8, H/16, H/32 (channels first, finest
first) and a pooled feature (mean of the last stage) as a :class:`~medmoe.backbones.Pyramid`, with its
:class:`~medmoe.backbones.FeatureInfo` so that nothing downstream hard-codes channels.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor, nn
from transformers import SwinBackbone, SwinConfig
from transformers.models.swin.modeling_swin import SwinStage

from medmoe.backbones.pyramid import FeatureInfo, Pyramid, PyramidBackbone
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.weights.files import read_state_dict
from medmoe.weights.report import LoadReport

log = logging.getLogger(__name__)

STAGES = ("stage1", "stage2", "stage3", "stage4")


def swin_config(config) -> SwinConfig:
    """The HF ``SwinConfig`` of a MedMoE ``BackboneConfig`` (all four stages as outputs)."""
    if len(config.depths) != 4 or len(config.num_heads) != 4:
        raise InvalidInputError(
            f"backbone depths and num_heads need 4 entries (one per stage), got {config.depths} and {config.num_heads}"
        )
    return SwinConfig(
        image_size=config.image_size, patch_size=config.patch_size, num_channels=3, embed_dim=config.embed_dim,
        depths=list(config.depths), num_heads=list(config.num_heads), window_size=config.window_size,
        drop_path_rate=config.drop_path_rate, out_features=list(STAGES),
    )


class SwinPyramid(PyramidBackbone):
    """Swin Transformer feature pyramid.

    Args:
        config: MedMoE's :class:`~medmoe.align.config.BackboneConfig`.
        load_pretrained: load ``config.weights`` (if set) after building; False keeps random weights
            (as when a saved medmoe model is about to load its own).

    Shapes:
        images: (B, 3, H, W) normalised as ``medmoe.data.ImageTransform`` does (ImageNet mean / std); a
        (B, 1, H, W) grey image is repeated to 3 channels. H and W must keep every stage's grid a
        multiple of the window size, see :meth:`check_size`. Returns a :class:`~medmoe.backbones.Pyramid`
        whose bottleneck is the last level.

    Example:
        >>> net = SwinPyramid(BackboneConfig(image_size=64, embed_dim=24, depths=(1, 1, 2, 1),
        ...                                  num_heads=(1, 2, 3, 6), window_size=2))
        >>> [f.shape[1:] for f in net(torch.rand(2, 3, 64, 64)).features]
        [torch.Size([24, 16, 16]), torch.Size([48, 8, 8]), torch.Size([96, 4, 4]), torch.Size([192, 2, 2])]
    """

    spatial_dims = 2
    config_fields = ("image_size", "patch_size", "embed_dim", "depths", "num_heads", "window_size",
                     "drop_path_rate", "weights", "gradient_checkpointing")
    size_limits = {"image_size": (1, 8192), "patch_size": (1, 64), "embed_dim": (1, 8192), "depths": (0, 48),
                   "num_heads": (1, 256), "window_size": (1, 64)}
    #: a local HF Swin directory or a MedCLIP-style checkpoint file (:func:`load_backbone_weights`)
    weight_fields = ("weights",)
    # the bottleneck is the last level, which the experts read: every parameter takes part in every step
    may_leave_parameters_unused = False

    def __init__(self, config, *, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.swin = SwinBackbone(swin_config(config))
        # SwinModel's final norm feeds only its pooled output, which a backbone never returns: left trainable,
        # it would be a parameter without a gradient in every step (DDP without find_unused_parameters fails).
        self.swin.swin.layernorm.requires_grad_(False)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.swin)
        channels = tuple(int(c) for c in self.swin.channels)
        self.feature_info = FeatureInfo(channels, tuple(config.patch_size * 2**s for s in range(4)), channels[-1])
        self.check_size(config.image_size, config.image_size)
        #: what config.weights filled (None: no weights file was loaded)
        self.load_report: LoadReport | None = (load_backbone_weights(self, config.weights)
                                               if load_pretrained and config.weights else None)

    @property
    def compile_target(self) -> nn.Module:
        """The HF Swin: the wrapper's input checks and normalisation stay eager."""
        return self.swin

    def smallest_size(self) -> tuple[int, int]:
        """The smallest (height, width) whose every stage grid the window divides."""
        step = self.config.patch_size * 2 ** (len(self.feature_info) - 1) * self.config.window_size
        return step, step

    def check_size(self, *size: int) -> None:
        """Raise unless every stage's token grid of a (height, width) image is a multiple of the window.

        HF Swin would otherwise pad windows with zeros, which silently changes what the model computes.
        """
        self._check_dims(size)
        height, width = size
        step = self.smallest_size()[0]
        for stage, reduction in enumerate(self.feature_info.reductions):
            for side in (height, width):
                if side % reduction or (side // reduction) % self.config.window_size:
                    raise InvalidInputError(
                        f"image size {height}x{width} does not fit this Swin (patch {self.config.patch_size}, "
                        f"window {self.config.window_size}): stage {stage + 1} needs sides divisible by "
                        f"{reduction * self.config.window_size}; use a multiple of {step} (e.g. {step}, {2 * step})"
                    )

    def forward(self, images: Tensor) -> Pyramid:
        """Args:
            images: (B, 3, H, W) or (B, 1, H, W), either uint8 in 0..255 (dataset batches; normalised here,
                on their device, with ImageNet mean / std) or float already normalised that way.

        Returns:
            The :class:`Pyramid` of the batch.
        """
        features = list(self.swin(self._rgb_batch(images)).feature_maps)
        return Pyramid(features, features[-1])


def enable_gradient_checkpointing(swin: SwinBackbone) -> None:
    """Recompute every Swin block in the backward pass instead of keeping its activations (training only).

    Only the blocks are checkpointed: HF also checkpoints each stage around its blocks, and that nesting
    runs every block's forward three times instead of two for little more memory saved (a stage input
    instead of its blocks' inputs).
    """
    kwargs = {"use_reentrant": False}
    if hasattr(swin, "activation_checkpointing_enable"):  # transformers >= 5.x deprecates the older name
        swin.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        swin.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for module in swin.modules():
        if isinstance(module, SwinStage):
            module.gradient_checkpointing = False


# transformers 4.x -> 5.x Swin parameter names (order matters: "attention.output.dense" before "output.dense").
_RENAMES_4X = (
    ("attention.self.query", "attention.q_proj"),
    ("attention.self.key", "attention.k_proj"),
    ("attention.self.value", "attention.v_proj"),
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.output.dense", "attention.o_proj"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
)


def remap_medclip_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Vision weights of a MedCLIP-style checkpoint renamed for :class:`SwinPyramid`.

    MedCLIP (and the released MedMoE code that starts from it) stores its Swin-T as an HF ``SwinModel``
    under ``vision_model.model.``; a bare ``SwinModel`` / ``SwinBackbone`` state dict (``embeddings.``,
    ``encoder.``, ``swin.``) is accepted too. Text weights, projection heads and ``logit_scale`` are dropped.
    The final ``layernorm`` of a ``SwinModel`` normalised the last stage, so it initialises the backbone's
    stage-4 output norm; the other stage norms have no counterpart and keep their initialisation.

    Checkpoints written by transformers 4.x name the attention and MLP weights differently
    (``attention.self.query``, ``intermediate.dense``, ...); they are renamed to the 5.x names.

    Args:
        state: the checkpoint's state dict.

    Returns:
        A state dict with ``swin.swin.*`` / ``swin.hidden_states_norms.*`` keys, ready for
        ``SwinPyramid.load_state_dict(..., strict=False)``.
    """
    return {name: value for key, value in state.items() if (name := medclip_key(key)) is not None}


def medclip_key(key: str) -> str | None:
    """The :class:`SwinPyramid` name of one MedCLIP-style checkpoint key (None: not a Swin weight); see
    :func:`remap_medclip_state_dict`."""
    for prefix in ("module.", "vision_model.model.", "vision_model.", "img_encoder.model.",
                   "image_encoder.model.", "model.", "swin."):
        key = key.removeprefix(prefix)
    for old, new in _RENAMES_4X:
        key = key.replace(old, new)
    if key.startswith("hidden_states_norms."):
        return f"swin.{key}"
    if key.startswith(("embeddings.", "encoder.")) and "relative_position_index" not in key:
        return f"swin.swin.{key}"
    if key in ("layernorm.weight", "layernorm.bias"):
        return f"swin.hidden_states_norms.stage4.{key.split('.')[-1]}"
    return None


def load_backbone_weights(net: SwinPyramid, source: str) -> LoadReport:
    """Load Swin weights from a local HF directory or a (MedCLIP-style) checkpoint file.

    Returns:
        The :class:`~medmoe.weights.report.LoadReport` (also logged): unexpected keys in the file's names
        (text tower, projection heads, ``logit_scale``, ``relative_position_index`` buffers, which are
        recomputed), missing keys in the backbone's (e.g. the stage 1-3 output norms a ``SwinModel`` lacks).

    Raises:
        InvalidInputError: ``source`` does not exist.
        CorruptFileError: unreadable file, or no key of it matches the Swin (a different architecture).
    """
    path = Path(source)
    if path.is_dir():
        found = [f for f in (path / "model.safetensors", path / "pytorch_model.bin") if f.is_file()]
        if not found:
            raise InvalidInputError(f"{path}: no model.safetensors or pytorch_model.bin in this directory")
        path = found[0]
    elif not path.is_file():
        raise InvalidInputError(f"backbone weights {source!r}: no such file or directory (hub names are not fetched)")
    raw = read_state_dict(path, "backbone weights")
    state = remap_medclip_state_dict(raw)
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise CorruptFileError(f"{path}: no tensor matches this Swin backbone (wrong architecture or not a Swin)")
    mismatched = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if mismatched:
        raise CorruptFileError(f"{path}: shapes differ from the configured Swin for {mismatched[:5]}")
    net.load_state_dict(usable, strict=False)
    return LoadReport(str(path), "Swin backbone (SwinPyramid)", matched=sorted(usable),
                      missing=sorted(set(own) - set(usable)),
                      unexpected=sorted(k for k in raw if medclip_key(k) not in own)).log(log)
