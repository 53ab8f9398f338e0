import pytest
import torch
import torch.nn.functional as F
from testkit.align import REPORTS, tiny_model

import medmoe
from medmoe.align.losses import AlignLossWeights
from medmoe.errors import InvalidInputError


def test_api_shapes_and_normalisation(model, batch):
    images, reports, modality = batch
    model.eval()
    with torch.no_grad():
        img = model.encode_image(images)
        txt = model.encode_text(reports)
        out = model(images, reports, modality=modality, return_loss=True)
        index, probs = model.route(images)
    assert img.shape == (4, 24) and txt.shape == (4, 24)
    assert torch.allclose(img.norm(dim=-1), torch.ones(4)) and torch.allclose(txt.norm(dim=-1), torch.ones(4))
    assert out["local_features"].shape == (4, 32, 16, 16)
    assert out["word_features"].shape[0::2] == (4, 32)
    assert out["router_logits"].shape == (4, 6) and out["expert_index"].shape == (4,)
    assert index.shape == (4,) and probs.shape == (4, 6)
    assert torch.allclose(probs.sum(-1), torch.ones(4))
    losses = {k for k in out if k.endswith("_loss")}
    assert losses == {"global_loss", "local_loss", "balance_loss", "router_ce_loss", "distill_loss"}
    assert torch.allclose(out["loss"], sum(out[k] for k in losses))
    assert torch.allclose(out["text_embeds"], txt, atol=1e-6)


def test_encode_image_routes_by_the_image_alone(batch):
    images, _, _ = batch
    model = tiny_model(route_by="label").eval()
    with torch.no_grad():
        features = model.image_features(images)
        index, _ = model.route(images)
        assert torch.equal(features["expert_index"], index)
        assert torch.allclose(model.encode_image(images), features["image_embeds"])
        assert torch.allclose(model(images)["image_embeds"], features["image_embeds"])


def test_route_by_label_text_and_image(batch):
    images, reports, modality = batch
    with torch.no_grad():
        by_label = tiny_model(route_by="label").eval()(images, reports, modality=torch.tensor([5, -1, 2, 0]))
        assert by_label["expert_index"][[0, 2, 3]].tolist() == [5, 2, 0]
        assert by_label["gates"][[0, 2, 3]].tolist() == [1.0, 1.0, 1.0]
        # the unlabelled row falls back to the report's route
        assert by_label["expert_index"][1] == by_label["text_router_logits"][1].argmax()
        by_text = tiny_model(route_by="text").eval()(images, reports)
        assert torch.equal(by_text["expert_index"], by_text["text_router_logits"].argmax(-1))
        by_image = tiny_model(route_by="image").eval()(images, reports)
        assert torch.equal(by_image["expert_index"], by_image["image_router_logits"].argmax(-1))
        assert by_image["text_router_logits"] is None


def test_only_the_chosen_experts_run(batch):
    images, reports, _ = batch
    model = tiny_model(route_by="label").eval()
    calls = [0] * model.num_experts
    for e, expert in enumerate(model.moe.experts):
        expert.register_forward_hook(lambda *_, e=e: calls.__setitem__(e, calls[e] + 1))
    with torch.no_grad():
        model(images, reports, modality=torch.tensor([1, 1, 4, 1]))
    assert calls == [0, 1, 0, 0, 1, 0]


def test_sparse_and_dense_dispatch_agree(batch):
    images, reports, modality = batch
    sparse, dense = tiny_model(route_by="text").eval(), tiny_model(route_by="text", dispatch="dense").eval()
    dense.load_state_dict(sparse.state_dict())
    with torch.no_grad():
        a, b = sparse(images, reports, return_loss=True), dense(images, reports, return_loss=True)
    assert torch.allclose(a["local_features"], b["local_features"], atol=1e-5)
    assert torch.allclose(a["loss"], b["loss"], atol=1e-5)


