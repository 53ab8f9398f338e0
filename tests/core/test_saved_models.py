"""A saved model's config.json is data. Wrong types, absurd sizes and another model type fail in one line, and
the safetensors header (read with safetensors' safe_open) is compared with the shapes the config gives (the
model built on the meta device) before the model is allocated."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

import medmoe
from medmoe.errors import InvalidInputError, NotAModelDirectoryError

pytestmark = pytest.mark.timeout(240)


def _saved(tmp_path, name: str, config: dict, model_type="medmoe", weights: dict | None = None):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, **config}))
    save_file(weights or {"x": torch.zeros(2)}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num_experts": 1e7}, r"config\.json\.num_experts: expected an integer, got 10000000\.0"),
        ({"num_experts": "six"}, r"num_experts: expected an integer, got 'six'"),
        ({"num_experts": 6.5}, r"num_experts: expected an integer, got 6\.5"),
        ({"num_experts": 10_000_000}, r"num_experts: 10000000 is outside the allowed range \[1, 64\]"),
        ({"backbone": {"depths": [1e6, 2, 2, 2]}}, r"backbone\.depths\[0\]: expected an integer"),
        ({"backbone": {"depths": [1_000_000, 2, 2, 2]}}, r"backbone\.depths: 1000000 is outside the allowed range"),
        ({"backbone": "swin"}, r"backbone: expected a mapping of BackboneConfig fields, got 'swin'"),
        ({"route_by": 3}, r"route_by: expected a string, got 3"),
        ({"learn_logit_scale": "yes"}, r"learn_logit_scale: expected true or false"),
        ({"logit_scale": float("nan")}, r"logit_scale: expected a finite number"),
    ],
)
def test_bad_config_values_are_one_line_errors(tmp_path, config, message):
    folder = _saved(tmp_path, "m", config)
    with pytest.raises(NotAModelDirectoryError, match=message) as caught:
        medmoe.load_model(folder)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("model_type", [["medmoe"], "swin", None, 7])
def test_model_type_must_name_a_family(tmp_path, model_type):
    folder = _saved(tmp_path, "m", {}, model_type=model_type)
    with pytest.raises(NotAModelDirectoryError, match=r"model_type .* is not a medmoe model family"):
        medmoe.load_model(folder)


def test_wrong_family_is_refused_by_name(tmp_path):
    folder = _saved(tmp_path, "seg", {}, model_type="mome")
    with pytest.raises(NotAModelDirectoryError, match=r"holds a MoME segmentation \(mome\) model; this needs a "
                                                      r"MedMoE image-report alignment"):
        medmoe.load_model(folder, family="medmoe")


_CLAIM = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
_SHORT = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00" * 4, "not a safetensors file .*header too small"),
        ((2**40).to_bytes(8, "little") + b"{}", "not a safetensors file .*header too large"),
        ((2).to_bytes(8, "little") + b"[]", "not a safetensors file .*invalid JSON in header"),
        (len(_CLAIM).to_bytes(8, "little") + _CLAIM + b"\x00" * 16, "not a safetensors file .*file not fully covered"),
        (len(_SHORT).to_bytes(8, "little") + _SHORT + b"\x00" * 8, "not a safetensors file .*invalid shape, data type"),
    ],
)
def test_broken_safetensors_headers_are_named(tmp_path, raw, message):
    folder = _saved(tmp_path, "m", {})
    (folder / "model.safetensors").write_bytes(raw)
    with pytest.raises(NotAModelDirectoryError, match=message) as caught:
        medmoe.load_model(folder)
    assert str(folder / "model.safetensors") in str(caught.value)


def test_weights_of_other_shapes_or_names_are_named_with_the_config_shapes(tmp_path):
    """The header is compared with the shapes of the model the config describes, built on the meta device."""
    torch.manual_seed(0)
    model = medmoe.create_model("mome-nano", pretrained=False, text={"model": "tiny-bert"})
    folder = model.save_pretrained(tmp_path / "mome")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["experts.blocks.0.0.weight"] = torch.zeros(8, 13, 3, 3, 3)
    state["extra.weight"] = torch.zeros(1)
    del state["heads.controller.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(NotAModelDirectoryError, match=r"weights do not match the config \(missing "
                       r"\['heads\.controller\.bias'\]; unexpected \['extra\.weight'\]; shape differs: "
                       r"\['experts\.blocks\.0\.0\.weight \(8, 13, 3, 3, 3\) vs \(8, 12, 3, 3, 3\)'\]\)"):
        medmoe.load_model(folder)


def test_header_is_compared_before_the_model_is_allocated(tmp_path):
    """An in-range but huge config over a tiny weights file fails on the header, not after allocating."""
    config = {"local_dim": 8192, "embed_dim": 8192, "router_hidden": 8192, "scale_hidden": 8192,
              "text": {"model": "tiny-bert"}}
    folder = _saved(tmp_path, "huge", config)
    script = textwrap.dedent(f"""
        import resource, medmoe
        from medmoe.errors import NotAModelDirectoryError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            medmoe.load_model({str(folder)!r})
        except NotAModelDirectoryError as err:
            print("ERROR", str(err)[:300])
        print("GROWTH_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=200)
    assert "ERROR" in proc.stdout and "weights do not match the config" in proc.stdout, proc.stdout + proc.stderr
    growth_mb = int(proc.stdout.split("GROWTH_KB")[1].split()[0]) / 1024
    assert growth_mb < 600, f"{growth_mb:.0f} MB allocated before the error"
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 3 * 2**20  # KB: under 3 GB in all


def test_real_models_still_round_trip(tmp_path):
    for name, options in (("medmoe-nano", {"text": {"model": "tiny-bert"}}), ("mome-nano", {"backbone": {"feature_size": 12}})):
        model = medmoe.create_model(name, pretrained=False, **options)
        folder = model.save_pretrained(tmp_path / name)
        loaded = medmoe.load_model(folder, family=model.model_type)
        for key, value in model.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key]), (name, key)


def test_create_model_on_a_saved_medmoe_takes_inference_settings(tmp_path):
    """A training run's model folder loads with create_model; dense dispatch (a trained setting) gives the
    sparse model's embeddings; a size override is refused before any weight is read."""
    torch.manual_seed(0)
    tiny = {"text": {"model": "tiny-bert", "max_length": 16}, "local_dim": 16, "embed_dim": 16, "scale_hidden": 8,
            "router_hidden": 8, "backbone": {"image_size": 64, "embed_dim": 8, "depths": [1, 1, 1, 1],
                                             "num_heads": [1, 1, 2, 2], "window_size": 2, "drop_path_rate": 0.0}}
    model = medmoe.create_model("medmoe-nano", pretrained=False, **tiny).eval()
    folder = model.save_pretrained(tmp_path / "model")
    images = torch.rand(3, 3, 64, 64)
    dense = medmoe.create_model(str(folder), family="medmoe", dispatch="dense")
    assert dense.config.dispatch == "dense" and not dense.training
    with torch.no_grad():
        torch.testing.assert_close(dense.encode_image(images), model.encode_image(images), rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidInputError, match=r"cannot change local_dim of a trained model \(16 -> 32\)"):
        medmoe.create_model(folder, local_dim=32)
    with pytest.raises(InvalidInputError, match=r"medmoe-nano: a MedMoE image-report alignment \(medmoe\) model"):
        medmoe.create_model("medmoe-nano", family="mome")
