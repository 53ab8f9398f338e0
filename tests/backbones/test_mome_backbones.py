"""MoME's 3-D backbone kinds: SegResNet's pyramid is MONAI's SegResNet (its final block on level 0 gives
MONAI's forward), the kind's declared limits and weight sources hold, and MoME trains on it (3 steps of
`medmoe seg train` on phantoms, the model exported and reloaded)."""

import json

import pytest
import torch
from monai.networks.nets import SegResNet

import medmoe
from medmoe.backbones import backbone_class, backbone_kinds, build_backbone
from medmoe.backbones.swinunetr import norm_name
from medmoe.cli.main import main
from medmoe.errors import InvalidInputError
from medmoe.seg.config import VolumeBackboneConfig

SEGRESNET = VolumeBackboneConfig(kind="segresnet", feature_size=8, depths=(1, 2, 2, 4), norm="group")


def test_the_3d_kinds_are_listed_apart_from_the_2d_ones():
    assert backbone_kinds(3) == ["segresnet", "swinunetr"] and backbone_kinds(2) == ["effnet_lite0", "swin"]
    assert backbone_class("segresnet").weight_fields == () and backbone_class("swinunetr").weight_fields == (
        "init_weights", "encoder_weights")


@pytest.mark.parametrize("norm", ["group", "instance"])
def test_segresnet_level_0_under_monai_s_final_block_is_monai_s_forward(norm):
    torch.manual_seed(0)
    config = VolumeBackboneConfig(kind="segresnet", feature_size=8, depths=(1, 2, 2, 4), norm=norm)
    features = build_backbone(config, in_channels=1).eval()
    reference = SegResNet(spatial_dims=3, init_filters=8, in_channels=1, out_channels=3,
                          norm=norm_name(norm, 8), blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)).eval()
    own = {k.removeprefix("net."): v for k, v in features.state_dict().items()}
    missing, unexpected = reference.load_state_dict(own, strict=False)
    assert unexpected == [] and all(k.startswith("conv_final.") for k in missing)
    x = torch.rand(2, 1, 32, 32, 16)
    with torch.no_grad():
        pyramid = features(x)
        torch.testing.assert_close(reference.conv_final(pyramid.features[0]), reference(x), rtol=0, atol=0)
    info = features.feature_info
    assert info.channels == (8, 16, 32, 64) and info.reductions == (1, 2, 4, 8) and info.pooled_channels == 64
    assert [tuple(f.shape[1:]) for f in pyramid.features] == [(8, 32, 32, 16), (16, 16, 16, 8), (32, 8, 8, 4),
                                                              (64, 4, 4, 2)]
    assert pyramid.bottleneck is pyramid.features[-1]


def test_segresnet_sizes_are_checked_in_its_own_terms():
    net = build_backbone(SEGRESNET)
    assert net.smallest_size() == (8, 8, 8)
    net.check_size(8, 8, 8)
    with pytest.raises(InvalidInputError, match=r"\(8, 12, 8\) must be multiples of 8 \(this SegResNet downsamples 3"):
        net.check_size(8, 12, 8)
    instance = build_backbone(VolumeBackboneConfig(kind="segresnet", feature_size=8, depths=(1, 1, 1, 1)))
    assert instance.smallest_size() == (16, 8, 8)
    with pytest.raises(InvalidInputError, match="single bottleneck voxel"):
        instance.check_size(8, 8, 8)


@pytest.mark.parametrize(("fields", "message"), [
    ({"kind": "segresnet", "init_weights": "a.pt"}, r"backbone.init_weights applies to kind 'swinunetr' only"),
    ({"kind": "segresnet", "use_checkpoint": True}, r"backbone.use_checkpoint applies to kind 'swinunetr' only"),
    ({"kind": "segresnet", "depths": (2,)}, r"backbone.depths needs at least 2 levels"),
    ({"kind": "unet"}, r"'unet' is not a backbone kind; choose one of \['segresnet', 'swinunetr'\]"),
])
def test_segresnet_config_errors_name_the_field(fields, message):
    with pytest.raises(InvalidInputError, match=message):
        build_backbone(VolumeBackboneConfig(**fields))


def test_size_limits_come_from_the_kind(tmp_path):
    model = medmoe.create_model("mome-segresnet-nano", pretrained=False, text={"model": "tiny-bert"})
    folder = model.save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["backbone"]["depths"] = [1, 2, 2, 49]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(medmoe.errors.NotAModelDirectoryError, match=r"backbone.depths: 49 is outside the allowed "
                                                                    r"range \[1, 48\]"):
        medmoe.load_model(folder)


@pytest.mark.timeout(300)
def test_mome_trains_three_steps_on_segresnet_and_exports(tmp_path_factory, tmp_path, capsys):
    from testkit.seg import phantom_datalist

    out = tmp_path / "run"
    rc = main(["seg", "train", "--model", "mome-segresnet-nano", "--data", str(phantom_datalist(tmp_path_factory)),
               "--out", str(out), "--steps", "3", "--batch-size", "2", "--spacing", "6", "6", "6",
               "--patch-size", "32", "32", "32", "--workers", "0", "--set", "text.model=tiny-bert", "--no-pretrained",
               "--val-max-cases", "1", "--warmup-steps", "1", "--log-every", "1", "--no-progress", "--lr", "1e-3"])
    assert rc == 0 and "trained 3 steps" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/dice_loss"] for r in rows if "train/dice_loss" in r]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    model = medmoe.load_model(out / "model", family="mome")
    assert model.config.backbone.kind == "segresnet" and type(model.backbone).__name__ == "SegResNetFeatures"
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32, 32), ["liver"]).shape == (1, 1, 32, 32, 32)
