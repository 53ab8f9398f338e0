"""``backbone.gradient_checkpointing``: the Swin blocks are recomputed in backward, gradients unchanged."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import medmoe
from medmoe.align.config import BackboneConfig
from medmoe.backbones.swin import SwinPyramid
from medmoe.errors import InvalidInputError
from medmoe.settings import parse_overrides

# Stochastic depth on: the recomputation must replay the same random drops.
TINY = BackboneConfig(image_size=64, embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=2,
                      drop_path_rate=0.3)


def step(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of one training step and how many times the Swin blocks' attention ran."""
    torch.manual_seed(0)
    net = SwinPyramid(dataclasses.replace(TINY, gradient_checkpointing=checkpointing)).train()
    calls = [0]
    for module in net.modules():
        if type(module).__name__ == "SwinAttention":
            module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 64)
    out = net(images)
    loss = sum(f.square().mean() for f in out.features) + out.pooled.sum()
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    return grads, calls[0]


def test_checkpointing_recomputes_each_block_once_and_keeps_the_gradients():
    plain, plain_calls = step(False)
    ckpt, ckpt_calls = step(True)
    assert plain_calls == sum(TINY.depths)
    assert ckpt_calls == 2 * plain_calls  # forward + one recompute (stages are not checkpointed around blocks)
    assert plain.keys() == ckpt.keys()
    assert all(g is not None for g in plain.values())  # the unused SwinModel norm is frozen, not idle
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_no_recompute_without_gradients():
    net = SwinPyramid(dataclasses.replace(TINY, gradient_checkpointing=True)).train()
    calls = [0]
    for module in net.modules():
        if type(module).__name__ == "SwinAttention":
            module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    with torch.no_grad():
        net(torch.randn(1, 3, 64, 64))
    assert calls[0] == sum(TINY.depths)


def test_set_flag_reaches_the_backbone_and_survives_save_and_load(tmp_path):
    overrides = parse_overrides(["backbone.gradient_checkpointing=true", "text.model=tiny-bert"],
                                example="backbone.gradient_checkpointing=true")
    model = medmoe.create_model("medmoe-nano", **overrides)
    assert model.config.backbone.gradient_checkpointing is True
    layers = [m for m in model.backbone.swin.modules() if type(m).__name__ == "SwinLayer"]
    assert layers and all(m.gradient_checkpointing for m in layers)

    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["backbone"]["gradient_checkpointing"] is True
    loaded = medmoe.load_model(tmp_path / "saved")
    assert loaded.config.backbone == model.config.backbone
    assert all(m.gradient_checkpointing for m in loaded.backbone.swin.modules() if type(m).__name__ == "SwinLayer")


def test_default_is_off_and_a_non_boolean_is_rejected():
    net = SwinPyramid(TINY)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in net.modules())
    with pytest.raises(InvalidInputError, match="gradient_checkpointing.*'yes'"):
        BackboneConfig(gradient_checkpointing="yes")
