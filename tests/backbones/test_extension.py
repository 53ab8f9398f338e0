"""Extension points as docs/extending.md describes them for code outside the package: a 2-D backbone for
MedMoE and a 3-D backbone for MoME added with ``register_backbone`` and a registered model config, and a
model family that registers itself when its class is defined. Each is built, trained for a few steps, saved
and loaded back; nothing in medmoe is edited. The registries are copied per test so that the toys do not
outlive it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import medmoe
from medmoe import registry
from medmoe.backbones import FeatureInfo, Pyramid, PyramidBackbone, backbone_kinds, register_backbone
from medmoe.backbones import registry as backbone_registry
from medmoe.errors import InvalidInputError
from medmoe.saved_model import PretrainedMixin

TINY_TEXT = {"model": "tiny-bert", "max_length": 16, "freeze": "all"}


@pytest.fixture
def registries(monkeypatch):
    for family in registry.BUILTIN_MODULES:  # registered before the copy, as their modules import only once
        registry.get_family(family)
    monkeypatch.setattr(backbone_registry, "_REGISTERED", dict(backbone_registry._REGISTERED))
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_EXTRA_MODELS", {})


class ToyPyramid2d(PyramidBackbone):
    """Two strided convs: levels at /4 and /8, the second also the bottleneck."""

    spatial_dims = 2
    config_fields = ("image_size",)
    size_limits = {"image_size": (8, 512)}

    def __init__(self, config, *, load_pretrained: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.down = nn.Conv2d(8, 16, 2, stride=2)
        self.feature_info = FeatureInfo(channels=(8, 16), reductions=(4, 8), pooled_channels=16)

    def smallest_size(self) -> tuple[int, int]:
        return 8, 8

    def check_size(self, *size: int) -> None:
        self._check_dims(size)
        if any(side <= 0 or side % 8 for side in size):
            raise InvalidInputError(f"image size {size} does not fit ToyPyramid2d: sides must be multiples of 8")

    def forward(self, images: Tensor) -> Pyramid:
        fine = F.relu(self.stem(self._rgb_batch(images).float()))
        coarse = F.relu(self.down(fine))
        return Pyramid([fine, coarse], coarse)


class ToyPyramid3d(PyramidBackbone):
    """A conv at full resolution and one at half: levels at /1 and /2, bottleneck at /4."""

    spatial_dims = 3
    config_fields = ("feature_size",)
    size_limits = {"feature_size": (1, 64)}

    def __init__(self, config, *, in_channels: int = 1, load_pretrained: bool = True) -> None:
        super().__init__()
        f = config.feature_size
        self.full = nn.Conv3d(in_channels, f, 3, padding=1)
        self.down = nn.Conv3d(f, 2 * f, 2, stride=2)
        self.bottom = nn.Conv3d(2 * f, 4 * f, 2, stride=2)
        self.feature_info = FeatureInfo(channels=(f, 2 * f), reductions=(1, 2), pooled_channels=4 * f)

    def smallest_size(self) -> tuple[int, int, int]:
        return 4, 4, 4

    def check_size(self, *size: int) -> None:
        self._check_dims(size)
        if any(side <= 0 or side % 4 for side in size):
            raise InvalidInputError(f"volume size {size} does not fit ToyPyramid3d: sides must be multiples of 4")

    def forward(self, volume: Tensor) -> Pyramid:
        full = F.relu(self.full(volume))
        half = F.relu(self.down(full))
        return Pyramid([full, half], F.relu(self.bottom(half)))


def _train(model: nn.Module, batches: list[dict], loss_of) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for inputs in batches:
        loss = loss_of(model(**inputs))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _round_trip(model: nn.Module, tmp_path, inputs: dict) -> None:
    model.eval()
    loaded = medmoe.load_model(model.save_pretrained(tmp_path / "saved"), family=model.model_type)
    with torch.no_grad():
        before, after = model(**inputs), loaded(**inputs)
    if isinstance(before, dict):
        before, after = before[next(iter(before))], after[next(iter(after))]
    assert torch.equal(before, after)


def test_register_backbone_refuses_built_in_names_and_non_backbones(registries):
    with pytest.raises(InvalidInputError, match=r"backbone kind 'swin': expected a new non-empty name"):
        register_backbone("swin", ToyPyramid2d)
    with pytest.raises(InvalidInputError, match=r"backbone kind '': expected a new non-empty name"):
        register_backbone("", ToyPyramid2d)
    with pytest.raises(InvalidInputError, match="is not a medmoe.backbones.PyramidBackbone class"):
        register_backbone("conv", nn.Conv2d)
    assert register_backbone("toy2d", ToyPyramid2d) is ToyPyramid2d
    assert "toy2d" in backbone_kinds(2) and "toy2d" not in backbone_kinds(3)


@pytest.mark.timeout(240)
def test_a_registered_2d_backbone_trains_medmoe(registries, tmp_path):
    register_backbone("toy2d", ToyPyramid2d)
    registry.register_model("medmoe-toy", {
        "model_type": "medmoe", "backbone": {"kind": "toy2d", "image_size": 32}, "text": TINY_TEXT,
        "num_experts": 2, "local_dim": 16, "embed_dim": 16, "router_hidden": 8})
    torch.manual_seed(0)
    model = medmoe.create_model("medmoe-toy", pretrained=False).train()
    assert isinstance(model.backbone, ToyPyramid2d) and model.feature_info.reductions == (4, 8)
    reports = ["No effusion.", "CT: small nodule.", "MRI: normal brain.", "Ultrasound: gallstones."]
    batches = [{"images": torch.rand(4, 3, 32, 32), "reports": reports, "return_loss": True} for _ in range(3)]
    stem = model.backbone.stem.weight.detach().clone()
    losses = _train(model, batches, lambda out: out["loss"])
    assert all(torch.isfinite(torch.tensor(losses))) and not torch.equal(stem, model.backbone.stem.weight)
    with pytest.raises(InvalidInputError, match="sides must be multiples of 8"):
        model.encode_image(torch.rand(1, 3, 36, 32))
    with pytest.raises(InvalidInputError, match=r"backbone.patch_size applies to kind 'swin' only"):
        medmoe.create_model("medmoe-toy", pretrained=False, backbone={"patch_size": 2})
    _round_trip(model, tmp_path, {"images": torch.rand(2, 3, 32, 32)})


@pytest.mark.timeout(240)
def test_a_registered_3d_backbone_trains_mome(registries, tmp_path):
    register_backbone("toy3d", ToyPyramid3d)
    registry.register_model("mome-toy", {
        "model_type": "mome", "backbone": {"kind": "toy3d", "feature_size": 8}, "text": TINY_TEXT,
        "roi_size": [16, 16, 16], "fusion_scale": 2, "router_dim": 8, "text_proj_dim": 16})
    torch.manual_seed(0)
    model = medmoe.create_model("mome-toy", pretrained=False).train()
    assert isinstance(model.backbone, ToyPyramid3d) and model.num_scales == 2
    target = (torch.rand(2, 2, 16, 16, 16) > 0.5).float()
    batches = [{"volume": torch.rand(2, 1, 16, 16, 16), "prompts": ["liver", "spleen"]} for _ in range(3)]
    full = model.backbone.full.weight.detach().clone()
    losses = _train(model, batches, lambda logits: F.binary_cross_entropy_with_logits(logits, target))
    assert all(torch.isfinite(torch.tensor(losses))) and not torch.equal(full, model.backbone.full.weight)
    with pytest.raises(InvalidInputError, match=r"roi_size \(18, 16, 16\): volume size"):
        medmoe.create_model("mome-toy", pretrained=False, roi_size=(18, 16, 16))
    with pytest.raises(medmoe.errors.InvalidInputError, match=r"mome-toy.backbone.feature_size: 65 is outside"):
        medmoe.create_model("mome-toy", pretrained=False, backbone={"feature_size": 65})
    _round_trip(model, tmp_path, {"volume": torch.rand(1, 1, 16, 16, 16), "prompts": ["liver"]})


@dataclasses.dataclass
class PatchNetConfig:
    width: int = 8
    size_limits = {"width": (1, 256)}


@pytest.mark.timeout(120)
def test_a_model_family_registers_itself_and_trains(registries, tmp_path):
    class PatchNet(PretrainedMixin, nn.Module):  # defining the class registers the family "patchnet"
        config_class = PatchNetConfig
        model_type = "patchnet"
        description = "Patch classifiers"

        def __init__(self, config: PatchNetConfig, *, load_pretrained: bool = True) -> None:
            super().__init__()
            self.config = config
            self.conv = nn.Conv2d(3, config.width, 4, stride=4)
            self.head = nn.Linear(config.width, 2)

        def example_inputs(self, *, seed: int = 0) -> dict:
            return {"images": torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))}

        def forward(self, images: Tensor) -> Tensor:
            return self.head(F.relu(self.conv(images)).mean(dim=(2, 3)))

    registry.register_model("patchnet-small", {"model_type": "patchnet", "width": 4})
    assert "patchnet" in registry.family_names() and registry.describe_family("patchnet") == (
        "Patch classifiers (patchnet)")
    torch.manual_seed(0)
    model = medmoe.create_model("patchnet-small", family="patchnet")
    labels = torch.tensor([0, 1])
    losses = _train(model, [model.example_inputs(seed=s) for s in range(3)],
                    lambda logits: F.cross_entropy(logits, labels))
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    with pytest.raises(InvalidInputError, match=r"patchnet-small.width: 300 is outside the allowed range \[1, 256\]"):
        medmoe.create_model("patchnet-small", width=300)
    with pytest.raises(InvalidInputError, match=r"a Patch classifiers \(patchnet\) model; this needs a MoME"):
        medmoe.create_model("patchnet-small", family="mome")
    _round_trip(model, tmp_path, model.example_inputs(seed=7))
