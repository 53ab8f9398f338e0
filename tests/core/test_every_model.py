"""Every registered model builds from its config, runs on the example inputs its family gives
(``model.example_inputs()``: its backbone's smallest valid input) and survives ``save_pretrained`` /
``load_model`` with equal outputs; every built-in family has a registered model. Nothing here names a family.
Paper-size models (no "nano" in the name) are marked slow: built as registered, with random weights
(``pretrained=False``), and run on a tiny input."""

import dataclasses

import pytest
import torch

import medmoe
from medmoe.registry import BUILTIN_MODULES, get_model_config


def _params(names: list[str]) -> list:
    return [pytest.param(n, marks=() if "nano" in n else pytest.mark.slow) for n in names]


def _tensors(out) -> dict[str, torch.Tensor]:
    """The tensors of a forward's output (a tensor, or a dict holding tensors among other values)."""
    if isinstance(out, torch.Tensor):
        return {"output": out}
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def _outputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return _tensors(model(**model.example_inputs(seed=0)))


def test_every_built_in_family_has_a_registered_model():
    registered = {get_model_config(name)["model_type"] for name in medmoe.list_models()}
    assert set(BUILTIN_MODULES) <= registered


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", _params(medmoe.list_models()))
def test_registered_model_builds_runs_and_round_trips(name, tmp_path):
    torch.manual_seed(0)
    model = medmoe.create_model(name, pretrained=False).eval()
    out = _outputs(model)
    assert out
    for key, value in out.items():
        assert torch.isfinite(value.float()).all(), (name, key)
    loaded = medmoe.load_model(model.save_pretrained(tmp_path / name), family=model.model_type).eval()
    assert type(loaded) is type(model)
    # the saved text tower is read back from the model's own folder; every other field is as built
    assert dataclasses.replace(loaded.config, text=model.config.text) == model.config
    again = _outputs(loaded)
    for key, value in out.items():
        assert torch.equal(again[key], value), (name, key)
