"""`medmoe export --format onnx`: the exported graphs match PyTorch in onnxruntime (values within 1e-4, routing
choices identical on a batch that uses several experts, MoME with two K), the CLI writes the files and
export.json, refuses to overwrite, and a failed parity check is an error.

Tracing is the slow part (the dynamo exporter), so each real model is exported once per module."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import medmoe
from medmoe.cli.main import main
from medmoe.config import config_to_dict
from medmoe.errors import InvalidInputError
from medmoe.export import ExportParityError, check_parity, export_onnx
from medmoe.export import onnx as export_module
from medmoe.export.graphs import RoutedImageEncoder
from medmoe.export.onnx import Graph, ParityCase

pytestmark = pytest.mark.timeout(900)

TINY_MEDMOE = {
    "text": {"model": "tiny-bert", "max_length": 24},
    "backbone": {"image_size": 64, "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                 "window_size": 2},
    "num_experts": 3, "local_dim": 32, "embed_dim": 24, "scale_hidden": 16, "router_hidden": 16,
}
REPORTS = ["Chest radiograph: mild cardiomegaly, no effusion.", "CT abdomen: 4 mm nodule in the left lobe.",
           "MRI brain: no acute lesion.", "Ultrasound: hypoechoic mass, posterior shadowing, no free fluid.",
           "Normal."]


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def medmoe_model():
    """A tiny MedMoE whose image router is sharpened (large random last layer) so that different images
    pick different experts: the test batch below must use at least two."""
    torch.manual_seed(0)
    model = medmoe.create_model("medmoe-nano", **TINY_MEDMOE).eval()
    last = model.routing.image_router.net[-1]
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=torch.Generator().manual_seed(3)) * 20)
        last.bias.zero_()
    return model


@pytest.fixture(scope="module")
def medmoe_export(medmoe_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("medmoe_onnx")
    return out, export_onnx(medmoe_model, out, name="tiny-medmoe")


@pytest.fixture(scope="module")
def mome_export(tmp_path_factory):
    """A saved tiny mome-nano exported through the CLI."""
    torch.manual_seed(0)
    model = medmoe.create_model("mome-nano", text={"model": "tiny-bert"}).eval()
    saved = model.save_pretrained(tmp_path_factory.mktemp("mome") / "model")
    out = tmp_path_factory.mktemp("mome_onnx") / "export"
    code = main(["export", "--model", str(saved), "--format", "onnx", "--out", str(out)])
    return medmoe.load_model(saved), saved, out, code


def _mixed_batch(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    images = torch.randn(8, 3, 64, 64, generator=g) * torch.linspace(0.2, 3.0, 8).view(8, 1, 1, 1)
    chosen = model.route(images)[0]
    assert len(set(chosen.tolist())) >= 2, f"the test batch must use several experts, got {chosen.tolist()}"
    return images


def test_routed_image_encoder_matches_pytorch_on_a_batch_using_several_experts(medmoe_model, medmoe_export):
    out, _ = medmoe_export
    images = _mixed_batch(medmoe_model)
    embeds, probs, index = _session(out / "image_encoder.onnx").run(None, {"images": images.numpy()})
    with torch.no_grad():
        ref = medmoe_model.image_features(images)
    np.testing.assert_array_equal(index, ref["expert_index"].numpy())
    assert index.dtype == np.int64 and index.shape == (8,)
    assert np.abs(embeds - ref["image_embeds"].numpy()).max() <= 1e-4
    assert np.abs(probs - ref["router_probs"].numpy()).max() <= 1e-4
    # the gather really selects per sample: another expert's embedding is far from the routed one
    with torch.no_grad():
        forced = medmoe_model.moe.experts[(int(index[0]) + 1) % 3](medmoe_model.backbone(images[:1]).features)
        other = torch.nn.functional.normalize(medmoe_model.image_proj(forced.mean(dim=(2, 3))), dim=-1)
    assert np.abs(other.numpy() - embeds[:1]).max() > 1e-2


def test_text_encoder_matches_encode_text_at_other_batch_and_length(medmoe_model, medmoe_export):
    out, _ = medmoe_export
    enc = medmoe_model.text.tokenize(REPORTS)
    assert enc["input_ids"].shape[0] != 2  # the export traced 2 reports: batch and length are dynamic
    (got,) = _session(out / "text_encoder.onnx").run(None, {"input_ids": enc["input_ids"].numpy(),
                                                            "attention_mask": enc["attention_mask"].numpy()})
    with torch.no_grad():
        want = medmoe_model.encode_text(REPORTS).numpy()
    assert got.shape == want.shape == (5, 24)
    assert np.abs(got - want).max() <= 1e-4


def test_medmoe_manifest_records_graphs_shapes_opset_and_parity(medmoe_model, medmoe_export):
    out, manifest = medmoe_export
    assert json.loads((out / "export.json").read_text()) == manifest
    digest = hashlib.sha256(json.dumps(config_to_dict(medmoe_model.config), sort_keys=True).encode()).hexdigest()
    assert manifest["config_sha256"] == digest and manifest["model"] == "tiny-medmoe"
    image = manifest["graphs"]["image_encoder"]
    assert image["inputs"] == [{"name": "images", "shape": ["batch", 3, 64, 64], "dtype": "float32"}]
    assert [(o["name"], o["shape"], o["dtype"]) for o in image["outputs"]] == [
        ("image_embeds", ["batch", 24], "float32"), ("router_probs", ["batch", 3], "float32"),
        ("expert_index", ["batch"], "int64")]
    text = manifest["graphs"]["text_encoder"]
    assert [i["shape"] for i in text["inputs"]] == [["batch", "length"], ["batch", "length"]]
    for graph in (image, text):
        assert graph["exporter"] == "dynamo" and graph["opset"] >= 18
        assert graph["parity"]["ok"] and max(graph["parity"]["max_abs_diff"].values()) <= 1e-4
    assert image["parity"]["routing_identical"] is True
    ops = [node.op_type for node in onnx.load(out / "image_encoder.onnx", load_external_data=False).graph.node]
    assert ops.count("If") == 3 and ops.count("ArgMax") == 1 and ops.count("GatherElements") == 1  # K experts
    assert (out / "tokenizer" / "tokenizer.json").is_file()


def test_mome_cli_writes_the_graph_and_a_manifest(mome_export):
    _, _, out, code = mome_export
    assert code == 0
    manifest = json.loads((out / "export.json").read_text())
    graph = manifest["graphs"]["mome"]
    assert [(i["name"], i["shape"]) for i in graph["inputs"]] == [("volume", ["batch", 1, 32, 32, 32]),
                                                                  ("text_emb", ["classes", 32])]
    assert graph["outputs"][0]["name"] == "logits"
    assert graph["outputs"][0]["shape"][:2] == ["batch", "classes"]
    assert graph["parity"]["ok"] and {c["text_emb"][0] for c in graph["parity"]["cases"]} == {2, 5}
    table = np.load(out / "class_embeddings.npz")
    assert table["embeddings"].shape == (len(table["names"]), 32)


@pytest.mark.parametrize(("batch", "k"), [(1, 2), (2, 7)])
def test_mome_onnx_matches_pytorch_for_several_k(mome_export, batch, k):
    model, _, out, _ = mome_export
    volume = torch.rand(batch, 1, 32, 32, 32, generator=torch.Generator().manual_seed(k))
    emb = model.embed_prompts(list(model.class_names[:k]))
    (got,) = _session(out / "mome.onnx").run(None, {"volume": volume.numpy(), "text_emb": emb.numpy()})
    with torch.no_grad():
        want = model(volume, text_emb=emb).numpy()
    assert got.shape == want.shape == (batch, k, 32, 32, 32)
    assert np.abs(got - want).max() <= 1e-4


def test_cli_refuses_to_overwrite_an_export(mome_export, capsys):
    _, saved, out, _ = mome_export
    before = (out / "mome.onnx").stat().st_mtime_ns
    assert main(["export", "--model", str(saved), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "would overwrite" in err and "mome.onnx" in err and "--overwrite" in err
    assert (out / "mome.onnx").stat().st_mtime_ns == before


def test_cli_rejects_an_unknown_model_and_format(tmp_path, capsys):
    assert main(["export", "--model", "no-such-model", "--out", str(tmp_path / "x")]) == 1
    assert "neither a saved model directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--model", "mome-nano", "--format", "tflite", "--out", str(tmp_path / "y")])
    assert not (tmp_path / "x").exists()


def test_check_parity_flags_a_value_or_routing_mismatch(medmoe_model, medmoe_export):
    out, _ = medmoe_export
    images = _mixed_batch(medmoe_model)

    def graph(shift: float, flip: bool) -> Graph:
        def expected():
            ref = medmoe_model.image_features(images)
            index = ref["expert_index"].clone()
            if flip:
                index[0] = (index[0] + 1) % 3
            return [ref["image_embeds"] + shift, ref["router_probs"], index]

        return Graph("image_encoder", nn.Identity(), (images,), ["images"],
                     ["image_embeds", "router_probs", "expert_index"], {}, [ParityCase((images,), expected)],
                     exact=("expert_index",))

    path = out / "image_encoder.onnx"
    assert check_parity(graph(0.0, False), path)["ok"]
    shifted = check_parity(graph(1e-3, False), path)
    assert not shifted["ok"] and shifted["routing_identical"] and shifted["max_abs_diff"]["image_embeds"] > 1e-4
    flipped = check_parity(graph(0.0, True), path)
    assert not flipped["ok"] and flipped["routing_identical"] is False


class _Scale(nn.Module):
    def forward(self, x):
        return x * 2.0


def test_failed_parity_is_an_error_and_overwrite_replaces(monkeypatch, mome_export, tmp_path, capsys):
    """The export pipeline with a one-op graph in place of MoME's (fast): a reference that disagrees makes
    the CLI exit 1 (files and manifest kept), --no-check accepts it, --overwrite replaces the files."""
    _, saved, _, _ = mome_export
    x = torch.rand(2, 4)

    def graphs(model, seed=0, wrong=True):
        return [Graph("mome", _Scale().eval(), (x,), ["x"], ["y"], {"x": {0: "batch"}},
                      [ParityCase((x[:1],), lambda: [x[:1] * (3.0 if wrong else 2.0)])])]

    monkeypatch.setattr(export_module, "model_graphs", graphs)
    out = tmp_path / "exp"
    assert main(["export", "--model", str(saved), "--out", str(out)]) == 1
    assert "differs from PyTorch" in capsys.readouterr().err
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["graphs"]["mome"]["parity"]["ok"] is False and (out / "mome.onnx").is_file()
    assert main(["export", "--model", str(saved), "--out", str(out), "--no-check"]) == 1  # files exist
    assert main(["export", "--model", str(saved), "--out", str(out), "--no-check", "--overwrite"]) == 0
    assert "parity" not in json.loads((out / "export.json").read_text())["graphs"]["mome"]
    monkeypatch.setattr(export_module, "model_graphs", lambda model, seed=0: graphs(model, seed, wrong=False))
    assert main(["export", "--model", str(saved), "--out", str(out), "--overwrite"]) == 0
    written = json.loads((out / "export.json").read_text())
    assert written["graphs"]["mome"]["parity"]["ok"] is True
    assert written["roi_size"] == [32, 32, 32] and len(written["spacing"]) == 3 and len(written["hu_window"]) == 2
    with pytest.raises(ExportParityError):
        monkeypatch.setattr(export_module, "model_graphs", graphs)
        export_onnx(medmoe.load_model(saved), out, overwrite=True)
    with pytest.raises(InvalidInputError, match="would overwrite"):
        export_onnx(medmoe.load_model(saved), out)
    with pytest.raises(InvalidInputError, match="expected a MedMoE or MoME"):
        export_onnx(nn.Linear(2, 2), tmp_path / "linear")


def test_branch_free_image_encoder_equals_the_branching_one(medmoe_model):
    """The form the TorchScript fallback traces (every expert runs) gives the same outputs bit for bit."""
    images = _mixed_batch(medmoe_model)
    with torch.no_grad():
        branching = RoutedImageEncoder(medmoe_model).eval()(images)
        every = RoutedImageEncoder(medmoe_model, branches=False).eval()(images)
    for a, b in zip(branching, every):
        assert torch.equal(a, b)


def test_torchscript_fallback_is_used_and_recorded_when_dynamo_fails(monkeypatch, mome_export, tmp_path):
    _, saved, _, _ = mome_export
    real = torch.onnx.export
    x = torch.rand(2, 4)

    def no_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("no dynamo today")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    monkeypatch.setattr(export_module, "model_graphs", lambda model, seed=0: [
        Graph("mome", _Scale().eval(), (x,), ["x"], ["y"], {"x": {0: "batch"}}, [ParityCase((x[:1],), lambda: [x[:1] * 2])])])
    graph = export_onnx(medmoe.load_model(saved), tmp_path / "ts")["graphs"]["mome"]
    assert graph["exporter"] == "torchscript" and "no dynamo today" in graph["dynamo_error"]
    assert graph["parity"]["ok"] and graph["inputs"][0]["shape"] == ["batch", 4]


def test_export_gives_the_callers_model_back_as_it_was(monkeypatch, tmp_path):
    """Exported on the CPU in float32 and eval mode, the model comes back in its own dtype and modes with
    the same parameter objects (an optimiser holding them keeps working) and its gradients."""
    torch.manual_seed(0)
    model = medmoe.create_model("medmoe-nano", **TINY_MEDMOE).train().to(torch.bfloat16)
    model.image_proj.weight.grad = torch.ones_like(model.image_proj.weight)
    modes = {name: m.training for name, m in model.named_modules()}
    assert len(set(modes.values())) == 2  # the frozen text encoder stays in eval mode in a training model
    params = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    seen = {}
    x = torch.rand(2, 4)

    def graphs(exported, seed=0):
        seen["dtypes"] = {p.dtype for p in exported.parameters()}
        seen["training"] = any(m.training for m in exported.modules())
        return [Graph("image_encoder", _Scale().eval(), (x,), ["x"], ["y"], {"x": {0: "batch"}}, [])]

    monkeypatch.setattr(export_module, "model_graphs", graphs)
    export_onnx(model, tmp_path / "exp", check=False)
    assert seen == {"dtypes": {torch.float32}, "training": False}
    assert {name: m.training for name, m in model.named_modules()} == modes
    for name, p in model.named_parameters():
        original, value = params.pop(name)
        assert p is original and p.dtype == torch.bfloat16 and torch.equal(p, value), name
    assert not params
    assert model.image_proj.weight.grad.dtype == torch.bfloat16
    assert torch.equal(model.image_proj.weight.grad, torch.ones_like(model.image_proj.weight))
