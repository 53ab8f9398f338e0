"""Precomputed prompt embeddings (one row per class, with the names) for MoME instead of its text tower."""

import json

import pytest
import torch
import torch.nn.functional as F

import medmoe
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.weights import read_prompt_embeddings

TINY_TEXT = {"model": "tiny-bert"}  # 32 wide


def _rows(width=32, n=3):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(2))


def _save_pt(path, rows, classes):
    torch.save({"embeddings": rows, "classes": classes}, path)
    return str(path)


def _nano(**overrides):
    torch.manual_seed(0)
    return medmoe.create_model("mome-nano", text=TINY_TEXT, **overrides).eval()


def test_file_rows_replace_the_text_tower(tmp_path):
    rows = _rows()
    path = _save_pt(tmp_path / "txt_encoding.pt", rows, ["Liver", "spleen", "Right Kidney"])
    model = _nano(prompt_embeddings=path)
    assert model.class_names == ("liver", "spleen", "kidney_right")  # the class set comes from the file
    raw = F.normalize(rows, dim=-1)
    expected = F.normalize(raw - raw.mean(0), dim=-1)  # MoME's centring and normalisation, as for tower output
    torch.testing.assert_close(model.embed_prompts(["right kidney", "liver", "Spleen"]), expected[[2, 0, 1]])
    torch.testing.assert_close(model.text_center, raw.mean(0))
    plain = _nano(classes=["liver", "spleen", "kidney_right"])  # the same model embedding with its text tower
    assert not torch.allclose(model.embed_prompts(["liver"]), plain.embed_prompts(["liver"]))


def test_prompts_without_a_row_and_wrong_widths_are_named(tmp_path):
    path = _save_pt(tmp_path / "emb.pt", _rows(), ["liver", "spleen", "kidney_right"])
    model = _nano(prompt_embeddings=path)
    with pytest.raises(InvalidInputError, match="'stomach'.*emb.pt"):
        model.embed_prompts(["liver", "stomach"])
    with pytest.raises(InvalidInputError, match=r"emb.pt.*\['pancreas'\]"):
        _nano(prompt_embeddings=path, classes=["liver", "pancreas"])
    narrow = _save_pt(tmp_path / "clip512.pt", _rows(width=16), ["liver", "spleen", "kidney_right"])
    with pytest.raises(InvalidInputError, match="clip512.pt.*16 wide.*32"):
        _nano(prompt_embeddings=narrow)


def test_safetensors_with_names_in_metadata(tmp_path):
    from safetensors.torch import save_file

    rows = _rows(n=2)
    path = tmp_path / "emb.safetensors"
    save_file({"embeddings": rows}, str(path), metadata={"classes": json.dumps(["aorta", "stomach"])})
    table = read_prompt_embeddings(path)
    assert table.classes == ("aorta", "stomach") and table.width == 32
    torch.testing.assert_close(table.rows(["stomach"]), rows[1:])


def test_files_that_are_not_prompt_tables_are_refused(tmp_path):
    bare = tmp_path / "bare.pth"
    torch.save(_rows(), bare)  # the Universal Model's txt_encoding.pth: rows without names
    with pytest.raises(CorruptFileError, match="bare.pth.*without class names"):
        read_prompt_embeddings(bare)
    counts = _save_pt(tmp_path / "counts.pt", _rows(n=3), ["liver", "spleen"])
    with pytest.raises(CorruptFileError, match="2 class names for 3"):
        read_prompt_embeddings(counts)
    junk = tmp_path / "junk.pt"
    junk.write_text("liver,spleen")
    with pytest.raises(CorruptFileError, match="junk.pt"):
        read_prompt_embeddings(junk)
    twice = _save_pt(tmp_path / "twice.pt", _rows(n=2), ["liver", "Liver"])
    with pytest.raises(InvalidInputError, match="twice.pt.*both class 'liver'"):
        read_prompt_embeddings(twice).rows(["liver"], resolve=str.lower)
    with pytest.raises(InvalidInputError, match="nowhere.pt"):
        read_prompt_embeddings(tmp_path / "nowhere.pt")
