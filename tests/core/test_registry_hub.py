import json
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import medmoe
from medmoe import hub, registry
from medmoe.errors import InvalidInputError, NotAModelDirectoryError
from medmoe.text import TextConfig, TextTower


@dataclass
class ToyConfig:
    width: int = 8
    num_experts: int = 2
    text: TextConfig = field(default_factory=lambda: TextConfig(model="tiny-bert"))


class Toy(hub.PretrainedMixin, nn.Module):
    config_class = ToyConfig
    model_type = "toy"

    def __init__(self, config: ToyConfig, *, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.text = TextTower(config.text, load_pretrained=load_pretrained)
        self.experts = nn.ModuleList(nn.Linear(config.width, config.width) for _ in range(config.num_experts))
        self.tied = self.experts[0]  # shared tensors must survive safetensors

    def forward(self, x, texts):
        return sum(e(x) for e in self.experts) + self.text(texts).sentence[:, : self.config.width]


@pytest.fixture
def toy_registry(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "toy-small.json").write_text(json.dumps({"model_type": "toy", "width": 4}))
    (configs / "toy-big.json").write_text(json.dumps({"model_type": "toy", "width": 16, "num_experts": 3}))
    monkeypatch.setattr(registry, "_config_dir", lambda: configs)
    monkeypatch.setitem(registry.FAMILIES, "toy", f"{__name__}:Toy")
    return configs


def test_list_and_create_with_overrides(toy_registry):
    assert medmoe.list_models() == ["toy-big", "toy-small"]
    model = medmoe.create_model("toy-small", num_experts=5, text={"max_length": 16})
    assert model.config.width == 4 and len(model.experts) == 5
    assert model.config.text.max_length == 16 and model.config.text.model == "tiny-bert"


def test_unknown_model_and_unknown_override_name_the_value(toy_registry):
    with pytest.raises(InvalidInputError, match="toy-medium"):
        medmoe.create_model("toy-medium")
    with pytest.raises(InvalidInputError, match="num_expert"):
        medmoe.create_model("toy-small", num_expert=3)


def test_save_load_round_trip_gives_identical_outputs(toy_registry, tmp_path):
    model = medmoe.create_model("toy-big").eval()
    out_dir = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in out_dir.iterdir()) == ["README.md", "config.json", "model.safetensors", "text"]
    loaded = medmoe.load_model(out_dir)
    x = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, ["a", "b c"]), model(x, ["a", "b c"]), rtol=0, atol=0)
    assert loaded.config.text.model == str(out_dir / "text")


def test_save_replaces_an_existing_model_atomically(toy_registry, tmp_path):
    first = medmoe.create_model("toy-small")
    second = medmoe.create_model("toy-big")
    first.save_pretrained(tmp_path / "m")
    second.save_pretrained(tmp_path / "m")
    assert medmoe.load_model(tmp_path / "m").config.width == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs", "m"]  # no leftovers


def test_load_errors_name_the_path(toy_registry, tmp_path):
    with pytest.raises(NotAModelDirectoryError, match="not a directory"):
        medmoe.load_model(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotAModelDirectoryError, match=r"empty.*no config.json"):
        medmoe.load_model(empty)
    saved = medmoe.create_model("toy-small").save_pretrained(tmp_path / "saved")
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(NotAModelDirectoryError, match="model.safetensors"):
        medmoe.load_model(saved)
    (saved / "config.json").write_text("{not json")
    with pytest.raises(NotAModelDirectoryError, match="corrupt config"):
        medmoe.load_model(saved)
    (saved / "config.json").write_text(json.dumps({"model_type": "toy", "depth": 3}))
    with pytest.raises(NotAModelDirectoryError, match="depth"):
        medmoe.load_model(saved)
