"""CLIP text encoders from local folders (a whole CLIPModel, a CLIPTextModel) as the text tower."""

import string

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import medmoe
from medmoe.errors import InvalidInputError
from medmoe.text import TextConfig, TextTower

TEXTS = ["liver", "a left kidney", "spleen and liver"]


def _tokenizer() -> CLIPTokenizer:
    """A real CLIP BPE tokenizer (byte-level words ending in </w>, <|startoftext|> / <|endoftext|>) with a tiny vocab."""
    vocab = {c: i for i, c in enumerate(string.ascii_lowercase)}
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(string.ascii_lowercase)})
    merges = [("l", "i"), ("li", "v"), ("e", "r</w>"), ("k", "i"), ("d", "n")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _text_config(tok) -> dict:
    return dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=32, projection_dim=24, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory):
    """(whole CLIPModel folder, CLIPTextModel folder, the CLIPModel, the CLIPTextModel), tokenizers saved in both."""
    root = tmp_path_factory.mktemp("clip")
    tok = _tokenizer()
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16, projection_dim=24)
    full = CLIPModel(CLIPConfig(text_config=_text_config(tok), vision_config=vision, projection_dim=24)).eval()
    full.save_pretrained(root / "full")
    tok.save_pretrained(root / "full")
    text = CLIPTextModel(CLIPTextConfig(**_text_config(tok))).eval()
    text.save_pretrained(root / "text")
    tok.save_pretrained(root / "text")
    return root / "full", root / "text", full, text


def _inputs(tower):
    enc = tower.tokenize(TEXTS)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_whole_clip_folder_gives_its_text_tower_pooled_at_eos(clip_folders):
    full_dir, _, full, _ = clip_folders
    tower = TextTower(TextConfig(model=str(full_dir), pooling="auto", word_layers=2))
    assert tower.pooling == "eos" and tower.width == 32
    with torch.no_grad():
        out = tower(TEXTS)
        reference = full.text_model(**_inputs(tower))
    # the loaded weights are CLIP's, and the sentence is CLIP's pooled (end-of-text, final-norm) state
    torch.testing.assert_close(out.sentence, reference.pooler_output)
    torch.testing.assert_close(tower.encoder.get_input_embeddings().weight, full.text_model.embeddings.token_embedding.weight,
                               rtol=0, atol=0)
    report = tower.load_report
    assert report.missing == [] and report.mismatched == []
    assert len(report.matched) == len(tower.encoder.state_dict())
    assert "logit_scale" in report.unexpected and "visual_projection.weight" in report.unexpected
    assert any(k.startswith("vision_model.") for k in report.unexpected)
    assert "text_projection.weight" in report.unexpected and any("text.projection" in n for n in report.notes)
    random = TextTower(TextConfig(model=str(full_dir), pooling="eos"), load_pretrained=False)
    with torch.no_grad():
        assert not torch.allclose(random(TEXTS).sentence, out.sentence)


def test_projection_gives_clip_text_features(clip_folders):
    full_dir, _, full, _ = clip_folders
    tower = TextTower(TextConfig(model=str(full_dir), pooling="eos", projection=True))
    assert tower.width == 24
    with torch.no_grad():
        out = tower(TEXTS)
        reference = full.get_text_features(**_inputs(tower))
    reference = getattr(reference, "pooler_output", reference)  # a tensor, or an output object in newer versions
    torch.testing.assert_close(out.sentence, reference)
    assert out.words.shape[-1] == 24
    assert tower.load_report.missing == [] and "text_projection.weight" not in tower.load_report.unexpected


def test_clip_text_model_folder(clip_folders):
    _, text_dir, _, text = clip_folders
    tower = TextTower(TextConfig(model=str(text_dir), pooling="auto"))
    with torch.no_grad():
        torch.testing.assert_close(tower(TEXTS).sentence, text(**_inputs(tower)).pooler_output)
    assert tower.load_report.complete and tower.load_report.unexpected == []
    with pytest.raises(InvalidInputError, match="CLIP"):
        TextTower(TextConfig(model="minilm", projection=True))


def test_mome_with_a_clip_text_tower_saves_and_reloads(clip_folders, tmp_path):
    full_dir, _, full, _ = clip_folders
    model = medmoe.create_model("mome-nano", text={"model": str(full_dir), "pooling": "eos"},
                                classes=["liver", "spleen"]).eval()
    assert model.text_dim == 32
    model.save_pretrained(tmp_path / "saved")
    again = medmoe.load_model(tmp_path / "saved")
    torch.testing.assert_close(again.embed_prompts(["liver"]), model.embed_prompts(["liver"]))
    with torch.no_grad():  # a prompt outside the class set runs through the reloaded CLIP tower
        torch.testing.assert_close(again.embed_prompts(["stomach"]), model.embed_prompts(["stomach"]))
