"""The 2-D Swin backbone (``backbone.kind = "swin"``): sizes it accepts, its pyramid, grey input, MedCLIP-style
weights."""

import pytest
import torch

from medmoe.align.config import BackboneConfig
from medmoe.backbones.swin import SwinPyramid, load_backbone_weights, remap_medclip_state_dict
from medmoe.errors import CorruptFileError, InvalidInputError

TINY = BackboneConfig(image_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=2,
                      drop_path_rate=0.0)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (128, 64), (64, 192), (256, 256)])
def test_pyramid_shapes_and_feature_info_for_several_sizes(height, width):
    net = SwinPyramid(TINY).eval()
    out = net(torch.rand(2, 3, height, width))
    assert net.feature_info.channels == (16, 32, 64, 128)
    assert net.feature_info.reductions == (4, 8, 16, 32)
    for feat, channels, reduction in zip(out.features, net.feature_info.channels, net.feature_info.reductions):
        assert feat.shape == (2, channels, height // reduction, width // reduction)
    assert out.pooled.shape == (2, 128)
    assert torch.allclose(out.pooled, out.features[-1].mean(dim=(2, 3)))


def test_swin_tiny_geometry_at_224():
    net = SwinPyramid(BackboneConfig(drop_path_rate=0.0))
    assert net.feature_info.channels == (96, 192, 384, 768)
    with torch.no_grad():
        shapes = [tuple(f.shape[1:]) for f in net(torch.rand(1, 3, 224, 224)).features]
    assert shapes == [(96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7)]


def test_grey_input_equals_repeated_rgb():
    net = SwinPyramid(TINY).eval()
    grey = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(grey).pooled, net(grey.repeat(1, 3, 1, 1)).pooled, atol=1e-6)


@pytest.mark.parametrize(("height", "width"), [(48, 64), (64, 96), (100, 64)])
def test_sizes_the_window_does_not_divide_are_rejected_with_the_fix(height, width):
    net = SwinPyramid(TINY)
    with pytest.raises(InvalidInputError, match=rf"{height}x{width}.*multiple of 64"):
        net(torch.rand(1, 3, height, width))


def test_bad_shape_is_rejected():
    with pytest.raises(InvalidInputError, match="B, 3, H, W"):
        SwinPyramid(TINY)(torch.rand(3, 64, 64))


def _medclip_style(net: SwinPyramid) -> dict[str, torch.Tensor]:
    """A checkpoint laid out as MedCLIP writes it (transformers 4.x names under vision_model.model.)."""
    renames = [("attention.q_proj", "attention.self.query"), ("attention.k_proj", "attention.self.key"),
               ("attention.v_proj", "attention.self.value"), ("attention.o_proj", "attention.output.dense"),
               ("attention.relative_position_bias.relative_position_bias_table",
                "attention.self.relative_position_bias_table"),
               ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")]
    state = {}
    for key, value in net.state_dict().items():
        if not key.startswith("swin.swin."):
            continue
        name = key[len("swin.swin."):]
        for ours, medclip in renames:
            name = name.replace(ours, medclip)
        state[f"vision_model.model.{name}"] = value.clone()
    state["vision_model.projection_head.weight"] = torch.randn(512, 128)
    state["text_model.model.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    state["logit_scale"] = torch.tensor(2.0)
    return state


def test_medclip_checkpoint_remap_loads_every_swin_tensor(tmp_path):
    torch.manual_seed(0)
    source = SwinPyramid(TINY)
    state = _medclip_style(source)
    remapped = remap_medclip_state_dict(state)
    assert "swin.swin.encoder.layers.0.blocks.0.attention.q_proj.weight" in remapped
    assert "swin.hidden_states_norms.stage4.weight" in remapped  # from the final layernorm
    assert not any("projection_head" in k or "text_model" in k or "logit" in k for k in remapped)
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    torch.manual_seed(1)
    target = SwinPyramid(TINY)
    load_backbone_weights(target, str(tmp_path))
    for key, value in source.state_dict().items():
        if key.startswith("swin.swin."):
            assert torch.equal(target.state_dict()[key], value), key
    x = torch.rand(1, 3, 64, 64)
    source.eval(), target.eval()
    with torch.no_grad():
        # stage 4 norm came from the final layernorm in both, stages 1-3 norms are at their init in both
        assert torch.allclose(source(x).features[0], target(x).features[0], atol=1e-6)


def test_weights_that_are_not_a_swin_are_refused(tmp_path):
    path = tmp_path / "other.bin"
    torch.save({"fc.weight": torch.randn(3, 3)}, path)
    with pytest.raises(CorruptFileError, match="other.bin"):
        load_backbone_weights(SwinPyramid(TINY), str(path))
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptFileError, match="junk.bin"):
        load_backbone_weights(SwinPyramid(TINY), str(tmp_path / "junk.bin"))
    with pytest.raises(InvalidInputError, match="no such file"):
        load_backbone_weights(SwinPyramid(TINY), str(tmp_path / "missing"))


# --- uint8 batches, normalised on the device --------------------------------------------------------------


def _pictures(n: int = 2, size: int = 64) -> list:
    """Smooth float pictures in [0, 1] with some texture, as a reader returns them (H, W)."""
    g = torch.Generator().manual_seed(7)
    y, x = torch.meshgrid(torch.linspace(0, 1, size + 10), torch.linspace(0, 1, size + 20), indexing="ij")
    return [((0.3 + 0.4 * x + 0.2 * torch.sin(9 * y + k)) + 0.05 * torch.rand(x.shape, generator=g)).clamp(0, 1)
            .numpy() for k in range(n)]


def test_uint8_batches_give_the_float_path_outputs():
    from medmoe.data.transforms import ImageTransform

    net = SwinPyramid(TINY).eval()
    pictures = _pictures()
    floats = torch.stack([ImageTransform(image_size=64, normalized=True)(p) for p in pictures])  # float path
    bytes_ = torch.stack([ImageTransform(image_size=64)(p) for p in pictures])  # uint8 path
    assert bytes_.dtype == torch.uint8
    with torch.no_grad():
        a, b = net(floats), net(bytes_)
    # uint8 rounding moves inputs by at most 0.5/255: the outputs move by a small fraction of their size
    # (measured: about 1% on average; a different picture moves them by about 65%).
    scale = float(a.pooled.abs().mean())
    assert float((a.pooled - b.pooled).abs().mean()) < 0.02 * scale
    assert float((a.pooled - b.pooled).abs().max()) < 0.08 * scale
    assert float((a.pooled[0] - a.pooled[1]).abs().mean()) > 0.2 * scale
    for fa, fb in zip(a.features, b.features, strict=True):
        assert float((fa - fb).abs().mean()) < 0.02 * float(fa.abs().mean())


def test_uint8_input_is_normalised_by_the_backbone():
    from medmoe.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    net = SwinPyramid(TINY).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    by_hand = (images.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = net(images).pooled
        assert torch.allclose(out, net(by_hand).pooled, atol=1e-5)
        # a backbone that only cast (to 0..255 or to 0..1) would give these instead
        for unnormalised in (images.float(), images.float() / 255):
            assert not torch.allclose(out, net(unnormalised).pooled, atol=1e-2)
        grey = images[:, :1]
        assert torch.allclose(net(grey).pooled, net(grey.repeat(1, 3, 1, 1)).pooled, atol=1e-6)


def test_model_embeds_uint8_and_normalised_float_images_alike():
    from testkit.align import tiny_model

    from medmoe.data.transforms import normalize_uint8_batch

    model = tiny_model().eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), model.encode_image(normalize_uint8_batch(images)),
                              atol=1e-5)
