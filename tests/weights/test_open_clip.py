"""The Hugging Face text encoder of an open_clip / BiomedCLIP checkpoint as the text tower."""

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from medmoe.errors import CorruptFileError
from medmoe.text import TextConfig, TextTower
from medmoe.text.tower import minilm_path

TEXTS = ["No pleural effusion.", "Hypoechoic thyroid nodule."]


@pytest.fixture(scope="module")
def pubmedbert_like(tmp_path_factory):
    """(folder with a BERT config + WordPiece tokenizer and no weights, the BertModel whose weights go in the file)."""
    folder = tmp_path_factory.mktemp("pubmedbert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())  # a real uncased WordPiece vocabulary, offline
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    return folder, BertModel(config).eval()


def _open_clip_checkpoint(bert: BertModel) -> dict:
    """open_clip's training-checkpoint layout around an HFTextEncoder (BiomedCLIP: proj='mlp', CLS pooler)."""
    state = {f"module.text.transformer.{k}": v.clone() for k, v in bert.state_dict().items()}
    state["module.text.transformer.embeddings.position_ids"] = torch.arange(64)[None]  # transformers 4.x buffer
    state["module.text.proj.0.weight"] = torch.randn(40, 32)
    state["module.text.proj.2.weight"] = torch.randn(16, 40)
    state["module.visual.trunk.patch_embed.proj.weight"] = torch.randn(8, 3, 4, 4)
    state["module.visual.head.proj.weight"] = torch.randn(16, 8)
    state["module.logit_scale"] = torch.tensor(4.6)
    return {"epoch": 3, "name": "biomedclip-run", "state_dict": state}


def test_open_clip_text_weights_load_into_the_tower(pubmedbert_like, tmp_path):
    folder, bert = pubmedbert_like
    path = tmp_path / "epoch_3.pt"
    torch.save(_open_clip_checkpoint(bert), path)
    tower = TextTower(TextConfig(model=str(folder), weights=str(path), pooling="cls"))
    for key, value in bert.state_dict().items():
        torch.testing.assert_close(tower.encoder.state_dict()[key], value, rtol=0, atol=0, msg=key)
    with torch.no_grad():
        enc = tower.tokenize(TEXTS)
        reference = bert(**{k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).last_hidden_state
        out = tower(TEXTS)
    torch.testing.assert_close(out.sentence, reference[:, 0])
    report = tower.load_report
    assert report.matched == sorted(bert.state_dict()) and report.missing == []
    assert report.unexpected == sorted([
        "module.logit_scale", "module.text.proj.0.weight", "module.text.proj.2.weight",
        "module.text.transformer.embeddings.position_ids", "module.visual.head.proj.weight",
        "module.visual.trunk.patch_embed.proj.weight"])
    assert any("module.text.proj.0.weight" in note for note in report.notes)
    random = TextTower(TextConfig(model=str(folder), weights=str(path), pooling="cls"), load_pretrained=False)
    with torch.no_grad():
        assert not torch.allclose(random(TEXTS).sentence, out.sentence)


def test_a_partial_text_tower_reports_missing_keys(pubmedbert_like, tmp_path):
    folder, bert = pubmedbert_like
    state = {f"text.transformer.{k}": v for k, v in bert.state_dict().items() if not k.startswith("pooler.")}
    path = tmp_path / "open_clip_pytorch_model.bin"  # BiomedCLIP's released file: a bare state dict
    torch.save(state, path)
    report = TextTower(TextConfig(model=str(folder), weights=str(path))).load_report
    assert report.missing == ["pooler.dense.bias", "pooler.dense.weight"] and report.unexpected == []


def test_checkpoints_without_an_hf_text_encoder_are_refused(pubmedbert_like, tmp_path):
    folder, _ = pubmedbert_like
    clip_style = tmp_path / "ViT-B-32.pt"  # open_clip's own text transformer: not an HF encoder
    torch.save({"transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3, 3),
                "token_embedding.weight": torch.zeros(4, 3)}, clip_style)
    with pytest.raises(CorruptFileError, match="ViT-B-32.pt.*text.transformer"):
        TextTower(TextConfig(model=str(folder), weights=str(clip_style)))
    wrong_width = tmp_path / "wide.pt"
    torch.save({"text.transformer.embeddings.word_embeddings.weight": torch.zeros(10, 7)}, wrong_width)
    with pytest.raises(CorruptFileError, match="wide.pt.*no tensor matches"):
        TextTower(TextConfig(model=str(folder), weights=str(wrong_width)))
