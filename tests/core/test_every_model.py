"""Every registered model builds from its config, runs on its backbone's smallest valid input and survives
``save_pretrained`` / ``load_model`` with equal outputs. Paper-size models (no "nano" in the name) are
marked slow: built as registered, with random weights (``pretrained=False``), and run on a tiny input."""

import dataclasses

import pytest
import torch

import medmoe
from medmoe.backbones import PyramidBackbone

REPORTS = ["No acute cardiopulmonary process.", "CT: 6 mm nodule in the right upper lobe."]
PROMPTS = ["liver", "spleen"]


def _params(names: list[str]) -> list:
    return [pytest.param(n, marks=() if "nano" in n else pytest.mark.slow) for n in names]


def _outputs(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's main outputs on its smallest input (2 images or 1 volume)."""
    size = model.backbone.smallest_size()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if model.model_type == "medmoe":
            out = model(torch.rand(2, 3, *size, generator=g), REPORTS)
            return {k: out[k] for k in ("image_embeds", "text_embeds", "local_features", "router_logits")}
        out = model.forward_outputs(torch.rand(1, model.config.in_channels, *size, generator=g), PROMPTS)
        return {k: out[k] for k in ("logits", "gate_usage")}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", _params(medmoe.list_models()))
def test_registered_model_builds_runs_and_round_trips(name, tmp_path):
    torch.manual_seed(0)
    model = medmoe.create_model(name, pretrained=False).eval()
    backbone = model.backbone
    assert isinstance(backbone, PyramidBackbone)
    backbone.check_size(*backbone.smallest_size())
    out = _outputs(model)
    for key, value in out.items():
        assert torch.isfinite(value).all(), (name, key)
    if model.model_type == "medmoe":
        size = backbone.smallest_size()
        assert out["local_features"].shape == (2, model.config.local_dim,
                                               *(s // backbone.feature_info.reductions[0] for s in size))
    else:
        assert out["logits"].shape == (1, len(PROMPTS), *backbone.smallest_size())
        assert out["gate_usage"].shape == (len(backbone.feature_info),)
    loaded = medmoe.load_model(model.save_pretrained(tmp_path / name), family=model.model_type).eval()
    assert type(loaded) is type(model)
    # the saved text tower is read back from the model's own folder; every other field is as built
    assert dataclasses.replace(loaded.config, text=model.config.text) == model.config
    again = _outputs(loaded)
    for key, value in out.items():
        assert torch.equal(again[key], value), (name, key)
