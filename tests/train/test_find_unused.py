"""DDP's ``find_unused_parameters`` follows what the model declares, and the declarations hold in real steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import medmoe
from medmoe.errors import InvalidInputError
from medmoe.train.distributed import may_leave_parameters_unused

WORKER = Path(__file__).with_name("ddp_static_worker.py")

FROZEN_TEXT = {"model": "tiny-bert", "max_length": 24, "freeze": "all"}
# A one-expert MedMoE routed by its reports, with every loss on: the configuration that uses everything.
STATIC_MEDMOE = {
    "text": FROZEN_TEXT,
    "backbone": {"image_size": 64, "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                 "window_size": 2, "drop_path_rate": 0.0},
    "local_dim": 32, "embed_dim": 24, "scale_hidden": 16, "router_hidden": 16,
    "num_experts": 1, "route_by": "text",
}
REPORTS = ["Chest radiograph: mild cardiomegaly, no effusion.", "CT abdomen: 4 mm nodule in the left lobe."]


def idle_parameters(model: nn.Module, loss: torch.Tensor) -> list[str]:
    loss.backward()
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_undeclared_models_keep_the_safe_default():
    assert may_leave_parameters_unused(nn.Linear(2, 2)) is True


def test_declared_answers_are_used_and_must_be_booleans():
    static = nn.Linear(2, 2)
    static.may_leave_parameters_unused = False
    assert may_leave_parameters_unused(static) is False
    static.may_leave_parameters_unused = "no"
    with pytest.raises(InvalidInputError, match="may_leave_parameters_unused"):
        may_leave_parameters_unused(static)


def test_a_task_that_answers_decides_for_the_model():
    class Answers:
        def __init__(self, answer):
            self.answer = answer

        def may_leave_parameters_unused(self, model):
            return self.answer

    static = nn.Linear(2, 2)
    static.may_leave_parameters_unused = False
    assert may_leave_parameters_unused(static, Answers(True)) is True
    assert may_leave_parameters_unused(static, object()) is False  # a task without an answer: the model's
    with pytest.raises(InvalidInputError, match="Answers.may_leave_parameters_unused"):
        may_leave_parameters_unused(static, Answers("yes"))


@pytest.mark.parametrize(
    "overrides,idle_prefix",
    [
        ({}, None),
        ({"route_by": "label"}, None),
        ({"text": {**FROZEN_TEXT, "freeze": "last:1"}}, None),
        ({"num_experts": 6}, "moe.experts."),  # two samples reach at most two of six experts
        ({"route_by": "image"}, "routing.text_router."),
        ({"loss": {"distill_loss_weight": 0.0}}, "routing.image_router."),
        ({"loss": {"global_loss_weight": 0.0}}, "image_proj."),
        ({"loss": {"local_loss_weight": 0.0}}, "word_proj."),
        ({"text": {**FROZEN_TEXT, "freeze": "none"}}, "text.encoder.pooler."),
    ],
)
def test_medmoe_declares_idle_parameters_exactly_when_a_step_leaves_some(overrides, idle_prefix, tmp_path):
    """The model answers for its architecture, the alignment task for its loss weights (given as ``loss``)."""
    from medmoe.align.losses import AlignLossWeights, alignment_loss
    from medmoe.align.task import AlignTask, AlignTaskConfig

    overrides = dict(overrides)
    weights = AlignLossWeights(**overrides.pop("loss", {}))
    torch.manual_seed(0)
    model = medmoe.create_model("medmoe-nano", **{**STATIC_MEDMOE, **overrides}).train()
    modality = torch.tensor([0, -1])
    out = model(torch.rand(2, 3, 64, 64), REPORTS, modality=modality)
    losses = alignment_loss(out, weights, modality=modality, local_temperatures=model.config.local_temperatures)
    idle = idle_parameters(model, losses["loss"])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,report\n")
    task = AlignTask(AlignTaskConfig(data=str(manifest), **{k: getattr(weights, k) for k in vars(weights)}))
    if idle_prefix is None:
        assert idle == [] and model.may_leave_parameters_unused is False
        assert may_leave_parameters_unused(model, task) is False
    else:
        assert any(name.startswith(idle_prefix) for name in idle), idle
        assert may_leave_parameters_unused(model, task) is True
    if weights == AlignLossWeights():  # with the default weights the model's own answer is the whole answer
        assert model.may_leave_parameters_unused is (idle_prefix is not None)
    else:
        assert model.may_leave_parameters_unused is False  # the architecture alone uses every parameter


@pytest.mark.parametrize("freeze,static", [("all", True), ("none", False)])
def test_mome_uses_every_parameter_in_a_training_step(freeze, static):
    from medmoe.seg.loss import partial_label_loss

    torch.manual_seed(0)
    model = medmoe.create_model("mome-nano", text={"model": "tiny-bert", "max_length": 32, "freeze": freeze})
    model.train()
    out = model(torch.randn(1, 1, 32, 32, 32), prompts=["liver", "spleen"], return_dict=True)
    target = (torch.rand(1, 2, 32, 32, 32) > 0.5).float()
    losses = partial_label_loss(out["logits"], target, torch.tensor([[True, False]]))
    idle = idle_parameters(model, sum(losses.values()) + 0.01 * out["balance_loss"])
    assert (idle == []) is static, idle
    assert model.may_leave_parameters_unused is (not static)


@pytest.mark.ddp
@pytest.mark.timeout(240)
def test_static_model_trains_under_two_process_ddp_without_the_unused_search(tmp_path, torchrun):
    torchrun(str(WORKER), str(tmp_path), timeout=220)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["find_unused"] == r1["find_unused"] == ["False"]
    assert r0["steps"] == r1["steps"] == 6
    # DDP averaged the gradients: both ranks end with the same, changed weights.
    assert r0["final"] == r1["final"] != r0["initial"] == r1["initial"]