def test_single_expert_equals_the_plain_expert(batch):
    images, reports, _ = batch
    model = tiny_model(num_experts=1).eval()
    with torch.no_grad():
        out = model(images, reports, return_loss=True)
        pyramid = model.backbone(images)
        local = model.moe.experts[0](pyramid.features)
        plain = F.normalize(model.image_proj(local.mean(dim=(2, 3))), dim=-1)
    assert torch.equal(out["gates"], torch.ones(4))
    assert torch.allclose(out["local_features"], local, atol=1e-6)
    assert torch.allclose(out["image_embeds"], plain, atol=1e-6)
    assert torch.allclose(model.encode_image(images), plain, atol=1e-6)
    assert out["balance_loss"].item() == pytest.approx(0.01)  # K * f * P = 1 for a single expert
    assert out["distill_loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_train_steps_lower_the_loss_on_a_fixed_batch(batch):
    images, reports, modality = batch
    model = tiny_model().train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(images, reports, modality=modality, return_loss=True)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses
    # every term gets a gradient path: the routers and the chosen experts were updated
    assert model.routing.image_router.net[0].weight.grad is not None
    assert model.routing.text_router.net[0].weight.grad is not None


def test_learnable_temperature_is_trained_and_clamped(batch):
    images, reports, _ = batch
    model = tiny_model(learn_logit_scale=True, logit_scale=1 / 0.07)
    assert model.log_logit_scale.requires_grad
    model(images, reports, return_loss=True)["loss"].backward()
    assert model.log_logit_scale.grad is not None
    with torch.no_grad():
        model.log_logit_scale.fill_(10.0)
    assert model.logit_scale.item() == pytest.approx(100.0)
    fixed = tiny_model(learn_logit_scale=False)
    assert "log_logit_scale" not in dict(fixed.named_parameters())


def test_save_load_round_trip_gives_identical_outputs(tmp_path, batch):
    images, reports, modality = batch
    model = tiny_model().eval()
    model.save_pretrained(tmp_path / "m")
    loaded = medmoe.load_model(tmp_path / "m")
    with torch.no_grad():
        a = model(images, reports, modality=modality, return_loss=True)
        b = loaded(images, reports, modality=modality, return_loss=True)
    for key in ("image_embeds", "text_embeds", "local_features", "router_logits", "loss"):
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(model.encode_image(images), loaded.encode_image(images))


def test_parameter_counts_with_and_without_idle_experts(model):
    per_expert = sum(p.numel() for p in model.moe.experts[0].parameters())
    assert model.num_parameters() - model.num_parameters(active=True) == 5 * per_expert


def test_bad_inputs_are_named(model, batch):
    images, reports, _ = batch
    with pytest.raises(InvalidInputError, match="4 images but 3 reports"):
        model(images, reports[:3])
    with pytest.raises(InvalidInputError, match="needs the reports"):
        model(images, return_loss=True)
    with pytest.raises(InvalidInputError, match="list of strings"):
        model.encode_text("one report")
    with pytest.raises(InvalidInputError, match="route_by"):
        tiny_model(route_by="modality")


def test_registered_configs_build():
    assert {"medmoe-nano", "medmoe-swin-t"} <= set(medmoe.list_models())
    model = medmoe.create_model("medmoe-nano", pretrained=False).eval()
    with torch.no_grad():
        assert model.encode_image(torch.rand(2, 3, 64, 64)).shape == (2, 96)
        assert model.encode_text(REPORTS[:2]).shape == (2, 96)


def test_text_cache_gives_the_same_outputs_and_needs_a_frozen_tower(batch):
    images, reports, modality = batch
    model = tiny_model(text={"model": "tiny-bert", "max_length": 24, "freeze": "all"}).eval()
    with torch.no_grad():
        plain = model(images, reports, modality=modality, return_loss=True)
        model.enable_text_cache()
        model(images[:2], reports[:2])  # fills part of the cache in another batch
        cached = model(images, reports, modality=modality, return_loss=True)
    assert set(model._text_cache) == set(reports)
    model.enable_text_cache()
    assert model.warm_text_cache(reports + reports[:1], batch_size=3) == 4
    with torch.no_grad():
        warmed = model(images, reports, modality=modality, return_loss=True)
    # the cache holds float16 copies on the CPU: equal to the float32 outputs up to float16 rounding
    assert torch.allclose(plain["loss"], warmed["loss"], rtol=2e-3, atol=2e-3)
    for key in ("text_embeds", "word_features", "loss"):
        assert torch.allclose(plain[key], cached[key], rtol=2e-3, atol=2e-3), key
    sentence, words, _ = model._text_cache[reports[0]]
    assert sentence.dtype == words.dtype == torch.float16 and words.device.type == "cpu"
    assert torch.equal(plain["word_mask"], cached["word_mask"]) and plain["words"] == cached["words"]
    with pytest.raises(InvalidInputError, match="frozen"):
        tiny_model().enable_text_cache()


@pytest.mark.parametrize("detach", [False, True])
def test_detached_router_input_keeps_routing_losses_out_of_the_backbone(batch, detach):
    images, reports, modality = batch
    model = tiny_model(detach_router_input=detach)
    out = model(images, reports, modality=modality, return_loss=True)
    out["distill_loss"].backward()
    backbone = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    router = [p.grad for p in model.routing.image_router.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in router)  # the router learns either way
    reached = any(g is not None and g.abs().sum() > 0 for g in backbone)
    assert reached is not detach


def _pin_routers(model, expert: int, text_logit: float, image_logit: float):
    """Both routers choose ``expert`` for every input, the text router far more confidently (p 0.94 vs 0.31)."""
    with torch.no_grad():
        for router, logit in ((model.routing.text_router, text_logit), (model.routing.image_router, image_logit)):
            last = router.net[-1]
            last.weight.zero_()
            last.bias.zero_()
            last.bias[expert] = logit
    return model


@pytest.mark.parametrize("expert", [0, 4])
def test_same_expert_gives_the_same_embedding_whichever_router_chose_it(batch, expert):
    images, reports, _ = batch
    model = _pin_routers(tiny_model(route_by="text"), expert, 4.5, 0.8).eval()
    with torch.no_grad():
        trained = model(images, reports)  # the training route: the report's router
        inferred = model.image_features(images)  # the inference route: the image's router
    assert trained["route_source"] == "text"
    assert trained["expert_index"].tolist() == inferred["expert_index"].tolist() == [expert] * 4
    probs = trained["text_router_logits"].softmax(-1)[:, expert], inferred["router_probs"][:, expert]
    assert (probs[0] > 0.9).all() and (probs[1] < 0.4).all()  # the routers' confidences differ a lot
    assert torch.equal(trained["gates"], torch.ones(4)) and torch.equal(inferred["gates"], torch.ones(4))
    assert torch.allclose(trained["image_embeds"], inferred["image_embeds"], atol=1e-5)
    assert torch.allclose(trained["local_features"], inferred["local_features"], atol=1e-5)
    assert torch.allclose(model.encode_image(images), trained["image_embeds"], atol=1e-5)


def test_probability_gate_scales_the_chosen_expert_by_its_router_probability(batch):
    images, reports, _ = batch
    model = _pin_routers(tiny_model(route_by="text", gate="probability"), 2, 4.5, 0.8).eval()
    with torch.no_grad():
        trained = model(images, reports)
        inferred = model.image_features(images)
        local = model.moe.experts[2](model.backbone(images).features)
    for out, logits in ((trained, trained["text_router_logits"]), (inferred, inferred["router_logits"])):
        p = logits.softmax(-1)[:, 2]
        assert torch.allclose(out["gates"], p)
        scaled = F.normalize(model.image_proj((local * p.view(-1, 1, 1, 1)).mean(dim=(2, 3))), dim=-1)
        assert torch.allclose(out["image_embeds"], scaled, atol=1e-5)
        assert torch.allclose(out["local_features"], local * p.view(-1, 1, 1, 1), atol=1e-5)
    # the same expert, two embeddings: what the straight-through gate removes
    assert (trained["image_embeds"] - inferred["image_embeds"]).abs().max() > 1e-3
    with pytest.raises(InvalidInputError, match="gate"):
        tiny_model(gate="detached")


def _task_loss_router_grad(route_by: str, **overrides):
    """Gradient norm of the routing router's parameters from global + local contrastive terms alone."""
    images, reports = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(3)), REPORTS + REPORTS[:2]
    model = tiny_model(route_by=route_by, **overrides).train()
    contrastive_only = AlignLossWeights(balance_loss_weight=0.0, router_ce_loss_weight=0.0, distill_loss_weight=0.0)
    out = model(images, reports, return_loss=True, loss_weights=contrastive_only)
    assert {k for k in out if k.endswith("_loss")} == {"global_loss", "local_loss"}
    out["loss"].backward()
    router = model.routing.text_router if route_by == "text" else model.routing.image_router
    return sum(float(p.grad.abs().sum()) for p in router.parameters() if p.grad is not None)


@pytest.mark.parametrize("route_by", ["text", "image"])
@pytest.mark.parametrize("gate", ["straight_through", "probability"])
def test_the_task_loss_alone_trains_the_routing_router(route_by, gate):
    assert _task_loss_router_grad(route_by, gate=gate) > 0


@pytest.mark.parametrize("route_by", ["text", "image"])
def test_the_router_gets_no_task_gradient_when_the_gate_is_cut(monkeypatch, route_by):
    # Shows that the test above can fail: a gate of constant 1 with no gradient leaves the router untouched.
    monkeypatch.setattr("medmoe.moe.router.straight_through_gate", lambda probs: torch.ones_like(probs).detach())
    assert _task_loss_router_grad(route_by, gate="straight_through") == 0.0
