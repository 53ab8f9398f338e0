import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medmoe.errors import InvalidInputError
from medmoe.moe import (
    Router,
    RoutingTracker,
    confusion_matrix,
    load_balance_loss,
    router_aux_losses,
    router_ce_loss,
    router_distillation_loss,
    router_z_loss,
    routing_agreement,
    routing_scalars,
    select_experts,
)


def test_gating_kinds():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    top1 = select_experts(logits, "top1")
    assert top1.expert_index.tolist() == [[0]]
    assert torch.allclose(top1.gates, logits.softmax(-1)[:, :1])
    top2 = select_experts(logits, "topk", top_k=2)
    assert top2.expert_index.tolist() == [[0, 1]]
    assert torch.allclose(top2.gates.sum(-1), torch.ones(1))
    soft = select_experts(logits, "soft")
    assert soft.expert_index.tolist() == [[0, 1, 2, 3]]


def test_router_softmax_is_float32_under_half_inputs():
    router = Router(8, 4).to(torch.bfloat16)
    out = router(torch.randn(3, 8, dtype=torch.bfloat16))
    assert out.logits.dtype == torch.float32 and out.probs.dtype == torch.float32


def test_jitter_only_in_training():
    torch.manual_seed(0)
    router = Router(8, 4, jitter=0.5)
    x = torch.randn(16, 8)
    router.eval()
    assert torch.equal(router(x).logits, router(x).logits)
    router.train()
    assert not torch.equal(router(x).logits, router(x).logits)


@pytest.mark.parametrize("kwargs,match", [({"gating": "best"}, "gating"), ({"top_k": 9, "gating": "topk"}, "top_k"),
                                          ({"jitter": -1.0}, "jitter")])
def test_router_validates_arguments(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        Router(8, 4, **kwargs)


def test_balance_loss_is_one_when_uniform_and_larger_when_collapsed():
    probs = torch.full((8, 4), 0.25)
    index = torch.arange(8).remainder(4).unsqueeze(1)
    assert math.isclose(float(load_balance_loss(probs, index)), 1.0, rel_tol=1e-6)
    collapsed = F.one_hot(torch.zeros(8, dtype=torch.long), 4).float() * 0.97 + 0.01
    assert float(load_balance_loss(collapsed, torch.zeros(8, 1, dtype=torch.long))) > 3.5


def test_router_ce_is_on_logits_not_probabilities():
    logits = torch.randn(6, 4) * 3
    labels = torch.tensor([0, 1, 2, 3, 0, -100])
    expected = F.cross_entropy(logits, labels, ignore_index=-100)
    assert torch.allclose(router_ce_loss(logits, labels), expected)
    double_softmax = F.cross_entropy(logits.softmax(-1), labels, ignore_index=-100)
    assert not torch.allclose(router_ce_loss(logits, labels), double_softmax)
    assert float(router_ce_loss(logits, torch.full((6,), -100))) == 0.0


def test_distillation_trains_the_student_towards_the_teachers_choice():
    torch.manual_seed(0)
    teacher = torch.randn(32, 5)
    student = torch.zeros(32, 5, requires_grad=True)
    opt = torch.optim.SGD([student], lr=1.0)
    for _ in range(50):
        opt.zero_grad()
        router_distillation_loss(student, teacher).backward()
        opt.step()
    assert torch.equal(student.argmax(-1), teacher.argmax(-1))
    assert teacher.grad is None
    soft = router_distillation_loss(teacher.clone(), teacher, soft=True)
    assert abs(float(soft)) < 1e-6


def test_z_loss_and_named_aux_losses():
    logits = torch.randn(10, 3)
    assert torch.allclose(router_z_loss(logits), torch.logsumexp(logits, -1).pow(2).mean())
    route = select_experts(logits, "top1")
    teacher = select_experts(torch.randn(10, 3), "top1")
    losses = router_aux_losses(route, labels=torch.zeros(10, dtype=torch.long), teacher=teacher,
                               balance_weight=0.1, z_weight=0.001, ce_weight=1.0, distill_weight=1.0)
    assert set(losses) == {"balance_loss", "z_loss", "router_ce_loss", "distill_loss"}
    assert set(router_aux_losses(route, balance_weight=0.1)) == {"balance_loss"}


def test_confusion_matrix_and_agreement():
    labels = np.array([0, 0, 1, 1, 2, 2, -1])
    experts = np.array([2, 2, 0, 0, 1, 0, 1])
    matrix = confusion_matrix(labels, experts, 3, 3)
    assert matrix.tolist() == [[0, 0, 2], [2, 0, 0], [1, 1, 0]]
    accuracy, mapping = routing_agreement(matrix)
    assert accuracy == pytest.approx(5 / 6) and mapping == {0: 2, 1: 0, 2: 1}
    assert routing_agreement(matrix, match="identity")[0] == pytest.approx(0.0)


def test_routing_scalars_and_tracker():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    scalars = routing_scalars(probs, probs.argmax(-1, keepdim=True))
    assert scalars["route/usage_0"] == pytest.approx(2 / 3) and scalars["route/usage_1"] == pytest.approx(1 / 3)
    tracker = RoutingTracker(2, num_labels=2)
    tracker.update(probs, probs.argmax(-1, keepdim=True), torch.tensor([1, 1, 0]))
    summary = tracker.summary()
    assert summary["agreement"] == pytest.approx(1.0) and summary["count"] == 3


def test_straight_through_gate_is_exactly_one_with_the_probability_gradient():
    torch.manual_seed(0)
    logits = (torch.randn(64, 6) * 3).requires_grad_()
    straight = select_experts(logits, "top1", gate="straight_through")
    switch = select_experts(logits, "top1", gate="probability")
    assert straight.gates.dtype == torch.float32
    assert torch.equal(straight.gates, torch.ones(64, 1))  # exactly 1.0, not merely close
    assert torch.equal(straight.expert_index, switch.expert_index)
    upstream = torch.randn(64, 1)
    (grad_straight,) = torch.autograd.grad((straight.gates * upstream).sum(), logits)
    (grad_switch,) = torch.autograd.grad((switch.gates * upstream).sum(), logits)
    assert grad_straight.abs().sum() > 0
    assert torch.allclose(grad_straight, grad_switch, atol=1e-7)


def test_probability_gate_is_the_default_and_the_switch_gate():
    logits = torch.tensor([[0.5, 2.0, -1.0], [3.0, 0.0, 0.0]])
    for out in (select_experts(logits, "top1"), Router(3, 3).eval()(torch.zeros(2, 3))):
        assert torch.allclose(out.gates, out.probs.max(dim=-1, keepdim=True).values)
    assert Router(8, 4, gate="straight_through").gate == "straight_through"


@pytest.mark.parametrize("kwargs,match", [({"gate": "detached"}, "gate"),
                                          ({"gate": "straight_through", "gating": "topk"}, "gating='top1'"),
                                          ({"gate": "straight_through", "gating": "soft"}, "gating='top1'")])
def test_router_validates_the_gate(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        Router(8, 4, **kwargs)
