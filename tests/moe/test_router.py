import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medmoe.errors import InvalidInputError
from medmoe.moe import (
    MoELayer,
    Router,
    SoftUsage,
    confusion_matrix,
    expert_counts,
    expert_usage,
    load_balance_loss,
    route_agreement,
    router_ce_loss,
    router_distillation_loss,
    routing_agreement,
    routing_entropy,
    select_experts,
    soft_load_balance_loss,
)
from medmoe.train.host_reads import HostReadCounter


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


@pytest.mark.parametrize("hidden_dim", [0, 16])
def test_router_logits_under_bf16_autocast_are_the_float32_logits(hidden_dim):
    torch.manual_seed(0)
    router = Router(32, 6, hidden_dim=hidden_dim)
    x = torch.randn(10, 32)
    expected = router(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = router(x)
    assert got.logits.dtype == got.probs.dtype == torch.float32
    assert torch.allclose(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.expert_index, expected.expert_index)


def test_router_losses_and_usage_read_nothing_back_to_the_host():
    logits = torch.randn(8, 4, requires_grad=True)
    probs = logits.softmax(-1)
    index = logits.argmax(-1)
    with HostReadCounter() as reads:
        losses = [load_balance_loss(probs, index[:, None]), router_ce_loss(logits, torch.tensor([0, 1, -100] * 2 + [3, 2])),
                  router_ce_loss(logits, torch.full((8,), -100)), router_distillation_loss(logits, index)]
        usage = expert_usage(index, 4)
        torch.autograd.grad(sum(losses), logits)
    assert reads.total == 0, reads.calls
    assert torch.allclose(usage, torch.bincount(index, minlength=4).float() / 8)


def test_expert_counts_count_each_slot_once_and_skip_indices_out_of_range():
    index = torch.tensor([[0, 2], [2, 2], [5, -1], [1, 0]])
    assert expert_counts(index, 3).tolist() == [2, 1, 3]
    assert expert_counts(torch.zeros(0, 1, dtype=torch.long), 3).tolist() == [0, 0, 0]


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
    unlabelled = router_ce_loss(logits.requires_grad_(), torch.full((6,), -100))
    unlabelled.backward()  # 0 with the graph kept
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_distillation_trains_the_student_towards_the_route_taken():
    torch.manual_seed(0)
    teacher = torch.randn(32, 5, requires_grad=True)
    taken = teacher.argmax(-1)
    student = torch.zeros(32, 5, requires_grad=True)
    opt = torch.optim.SGD([student], lr=1.0)
    for _ in range(50):
        opt.zero_grad()
        router_distillation_loss(student, taken).backward()
        opt.step()
    assert torch.equal(student.argmax(-1), taken)
    assert teacher.grad is None
    assert torch.equal(router_distillation_loss(student, taken), F.cross_entropy(student.float(), taken))
    with pytest.raises(InvalidInputError, match="taken experts"):
        router_distillation_loss(student, taken[:3])


def test_soft_balance_loss_is_one_when_uniform_and_k_when_collapsed():
    uniform = torch.full((2, 3, 4, 5), 0.25)
    assert math.isclose(float(soft_load_balance_loss(SoftUsage(expert_dim=2).update(uniform).usage())), 1.0, rel_tol=1e-6)
    collapsed = F.one_hot(torch.zeros(2, 3, 5, dtype=torch.long), 4).permute(0, 1, 3, 2).float()
    assert float(soft_load_balance_loss(SoftUsage(expert_dim=2).update(collapsed).usage())) == 4.0
    with pytest.raises(InvalidInputError, match="usage"):
        soft_load_balance_loss(uniform)


def test_soft_balance_is_the_switch_loss_when_the_gates_are_one_hot():
    """With one-hot gates the soft usage equals the hard routing's fractions and mean probabilities."""
    index = torch.tensor([0, 2, 2, 1, 2, 0])
    gates = F.one_hot(index, 3).float()
    assert torch.equal(SoftUsage(expert_dim=1, chunk_dim=0).update(gates).usage(), expert_usage(index, 3))
    assert torch.allclose(soft_load_balance_loss(SoftUsage(expert_dim=1, chunk_dim=0).update(gates).usage()),
                          load_balance_loss(gates, index.unsqueeze(1)))


def test_soft_usage_over_chunks_equals_the_usage_of_the_whole():
    torch.manual_seed(0)
    gates = torch.randn(2, 3, 4, 10).softmax(dim=2)
    whole = gates.mean(dim=(0, 1, 3))
    meter = SoftUsage(expert_dim=2)
    for chunk in gates.split(3, dim=-1):
        meter.update(chunk)
    torch.testing.assert_close(meter.usage(), whole)
    leading = SoftUsage(expert_dim=2, chunk_dim=0)
    for chunk in gates.split(1, dim=0):
        leading.update(chunk)
    torch.testing.assert_close(leading.usage(), whole)
    with pytest.raises(InvalidInputError, match="before any update"):
        SoftUsage(expert_dim=2).usage()
    with pytest.raises(InvalidInputError, match="apart from chunk_dim"):
        SoftUsage(expert_dim=3).update(gates)


def test_usage_entropy_and_agreement_statistics():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    index = probs.argmax(-1, keepdim=True)
    assert expert_usage(index, 2).tolist() == pytest.approx([2 / 3, 1 / 3])
    assert expert_usage(index, 2, dtype=torch.float64).dtype == torch.float64
    assert expert_usage(torch.zeros(0, dtype=torch.long), 3).tolist() == [0.0, 0.0, 0.0]
    assert float(routing_entropy(torch.full((4, 3), 1 / 3))) == pytest.approx(math.log(3))
    assert float(route_agreement(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2]))) == 0.75
    with pytest.raises(InvalidInputError, match="differ in shape"):
        route_agreement(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))


def test_moe_layer_checks_the_route_width():
    layer = MoELayer([torch.nn.Linear(4, 4) for _ in range(3)])
    with pytest.raises(InvalidInputError, match="over 4 experts but the layer has 3"):
        layer(torch.randn(2, 4), route=Router(8, 4)(torch.randn(2, 8)))


def test_confusion_matrix_and_agreement():
    labels = np.array([0, 0, 1, 1, 2, 2, -1])
    experts = np.array([2, 2, 0, 0, 1, 0, 1])
    matrix = confusion_matrix(labels, experts, 3, 3)
    assert matrix.tolist() == [[0, 0, 2], [2, 0, 0], [1, 1, 0]]
    accuracy, mapping = routing_agreement(matrix)
    assert accuracy == pytest.approx(5 / 6) and mapping == {0: 2, 1: 0, 2: 1}
    assert routing_agreement(matrix, match="identity")[0] == pytest.approx(0.0)


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
