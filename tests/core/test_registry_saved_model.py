import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import medmoe
from medmoe import registry, saved_model
from medmoe.errors import InvalidInputError, NotAModelDirectoryError
from medmoe.text import TextConfig, TextTower


@dataclass
class ToyConfig:
    width: int = 8
    num_experts: int = 2
    dropout: float = 0.0
    text: TextConfig = field(default_factory=lambda: TextConfig(model="tiny-bert"))


class Toy(saved_model.PretrainedMixin, nn.Module):
    config_class = ToyConfig
    model_type = "toy"  # defining the class registers the family (PretrainedMixin.__init_subclass__)
    trained_settings = ("dropout",)

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
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_EXTRA_MODELS", {})
    assert registry.get_family("toy").cls is Toy
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


def test_create_model_loads_a_saved_folder_with_identical_outputs(toy_registry, tmp_path):
    model = medmoe.create_model("toy-big").eval()
    folder = model.save_pretrained(tmp_path / "saved")
    for loaded in (medmoe.create_model(folder), medmoe.create_model(str(folder), family="toy", device="cpu")):
        assert not loaded.training
        x = torch.randn(2, 16)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, ["a", "b c"]), model(x, ["a", "b c"]), rtol=0, atol=0)


def test_a_folder_takes_trained_settings_and_refuses_architecture_overrides(toy_registry, tmp_path):
    folder = medmoe.create_model("toy-big").save_pretrained(tmp_path / "saved")
    assert medmoe.create_model(folder, dropout=0.5).config.dropout == 0.5
    assert medmoe.create_model(folder, width=16).config.width == 16  # the saved value: nothing changes
    with pytest.raises(InvalidInputError, match=r"cannot change width of a trained model \(16 -> 8\); on a saved "
                                                r"model only dropout can change") as caught:
        medmoe.create_model(folder, width=8)
    assert str(folder) in str(caught.value)
    with pytest.raises(InvalidInputError, match="text.max_length"):
        medmoe.create_model(folder, text={"max_length": 8})
    with pytest.raises(InvalidInputError, match="depth"):
        medmoe.create_model(folder, depth=3)


def test_family_mismatch_is_one_line_for_names_and_folders(toy_registry, tmp_path):
    with pytest.raises(InvalidInputError, match=r"toy-small: a Toy \(toy\) model; this needs a MedMoE image-report "
                                                r"alignment \(medmoe\) model"):
        medmoe.create_model("toy-small", family="medmoe")
    folder = medmoe.create_model("toy-small").save_pretrained(tmp_path / "saved")
    with pytest.raises(NotAModelDirectoryError, match=r"holds a Toy \(toy\) model; this needs a MoME segmentation"):
        medmoe.create_model(folder, family="mome")


def test_create_model_errors_name_the_path_or_name(toy_registry, tmp_path):
    a_file = tmp_path / "weights.bin"
    a_file.write_text("x")
    with pytest.raises(InvalidInputError, match=r"weights.bin: is a file; expected a saved model directory"):
        medmoe.create_model(a_file)
    with pytest.raises(InvalidInputError, match=r"runs/nope/model: no such model directory"):
        medmoe.create_model("runs/nope/model")
    with pytest.raises(InvalidInputError, match=r"toy-huge: neither a saved model directory nor a registered model name"):
        medmoe.create_model("toy-huge")


@dataclass
class PlainConfig:
    size: int = 3


class Plain(nn.Module):
    """A third-party family that does not use PretrainedMixin."""

    config_class = PlainConfig

    def __init__(self, config: PlainConfig, *, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.layer = nn.Linear(config.size, config.size)


def test_a_third_party_family_and_model_name_register(toy_registry):
    assert registry.register_family("plain", Plain, description="Plain nets") is Plain
    registry.register_model("plain-4", {"model_type": "plain", "size": 4})
    assert "plain-4" in medmoe.list_models() and "plain" in registry.family_names()
    model = medmoe.create_model("plain-4", size=5, family="plain")
    assert isinstance(model, Plain) and model.layer.in_features == 5 and model.model_name == "plain-4"
    assert registry.describe_family("plain") == "Plain nets (plain)"
    with pytest.raises(InvalidInputError, match="built-in family"):
        registry.register_family("medmoe", Plain)
    with pytest.raises(InvalidInputError, match="config_class"):
        registry.register_family("other", nn.Linear)
    with pytest.raises(InvalidInputError, match="bundled model"):
        registry.register_model("toy-small", {"model_type": "plain"})
    with pytest.raises(InvalidInputError, match="model_type"):
        registry.register_model("plain-x", {"size": 4})


def test_import_medmoe_leaves_the_families_unimported_until_asked():
    code = ("import sys, medmoe; from medmoe import registry\n"
            "heavy = ('medmoe.align.model', 'medmoe.seg.model', 'transformers', 'monai')\n"
            "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]\n"
            "assert registry.family_names() == ['medmoe', 'mome'] and 'medmoe.seg.model' not in sys.modules\n"
            "assert registry.model_class('mome').__name__ == 'MoME' and 'medmoe.seg.model' in sys.modules\n"
            "assert registry.describe_family('mome') == 'MoME segmentation (mome)'\n"
            "assert registry.describe_family('medmoe') == 'MedMoE image-report alignment (medmoe)'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
