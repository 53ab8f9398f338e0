"""MONAI SwinUNETR checkpoints (self-supervised encoder; whole network, Universal-Model layout) into MoME."""

import pytest
import torch
from monai.networks.nets import SwinUNETR

import medmoe
from medmoe.backbones.swinunetr import SwinUNETRFeatures
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.seg.config import VolumeBackboneConfig
from medmoe.weights import load_swinunetr, swinunetr_key

# mome-nano's SwinUNETR: F = 12, one block per stage, window 4
ARCH = dict(in_channels=1, feature_size=12, depths=(1, 1, 1, 1), num_heads=(3, 6, 12, 24), window_size=4,
            spatial_dims=3)
TINY_TEXT = {"model": "tiny-bert"}


def _source(seed: int, norm="instance") -> SwinUNETR:
    torch.manual_seed(seed)
    return SwinUNETR(out_channels=14, norm_name=norm, **ARCH)


def _ssl_checkpoint(net: SwinUNETR) -> dict:
    """The layout of MONAI's model_swinvit.pt: swinViT without its name, 'module.' prefix, MLP as fc1 / fc2."""
    state = {}
    for key, value in net.swinViT.state_dict().items():
        key = key.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
        state[f"module.{key}"] = value.clone()
    state["module.contrastive_head.weight"] = torch.randn(4, 8)  # a pre-training head, not part of the encoder
    return {"state_dict": state}


def _universal_checkpoint(net: SwinUNETR) -> dict:
    """The Universal Model layout: the SwinUNETR as 'backbone' of a DataParallel model, under 'net'."""
    state = {f"module.backbone.{k}": v.clone() for k, v in net.state_dict().items()}
    state["module.organ_embedding"] = torch.randn(32, 512)
    state["module.controller.weight"] = torch.randn(8, 16, 1, 1, 1)
    return {"net": state, "epoch": 7}


def _nano(**overrides):
    torch.manual_seed(0)
    return medmoe.create_model("mome-nano", text=TINY_TEXT, classes=["liver", "spleen"], **overrides).eval()


def _volume() -> torch.Tensor:
    return torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))


def _swin_out(model) -> torch.Tensor:
    with torch.no_grad():
        return model.backbone.net.swinViT(_volume())[-1]


def _decoder_out(model) -> torch.Tensor:
    with torch.no_grad():
        return model.backbone(_volume()).features[0]


def test_key_layouts_map_to_monai_names():
    assert swinunetr_key("module.layers2.0.blocks.1.mlp.fc2.bias") == "swinViT.layers2.0.blocks.1.mlp.linear2.bias"
    assert swinunetr_key("module.patch_embed.proj.weight", "encoder") == "swinViT.patch_embed.proj.weight"
    assert swinunetr_key("swin_vit.layers1.0.downsample.norm.weight") == "swinViT.layers1.0.downsample.norm.weight"
    assert swinunetr_key("module.backbone.encoder10.layer.conv1.conv.weight") == "encoder10.layer.conv1.conv.weight"
    assert swinunetr_key("module.backbone.encoder10.layer.conv1.conv.weight", "encoder") is None
    assert swinunetr_key("module.backbone.out.conv.conv.weight") is None
    assert swinunetr_key("module.organ_embedding") is None


def test_ssl_encoder_checkpoint_loads_into_mome_encoder(tmp_path):
    source = _source(seed=3)
    path = tmp_path / "model_swinvit.pt"
    torch.save(_ssl_checkpoint(source), path)
    model = _nano(backbone={"encoder_weights": str(path)})
    loaded = model.backbone.net.swinViT.state_dict()
    for key, value in source.swinViT.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    (report,) = model.weight_reports
    assert report.source == str(path)
    assert report.matched == sorted(f"swinViT.{k}" for k in source.swinViT.state_dict())
    assert report.missing == [] and report.mismatched == []
    assert report.unexpected == ["module.contrastive_head.weight"]
    assert "model_swinvit.pt" in report.summary() and "1 unexpected" in report.summary()
    # the conv encoder and decoder were not touched: same seed, same init as a model built without weights
    plain = _nano()
    torch.testing.assert_close(model.backbone.net.decoder5.state_dict(), plain.backbone.net.decoder5.state_dict())
    assert not torch.allclose(_swin_out(model), _swin_out(plain))


def test_universal_model_checkpoint_loads_backbone_and_decoder(tmp_path):
    source = _source(seed=4)
    path = tmp_path / "unet.pth"
    torch.save(_universal_checkpoint(source), path)
    model = _nano(backbone={"init_weights": str(path)})  # mome-nano uses group norm: its affine norms are not in the file
    own = model.backbone.net.state_dict()
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("out.")}
    for key, value in expected.items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)
    (report,) = model.weight_reports
    assert report.matched == sorted(expected)
    assert report.missing and all(".norm" in k and k.endswith((".weight", ".bias")) for k in report.missing)
    assert sorted(report.missing) == sorted(k for k in own if k not in expected)
    assert report.unexpected == ["module.backbone.out.conv.conv.bias", "module.backbone.out.conv.conv.weight",
                                 "module.controller.weight", "module.organ_embedding"]
    assert any("out.*" in note for note in report.notes)
    assert not torch.allclose(_decoder_out(model), _decoder_out(_nano()))


