"""MedCLIP's Swin-T (an HF SwinModel under vision_model.model.) into the align backbone, with its report."""

import pytest
import torch
from transformers import SwinModel

from medmoe.align.config import BackboneConfig
from medmoe.backbones.swin import SwinPyramid, swin_config
from medmoe.errors import CorruptFileError

TINY = BackboneConfig(image_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=2)


def test_medclip_checkpoint_report(tmp_path):
    torch.manual_seed(0)
    swin = SwinModel(swin_config(TINY)).eval()  # MedCLIP's vision tower is an HF SwinModel
    state = {f"vision_model.model.{k}": v.clone() for k, v in swin.state_dict().items()}
    state["vision_model.projection_head.weight"] = torch.randn(512, 128)
    state["text_model.model.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    state["logit_scale"] = torch.tensor(2.0)
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    net = SwinPyramid(BackboneConfig(**{**TINY.__dict__, "weights": str(path)}))
    report = net.load_report
    own = net.state_dict()
    for key, value in swin.state_dict().items():
        target = "swin.hidden_states_norms.stage4." + key.split(".")[-1] if key.startswith("layernorm.") \
            else f"swin.swin.{key}"
        torch.testing.assert_close(own[target], value, rtol=0, atol=0, msg=key)
    assert len(report.matched) == len(swin.state_dict())
    # the backbone's own final norm and the stage 1-3 output norms have no counterpart in a SwinModel
    assert report.missing == sorted(f"swin.hidden_states_norms.stage{s}.{p}" for s in (1, 2, 3)
                                    for p in ("weight", "bias")) + ["swin.swin.layernorm.bias", "swin.swin.layernorm.weight"]
    assert report.unexpected == ["logit_scale", "text_model.model.embeddings.word_embeddings.weight",
                                 "vision_model.projection_head.weight"]
    assert str(path) in report.summary()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        # the deepest level, normalised by MedCLIP's final layernorm, is the SwinModel's last hidden state
        deepest = net.eval()(x).features[3]
        torch.testing.assert_close(deepest.flatten(2).transpose(1, 2), swin(x).last_hidden_state)
        assert not torch.allclose(deepest, SwinPyramid(TINY).eval()(x).features[3])


def test_medclip_loader_refuses_other_files(tmp_path):
    path = tmp_path / "other.bin"
    torch.save({"fc.weight": torch.randn(3, 3)}, path)
    with pytest.raises(CorruptFileError, match="other.bin"):
        SwinPyramid(BackboneConfig(**{**TINY.__dict__, "weights": str(path)}))
