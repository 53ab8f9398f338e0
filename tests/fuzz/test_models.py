"""Fuzzing ``load_model``: a saved model whose config.json holds values of any JSON type or size,
or whose safetensors file is damaged, ends as a medmoe error (or loads), with bounded memory."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st
from testkit.fuzz import FUZZ, check_outcome, mutated, peak_growth

import medmoe

pytestmark = pytest.mark.timeout(300)

FIELDS = ("num_experts", "local_dim", "embed_dim", "refine_depth", "router_hidden", "route_by", "gate", "backbone",
          "text", "local_temperatures", "logit_scale", "learn_logit_scale", "model_type", "no_such_field")
BACKBONE_FIELDS = ("depths", "num_heads", "embed_dim", "window_size", "patch_size", "image_size", "weights")
json_values = st.recursive(
    st.none() | st.booleans() | st.sampled_from([0, -1, 1, 2, 3, 6, 7, 64, 65, 10_000_000, 2**63, 1e7, 6.5, -0.0])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(BACKBONE_FIELDS), children,
                                                                          max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small saved medmoe model (tiny text tower, one narrow Swin stage per level)."""
    model = medmoe.create_model("medmoe-nano", pretrained=False, num_experts=2, local_dim=32, embed_dim=32,
                                text={"model": "tiny-bert"})
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "nano")


def _copy(saved, tmp_path):
    folder = tmp_path / "model"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(saved, folder)
    return folder


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(FIELDS), json_values, min_size=1, max_size=3))
def test_config_values_fail_only_with_medmoe_errors_and_bounded_memory(saved, tmp_path, changes):
    folder = _copy(saved, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if key == "backbone" and isinstance(value, dict):
            config["backbone"].update(value)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    check_outcome(*peak_growth(lambda: medmoe.load_model(folder)), f"load_model with {changes}")


@FUZZ
@given(data=st.data())
def test_weights_files_fail_only_with_medmoe_errors_and_bounded_memory(saved, tmp_path, data):
    folder = _copy(saved, tmp_path)
    weights = folder / "model.safetensors"
    head = weights.read_bytes()[:4096]  # mutate the header and the first tensor bytes, keep the rest
    name, mutated_head = data.draw(mutated({"model.safetensors": head}))
    weights.write_bytes(mutated_head + weights.read_bytes()[4096:])
    check_outcome(*peak_growth(lambda: medmoe.load_model(folder)), "load_model with damaged weights")