def test_plain_monai_state_dict_as_safetensors(tmp_path):
    from safetensors.torch import save_file

    source = _source(seed=5)
    path = tmp_path / "swinunetr.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = SwinUNETRFeatures(VolumeBackboneConfig(feature_size=12, depths=(1, 1, 1, 1), window_size=4), in_channels=1)  # instance norm, like the source
    report = target.load_weights(str(path), "full")
    assert report.complete and report.unexpected == ["out.conv.conv.bias", "out.conv.conv.weight"]
    torch.testing.assert_close(target.net.decoder1.state_dict(), source.decoder1.state_dict(), rtol=0, atol=0)
    # as encoder weights the same file fills only the Swin ViT, and says the rest could be used with init_weights
    fresh = SwinUNETRFeatures(VolumeBackboneConfig(feature_size=12, depths=(1, 1, 1, 1), window_size=4), in_channels=1)
    report = fresh.load_weights(str(path), "encoder")
    assert report.matched == sorted(k for k in source.state_dict() if k.startswith("swinViT."))
    assert any("init_weights" in note for note in report.notes)


def test_other_window_size_reports_shape_mismatch(tmp_path):
    source = _source(seed=6)
    path = tmp_path / "model_swinvit.pt"
    torch.save(_ssl_checkpoint(source), path)
    target = SwinUNETRFeatures(VolumeBackboneConfig(feature_size=12, depths=(1, 1, 1, 1), window_size=2), in_channels=1)
    report = load_swinunetr(target.net, path, "encoder")
    names = {k for k, _, _ in report.mismatched}
    assert names and all("relative_position" in k for k in names)
    assert len(names) == 8  # bias table and index of the 4 stages' single block
    assert set(report.missing) == names  # left at their init
    torch.testing.assert_close(target.net.swinViT.patch_embed.proj.weight, source.swinViT.patch_embed.proj.weight)
    assert "shape-mismatched" in report.summary() and "(343, 3)" in report.summary()


class _NotATensor:
    pass


def test_files_that_are_not_swinunetr_checkpoints_are_refused(tmp_path):
    net = SwinUNETRFeatures(VolumeBackboneConfig(feature_size=12, depths=(1, 1, 1, 1), window_size=4), in_channels=1).net
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CorruptFileError, match="junk.pt"):
        load_swinunetr(net, junk)
    other = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(2, 2), "module.conv1.weight": torch.zeros(1)}}, other)
    with pytest.raises(CorruptFileError, match="resnet.pt.*no tensor matches"):
        load_swinunetr(net, other)
    pickled = tmp_path / "object.pt"
    torch.save({"state_dict": _NotATensor()}, pickled)
    with pytest.raises(CorruptFileError, match="object.pt"):  # weights_only refuses arbitrary objects
        load_swinunetr(net, pickled)
    with pytest.raises(InvalidInputError, match="missing.pt"):
        load_swinunetr(net, tmp_path / "missing.pt")
    with pytest.raises(CorruptFileError, match="resnet.pt"):
        _nano(backbone={"encoder_weights": str(other)})


def test_saved_model_reloads_without_the_weight_file(tmp_path):
    source = _source(seed=7)
    path = tmp_path / "model_swinvit.pt"
    torch.save(_ssl_checkpoint(source), path)
    model = _nano(backbone={"encoder_weights": str(path)})
    model.save_pretrained(tmp_path / "saved")
    path.unlink()  # the saved model holds the weights; the file is only read when a model is first built
    again = medmoe.load_model(tmp_path / "saved")
    assert again.config.backbone.encoder_weights == str(path) and again.weight_reports == []
    for key, value in source.swinViT.state_dict().items():
        torch.testing.assert_close(again.backbone.net.swinViT.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_disruptive_autoencoder_layout_maps_as_monai_filter_does(tmp_path):
    from monai.networks.nets.swin_unetr import filter_swinunetr

    source = _source(seed=8)
    state = {}
    for key, value in source.swinViT.state_dict().items():  # MONAI's documented ssl_pretrained_weights.pth layout
        key = key.replace("layers1.0.", "layers1.0.0.").replace("layers2.0.", "layers2.0.0.")
        key = key.replace("layers3.0.", "layers3.0.0.").replace("layers4.0.", "layers4.0.0.")
        state[f"encoder.{key}"] = value.clone()
    state.update({"encoder.mask_token": torch.zeros(1, 1, 12), "encoder.norm.weight": torch.ones(192),
                  "out.conv.conv.weight": torch.zeros(1, 12, 1, 1, 1)})
    for key, value in state.items():
        expected = filter_swinunetr(key, value)
        assert swinunetr_key(key, "encoder") == (expected[0] if expected else None), key
    path = tmp_path / "ssl_pretrained_weights.pth"
    torch.save({"model": state}, path)
    target = SwinUNETRFeatures(VolumeBackboneConfig(feature_size=12, depths=(1, 1, 1, 1), window_size=4), in_channels=1)
    report = target.load_weights(str(path), "encoder")
    assert report.complete and report.unexpected == ["encoder.mask_token", "encoder.norm.weight",
                                                     "out.conv.conv.weight"]
    torch.testing.assert_close(target.net.swinViT.state_dict(), source.swinViT.state_dict(), rtol=0, atol=0)
