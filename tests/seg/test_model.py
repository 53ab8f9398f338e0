"""MoME model: shapes, batching without per-class loops, prompts, sliding window, errors, save/load."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

import medmoe
from medmoe.errors import InvalidInputError
from medmoe.moe import SoftUsage, soft_load_balance_loss
from medmoe.seg.heads import DynamicHeads
from medmoe.seg.model import MoME
from medmoe.seg.router import ScaleRouter

BTCV13 = ["spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta",
          "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right",
          "adrenal_gland_left"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return medmoe.create_model("mome-nano", text={"model": "tiny-bert"}).eval()


def _volume(*size, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *size, generator=g)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("k", [1, 3, 13])
@pytest.mark.parametrize("size", [(32, 32, 32), (32, 64, 32)])
def test_output_shapes(model, k, size):
    with torch.no_grad():
        out = model.forward_outputs(_volume(*size, batch=2), BTCV13[:k], return_gates=True)
    assert out["logits"].shape == (2, k, *size)
    assert out["gates"].shape == (2, k, 5, *(s // 2 for s in size))  # mome-nano fuses at half resolution
    assert torch.allclose(out["gates"].sum(2), torch.ones(()), atol=1e-5)
    assert out["gate_usage"].shape == (5,) and abs(float(out["gate_usage"].sum()) - 1) < 1e-5
    assert torch.isfinite(out["logits"]).all()


def test_full_resolution_fusion_shapes():
    torch.manual_seed(0)
    full = medmoe.create_model("mome-nano", text={"model": "tiny-bert"}, fusion_scale=1).eval()
    with torch.no_grad():
        out = full.forward_outputs(_volume(32, 32, 64), ["liver", "spleen"], return_gates=True)
    assert out["logits"].shape == (1, 2, 32, 32, 64)
    assert out["gates"].shape == (1, 2, 5, 32, 32, 64)


def test_class_output_does_not_depend_on_other_prompts(model):
    """All K heads run as one grouped op: a class's mask is the same alone or among 13 prompts."""
    x = _volume(32, 32, 32)
    with torch.no_grad():
        alone = model(x, ["liver"])
        among = model(x, BTCV13)
        reordered = model(x, ["aorta", "liver", "spleen"])
    liver = BTCV13.index("liver")
    torch.testing.assert_close(among[:, liver], alone[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reordered[:, 1], alone[:, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(among[:, 0], among[:, liver])  # different prompts -> different masks


def test_sample_output_does_not_depend_on_batch(model):
    a, b = _volume(32, 32, 32, seed=1), _volume(32, 32, 32, seed=2)
    with torch.no_grad():
        alone = model(a, ["liver"])
        batched = model(torch.cat([a, b]), ["liver"])
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)


def test_dynamic_heads_match_per_class_convolutions():
    """The batched matmul equals running each (sample, class) head as its own three 1x1x1 convs."""
    torch.manual_seed(0)
    heads = DynamicHeads(bottleneck_channels=32, text_dim=12, in_channels=8, hidden=8, proj_dim=16)
    assert heads.num_params == 153  # the Universal Model's head: 8*8+8 + 8*8+8 + 8+1
    bottleneck, text = torch.randn(2, 32, 2, 2, 2), torch.randn(3, 12)
    feats = torch.randn(2, 3, 8, 4, 5, 6)
    params = heads.head_params(bottleneck, text)
    out = heads(feats, params)
    for b in range(2):
        for k in range(3):
            p, x = params[b, k], feats[b, k][None]
            w1, b1 = p[:64].view(8, 8, 1, 1, 1), p[64:72]
            w2, b2 = p[72:136].view(8, 8, 1, 1, 1), p[136:144]
            w3, b3 = p[144:152].view(1, 8, 1, 1, 1), p[152:153]
            ref = torch.nn.functional.conv3d(x, w1, b1).relu()
            ref = torch.nn.functional.conv3d(ref, w2, b2).relu()
            ref = torch.nn.functional.conv3d(ref, w3, b3)
            torch.testing.assert_close(out[b, k], ref[0, 0], atol=1e-5, rtol=1e-5)


def _reference_forward(model, volume, text_emb):
    """The MoME formula as first written, unchunked and channels-first: every expert trilinear to the fusion
    resolution and stacked (B, S, C, X); gates softmax_s(<V f(x) + c, W_s t_k> / sqrt(d)) as (B, K, S, X); the
    (B, K, C, X) fusion; each (sample, class) head as three 1x1x1 convs.

    ``experts.blocks[l]`` runs on pyramid level l (finest first); the router's row block s reads the s-th
    level from the coarsest (seg/router.py), so the experts are stacked coarsest first and the gates and usage
    it returns are then put in the level order (finest first) that MoME returns."""
    text = text_emb * math.sqrt(model.text_dim)
    pyramid = model.backbone(volume)
    scale = model.config.fusion_scale
    size = tuple(s // scale for s in volume.shape[2:])
    experts = []
    for block, feat in zip(model.experts.blocks, pyramid.features):
        y = block(feat)
        if tuple(y.shape[2:]) != size:
            y = (F.adaptive_avg_pool3d(y, size) if y.shape[2] > size[0] else
                 F.interpolate(y, size=size, mode="trilinear", align_corners=False))
        experts.append(y.flatten(2))
    experts = torch.stack(experts, dim=1)  # (B, S, C, X), finest first
    router = model.router
    voxel = pyramid.features[0] if scale == 1 else pyramid.features[1]
    v = router.voxel_proj(voxel).flatten(2)  # (B, d, X)
    q = router.text_proj(text).view(-1, router.dim) / math.sqrt(router.dim)  # (K*S, d)
    b, k, n_scales = volume.shape[0], text.shape[0], router.num_scales
    gates = torch.matmul(q, v).view(b, k, n_scales, -1).softmax(dim=2)
    fused = torch.einsum("bksx,bscx->bkcx", gates, experts)
    params = model.heads.head_params(pyramid.bottleneck, text)
    logits = torch.empty(b, k, *size)
    for i in range(b):
        for j in range(k):
            p, x = params[i, j], fused[i, j].view(1, -1, *size)
            offset = 0
            for layer, ((out_c, in_c), n_bias) in enumerate(model.heads.layer_shapes):
                w = p[offset:offset + out_c * in_c].view(out_c, in_c, 1, 1, 1)
                offset += out_c * in_c
                x = F.conv3d(x, w, p[offset:offset + n_bias])
                offset += n_bias
                x = x.relu() if layer < 2 else x
            logits[i, j] = x[0, 0]
    if scale != 1:
        logits = F.interpolate(logits, size=tuple(volume.shape[2:]), mode="trilinear", align_corners=False)
    usage = gates.mean(dim=(0, 1, 3))
    return {"logits": logits, "gates": gates.view(b, k, n_scales, *size), "gate_usage": usage,
            "balance_loss": n_scales * usage.pow(2).sum()}


@pytest.mark.parametrize("fusion_scale, chunk", [(1, None), (1, 5000), (2, None), (2, 333)])
def test_forward_equals_reference_formula(fusion_scale, chunk):
    """Chunked over voxels, router folded into one matmul, channels-last experts: the same function as the
    unchunked formula, up to float rounding."""
    torch.manual_seed(0)
    m = medmoe.create_model("mome-nano", text={"model": "tiny-bert"}, fusion_scale=fusion_scale).eval()
    m.cpu_chunk_elements = chunk
    x = _volume(32, 64, 32, batch=2, seed=4)
    emb = m.embed_prompts(["liver", "spleen", "aorta"])
    with torch.no_grad():
        out = m.forward_outputs(x, text_emb=emb, return_gates=True)
        ref = _reference_forward(m, x, emb)
    for key in ("logits", "gates", "gate_usage", "balance_loss"):
        torch.testing.assert_close(out[key], ref[key], atol=1e-4, rtol=1e-4)


def test_expert_blocks_follow_the_pyramid_level_order():
    """``experts.blocks.l`` is the expert of pyramid level l (finest first); the returned gates and gate usage
    are in that order too."""
    torch.manual_seed(0)
    m = medmoe.create_model("mome-nano", text={"model": "tiny-bert"}).eval()
    state = m.state_dict()
    f, c, d = 12, 8, 16  # mome-nano: backbone.feature_size, expert_channels, router_dim
    assert [tuple(state[f"experts.blocks.{i}.0.weight"].shape) for i in range(5)] == [
        (c, f, 3, 3, 3), (c, f, 3, 3, 3), (c, 2 * f, 3, 3, 3), (c, 4 * f, 3, 3, 3), (c, 8 * f, 3, 3, 3)]
    assert tuple(state["router.voxel_proj.weight"].shape) == (d, f, 1, 1, 1)  # half-resolution fusion: level 1
    assert state["router.text_proj.weight"].shape[0] == 5 * d
    assert all(m.experts.block(level) is m.experts.blocks[level] for level in range(5))
    with torch.no_grad():
        out = m.forward_outputs(_volume(32, 32, 32), ["liver"], return_gates=True)
    usage = out["gates"].mean(dim=(0, 1, 3, 4, 5))
    torch.testing.assert_close(out["gate_usage"], usage, atol=1e-6, rtol=1e-5)  # both finest first


def test_chunked_training_step_matches_unchunked_gradients():
    torch.manual_seed(0)
    m = medmoe.create_model("mome-nano", text={"model": "tiny-bert"}).train()
    x, emb = _volume(32, 32, 32, batch=2), m.embed_prompts(["liver", "spleen"])
    grads = []
    for chunk in (None, 1000):
        m.cpu_chunk_elements = chunk
        m.zero_grad(set_to_none=True)
        out = m(x, text_emb=emb, return_dict=True)
        (out["logits"].square().mean() + out["balance_loss"]).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("fusion_scale", [1, 2])
def test_a_patch_over_the_memory_budget_runs_in_recomputed_chunks_with_equal_logits_and_gradients(fusion_scale):
    """chunk_elements bounds the (B, K, C, n) fused tensor of a chunk on every device; with gradients on, each
    chunk's forward runs again in the backward (checkpointed), and logits and gradients equal one pass's."""
    torch.manual_seed(0)
    m = medmoe.create_model("mome-nano", text={"model": "tiny-bert"}, fusion_scale=fusion_scale).train()
    m.cpu_chunk_elements = None  # only the memory budget decides
    x, emb = _volume(32, 32, 32, batch=1, seed=1), m.embed_prompts(["liver", "spleen", "aorta"])
    per_voxel, n_voxels = 3 * m.config.expert_channels, (32 // fusion_scale) ** 3
    gates, calls = m.router.gates, []
    m.router.gates = lambda *args: calls.append(1) or gates(*args)
    runs = []
    for budget in (None, per_voxel * 1000):
        m.chunk_elements = budget
        m.zero_grad(set_to_none=True)
        calls.clear()
        out = m(x, text_emb=emb, return_dict=True)
        forward_calls = len(calls)
        (out["logits"].square().mean() + out["balance_loss"]).backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        runs.append((out["logits"].detach(), grads, forward_calls, len(calls) - forward_calls))
    (logits, grads, forward_calls, recomputed), (c_logits, c_grads, c_forward, c_recomputed) = runs
    assert (forward_calls, recomputed) == (1, 0)
    chunks = math.ceil(n_voxels / 1000)
    assert (c_forward, c_recomputed) == (chunks, chunks)
    torch.testing.assert_close(c_logits, logits, atol=1e-5, rtol=1e-5)
    assert c_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(c_grads[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_router_gates_are_float32_values_under_bf16_autocast():
    """A matmul of float32 inputs still runs in bf16 under autocast (gates off by ~2e-3); the router's
    logits and softmax run with autocast off and equal the float32 gates."""
    torch.manual_seed(0)
    router = ScaleRouter(voxel_channels=12, text_dim=32, num_scales=5, dim=16)
    text, voxel = torch.randn(4, 32) * 3, torch.randn(2, 12, 500) * 3
    reference = router.gates(router.queries(text), voxel)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gates = router.gates(router.queries(text), voxel)
    assert gates.dtype == torch.float32
    torch.testing.assert_close(gates, reference, atol=1e-5, rtol=0)


def test_gates_and_usage_stay_fp32_under_autocast(model):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_outputs(_volume(32, 32, 32), ["liver", "spleen"], return_gates=True)
    assert out["logits"].dtype == torch.bfloat16
    assert out["gates"].dtype == out["gate_usage"].dtype == out["balance_loss"].dtype == torch.float32
    assert abs(float(out["gate_usage"].sum()) - 1) < 1e-5


def test_router_softmax_is_fp32_and_balance_loss_bounds():
    torch.manual_seed(0)
    router = ScaleRouter(voxel_channels=4, text_dim=6, num_scales=5, dim=8).to(torch.bfloat16)
    gates = router(torch.randn(1, 4, 3, 3, 3, dtype=torch.bfloat16), torch.randn(2, 6, dtype=torch.bfloat16))
    assert gates.dtype == torch.float32 and gates.shape == (1, 2, 5, 3, 3, 3)
    uniform = torch.full((1, 2, 5, 3), 0.2)
    one_scale = torch.zeros(1, 2, 5, 3)
    one_scale[:, :, 0] = 1
    assert soft_load_balance_loss(SoftUsage(expert_dim=2).update(uniform).usage()).item() == pytest.approx(1.0)
    assert soft_load_balance_loss(SoftUsage(expert_dim=2).update(one_scale).usage()).item() == pytest.approx(5.0)


def test_scale_usage_and_balance_over_voxel_chunks_equal_the_whole_volume_formula_exactly():
    """Usage accumulated over the model's voxel chunks equals mean gate per scale over every voxel, bit for bit."""
    torch.manual_seed(0)
    b, k, s, n = 2, 3, 5, 1000
    gates = torch.randn(b, k, s, n).mul(3).softmax(dim=2)
    meter, gate_sum = SoftUsage(expert_dim=2), 0
    for chunk in gates.split(333, dim=-1):  # the model's voxel chunks
        meter.update(chunk)
        gate_sum = gate_sum + chunk.sum(dim=-1, dtype=torch.float32)
    whole_usage = gate_sum.sum(dim=(0, 1)) / (b * k * n)
    assert torch.equal(meter.usage(), whole_usage)
    assert torch.equal(soft_load_balance_loss(meter.usage()), whole_usage.numel() * whole_usage.pow(2).sum())


def test_sliding_window_equals_single_pass(model):
    x = _volume(32, 64, 32, seed=3)
    emb = model.embed_prompts(["liver", "kidney_left", "spleen"])
    with torch.no_grad():
        direct = model(x, text_emb=emb)
        windowed = sliding_window_inference(x, roi_size=(32, 64, 32), sw_batch_size=1, predictor=model,
                                            overlap=0.5, mode="gaussian", text_emb=emb)
        tiled = sliding_window_inference(_volume(40, 44, 32), roi_size=(32, 32, 32), sw_batch_size=4,
                                         predictor=model, overlap=0.25, text_emb=emb)
    torch.testing.assert_close(windowed, direct, atol=1e-5, rtol=1e-5)
    assert tiled.shape == (1, 3, 40, 44, 32)


def test_prompts_resolve_typos_synonyms_and_cache(model, caplog):
    cached = model.class_embeddings[model.class_names.index("liver")]
    emb = model.embed_prompts(["livr", "Liver", "A computerized tomography of a liver", "IVC"])
    for row in emb[:3]:
        assert torch.equal(row, cached)
    assert torch.equal(emb[3], model.class_embeddings[model.class_names.index("inferior_vena_cava")])
    assert model.resolve_prompts(["right kidny", "heart tumour"]) == ["kidney_right", None]
    with caplog.at_level(logging.WARNING, logger="medmoe.seg.model"):
        unseen = model.embed_prompts(["liver", "heart tumour"])
    assert "heart tumour" in caplog.text and "unseen" in caplog.text
    assert unseen.shape == (2, model.text_dim)
    assert torch.equal(unseen[0], cached) and not torch.allclose(unseen[1], cached)
    with torch.no_grad():
        assert model(_volume(32, 32, 32), ["heart tumour"]).shape == (1, 1, 32, 32, 32)


@pytest.mark.parametrize("volume, prompts, match", [
    (torch.zeros(1, 1, 32, 32, 32), [], "prompts is empty"),
    (torch.zeros(1, 1, 32, 32, 32), "liver", "list of strings"),
    (torch.zeros(1, 1, 32, 32, 32), ["liver", " "], "non-empty strings"),
    (torch.zeros(64, 64), ["liver"], "must be 5-D"),
    (torch.zeros(1, 64, 64), ["liver"], "must be 5-D"),
    (torch.zeros(1, 32, 32, 32), ["liver"], "must be 5-D"),
    (torch.zeros(1, 3, 32, 32, 32), ["liver"], "3 channels, expected 1"),
    (torch.zeros(1, 1, 32, 40, 32), ["liver"], "multiples of 32"),
])
def test_invalid_inputs_raise_clear_errors(model, volume, prompts, match):
    with pytest.raises(InvalidInputError, match=match):
        model(volume, prompts)


def test_text_argument_errors(model):
    x = torch.zeros(1, 1, 32, 32, 32)
    with pytest.raises(InvalidInputError, match="exactly one of"):
        model(x)
    with pytest.raises(InvalidInputError, match="exactly one of"):
        model(x, ["liver"], text_emb=model.embed_prompts(["liver"]))
    with pytest.raises(InvalidInputError, match=r"text_emb must be \(K, 32\)"):
        model(x, text_emb=torch.zeros(2, 7))


def test_config_errors():
    with pytest.raises(InvalidInputError, match="fusion_scale"):
        medmoe.create_model("mome-nano", text={"model": "tiny-bert"}, fusion_scale=3)
    with pytest.raises(InvalidInputError, match="not class template names"):
        medmoe.create_model("mome-nano", text={"model": "tiny-bert"}, classes=["liver", "unicorn"])
    with pytest.raises(InvalidInputError, match="backbone.feature_size must be a positive multiple of 12"):
        medmoe.create_model("mome-nano", text={"model": "tiny-bert"}, backbone={"feature_size": 10})
    with pytest.raises(InvalidInputError, match=r"roi_size \(48, 32, 32\): volume spatial size .* multiples of 32"):
        medmoe.create_model("mome-nano", text={"model": "tiny-bert"}, roi_size=(48, 32, 32))
    with pytest.raises(InvalidInputError, match=r"backbone.window_size applies to kind 'swinunetr' only; remove it "
                                                r"for kind 'segresnet'"):
        medmoe.create_model("mome-nano", text={"model": "tiny-bert"}, backbone={"kind": "segresnet"})
    with pytest.raises(InvalidInputError, match=r"'swin' is a 2-D backbone; this model needs a 3-D one"):
        medmoe.create_model("mome-nano", text={"model": "tiny-bert"}, backbone={"kind": "swin"})


def test_training_step_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    m = medmoe.create_model("mome-nano", text={"model": "tiny-bert"}, classes=["liver", "spleen", "aorta"]).train()
    assert m.class_names == ("liver", "spleen", "aorta") and m.config.classes == ("liver", "spleen", "aorta")
    out = m(_volume(32, 32, 32, batch=2), ["liver", "spleen"], return_dict=True)
    (out["logits"].square().mean() + out["balance_loss"]).backward()
    trainable = {n: p for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("text.") for n in trainable)  # frozen text tower
    missing = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "mome")
    loaded = medmoe.load_model(tmp_path / "mome")
    assert isinstance(loaded, MoME) and loaded.class_names == model.class_names
    x = _volume(32, 32, 32, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(x, ["liver", "kidney tumor"]), model(x, ["liver", "kidney tumor"]))
    assert torch.equal(loaded.embed_prompts(["heart tumour"]), model.embed_prompts(["heart tumour"]))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_paper_scale_model_builds_and_runs():
    m = medmoe.create_model("mome-swinunetr", text={"model": "tiny-bert"}).eval()
    info = m.backbone.feature_info
    assert info.channels == (48, 48, 96, 192, 384) and info.reductions == (1, 2, 4, 8, 16)
    assert info.pooled_channels == 768
    n_backbone = sum(p.numel() for p in m.backbone.parameters())
    assert 62_000_000 < n_backbone < 62_300_000  # MONAI SwinUNETR(feature_size=48) minus its 48->1 out conv
    with pytest.raises(InvalidInputError, match="single bottleneck voxel"):
        m(torch.zeros(1, 1, 32, 32, 32), ["liver"])
    with torch.no_grad():
        assert m(torch.zeros(1, 1, 32, 32, 64), ["liver", "spleen"]).shape == (1, 2, 32, 32, 64)


@pytest.mark.timeout(120)
def test_prompts_steer_the_heads_from_the_first_step():
    """Prompts scaled to unit RMS move a class's logits far more than the image does; MiniLM's unit-norm
    prompts fed unscaled give every class nearly the same head (logits of different prompts differ less than
    across voxels), so small organs would vanish before their prompts separate them."""
    names = ["liver", "spleen", "kidney_left", "kidney_right", "gallbladder", "pancreas", "aorta", "stomach"]
    x = _volume(32, 32, 32)
    ratios = {}
    for scale in (True, False):
        torch.manual_seed(0)
        mome = medmoe.create_model("mome-nano", scale_text=scale)
        with torch.no_grad():
            logits = mome(x, prompts=names)
        ratios[scale] = float(logits.std(dim=1).mean() / logits.std(dim=(2, 3, 4)).mean())
    assert ratios[True] > 3.0 > 1.0 > ratios[False], ratios
