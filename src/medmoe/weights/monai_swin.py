"""MONAI SwinUNETR checkpoints into MoME's SwinUNETR (``medmoe.backbones.swinunetr.SwinUNETRFeatures.net``).

Two layouts are read:

* the **self-supervised encoder** of Tang et al. (MONAI's ``model_swinvit.pt``, what ``SwinUNETR.load_from``
  reads): ``{"state_dict": {"module.patch_embed.proj.weight", "module.layers1.0.blocks.0.mlp.fc1.weight",
  "module.layers1.0.downsample.reduction.weight", ...}}`` (the Swin ViT without its ``swinViT.`` name, MLP
  layers as ``fc1`` / ``fc2``). Keys already named ``swinViT.`` / ``swin_vit.`` (MONAI's self-supervised
  tutorial) are accepted too. Only ``swinViT`` is filled; the conv encoder and decoder keep their init.
* the **Disruptive Autoencoder** pre-training weights MONAI documents with ``filter_swinunetr``
  (``{"model": {"encoder.patch_embed...", "encoder.layers1.0.0.blocks.0...", "encoder.mask_token", ...}}``):
  the stage index ``.0.0.`` becomes ``.0.``; ``mask_token`` and the final ``norm`` have no place and are unexpected.
* a **whole SwinUNETR**: a plain MONAI ``SwinUNETR`` state dict, or one wrapped as a segmentation network's
  ``backbone`` (``{"net": {"module.backbone.swinViT...", "module.backbone.encoder1...",
  "module.backbone.decoder5...", ...}}``, the CLIP-Driven Universal Model layout). The Swin ViT, the conv
  encoders and the decoders are filled; the output block (``out.``) and every non-backbone key (that model's
  text embeddings, controller and heads) are reported as unexpected, since MoME's experts and heads replace them.
"""

from __future__ import annotations

import os
import re

from torch import nn

from medmoe.errors import InvalidInputError
from medmoe.weights.files import load_mapped, read_state_dict, strip_prefix
from medmoe.weights.report import LoadReport

PARTS = ("encoder", "full")
_SWIN_NAMES = ("swinViT.", "swin_vit.")
_BLOCKS = ("encoder1.", "encoder2.", "encoder3.", "encoder4.", "encoder10.",
           "decoder1.", "decoder2.", "decoder3.", "decoder4.", "decoder5.")


_DAE_STAGE = re.compile(r"^encoder\.(layers[1-4])\.0\.0\.")


def _mlp_names(key: str) -> str:
    # the self-supervised checkpoint predates MONAI's MLPBlock names (SwinUNETR.load_from maps them the same way)
    return key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")


def swinunetr_key(key: str, part: str = "full") -> str | None:
    """The MONAI ``SwinUNETR`` name of a checkpoint key, or None when it has no place there.

    Args:
        key: a key of any layout of the module docstring.
        part: ``"encoder"`` keeps only the Swin ViT; ``"full"`` also the conv encoders and the decoders.

    Example:
        >>> swinunetr_key("module.layers1.0.blocks.0.mlp.fc1.weight")
        'swinViT.layers1.0.blocks.0.mlp.linear1.weight'
        >>> swinunetr_key("module.backbone.decoder5.transp_conv.conv.weight")
        'decoder5.transp_conv.conv.weight'
    """
    name = _DAE_STAGE.sub(r"\1.0.", strip_prefix(key).removeprefix("backbone."))
    name = name.removeprefix("encoder.") if name.startswith("encoder.patch_embed.") else name
    if name.startswith(_SWIN_NAMES):  # each a single name: the part after its dot is the Swin ViT's key
        return "swinViT." + _mlp_names(name.split(".", 1)[1])
    if name.startswith(("patch_embed.", "layers1.", "layers2.", "layers3.", "layers4.")):
        return "swinViT." + _mlp_names(name)
    if part == "full" and name.startswith(_BLOCKS):
        return name
    return None


def load_swinunetr(net: nn.Module, source: str | os.PathLike, part: str = "encoder") -> LoadReport:
    """Load a SwinUNETR checkpoint into a MONAI ``SwinUNETR`` module and report it.

    Args:
        net: a MONAI ``SwinUNETR`` (MoME's is ``model.backbone.net``).
        source: a ``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors`` file of either layout.
        part: ``"encoder"`` (fill ``swinViT`` only) or ``"full"`` (Swin ViT, conv encoders and decoders).

    Raises:
        InvalidInputError: unknown ``part`` or no such file.
        CorruptFileError: unreadable file, or no tensor of it fits ``net``.
    """
    if part not in PARTS:
        raise InvalidInputError(f"part must be one of {PARTS}, got {part!r}")
    state = read_state_dict(source, "SwinUNETR weights")
    scope = ("swinViT.",) if part == "encoder" else ("swinViT.", *_BLOCKS)
    target = "SwinUNETR encoder (swinViT)" if part == "encoder" else "SwinUNETR (swinViT, encoders, decoders)"
    report = load_mapped(net, source, state, lambda k: swinunetr_key(k, part), target=target, scope=scope)
    if part == "encoder" and any(swinunetr_key(k, "full") != swinunetr_key(k, "encoder") for k in report.unexpected):
        report.notes.append("the file also holds conv encoder / decoder weights: load it with init_weights= to use them")
    if part == "full" and any(strip_prefix(k).removeprefix("backbone.").startswith("out.") for k in report.unexpected):
        report.notes.append("the output block (out.*) is not loaded: MoME's experts and heads replace it")
    return report
