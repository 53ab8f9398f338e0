import pytest
import torch
from torch import nn

from medmoe.errors import InvalidInputError
from medmoe.moe import MoELayer, Router, dense_dispatch, sparse_dispatch


def mlp_experts(k: int, width: int = 16) -> list[nn.Module]:
    return [nn.Sequential(nn.Linear(width, 32), nn.GELU(), nn.Linear(32, width)) for _ in range(k)]


class PyramidExpert(nn.Module):
    """Consumes a whole two-level pyramid per sample, as a MedMoE expert does."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 1)
        self.b = nn.Conv2d(6, 8, 1)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.a(levels[0]) + nn.functional.interpolate(self.b(levels[1]), size=levels[0].shape[-2:])


@pytest.mark.parametrize("gating,top_k", [("top1", 1), ("topk", 2), ("soft", 0)])
def test_sparse_matches_dense_on_tokens(gating, top_k):
    torch.manual_seed(0)
    experts = mlp_experts(6)
    route = Router(8, 6, gating=gating, top_k=max(top_k, 1))(torch.randn(40, 8))
    x = torch.randn(40, 16)
    sparse = sparse_dispatch(experts, x, route.expert_index, route.gates)
    dense = dense_dispatch(experts, x, route.expert_index, route.gates)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gating", ["top1", "topk", "soft"])
def test_sparse_matches_dense_on_whole_samples(gating):
    torch.manual_seed(1)
    experts = [PyramidExpert() for _ in range(4)]
    levels = [torch.randn(10, 4, 8, 8), torch.randn(10, 6, 4, 4)]
    route = Router(5, 4, gating=gating)(torch.randn(10, 5))
    sparse = sparse_dispatch(experts, levels, route.expert_index, route.gates)
    dense = dense_dispatch(experts, levels, route.expert_index, route.gates)
    assert sparse.shape == (10, 8, 8, 8)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)


def test_gradients_agree_between_sparse_and_dense():
    torch.manual_seed(2)
    experts = mlp_experts(4)
    router = Router(8, 4, gating="topk", top_k=2)
    x, c = torch.randn(12, 16), torch.randn(12, 8)
    grads = []
    for fn in (sparse_dispatch, dense_dispatch):
        for p in [*router.parameters(), *(q for e in experts for q in e.parameters())]:
            p.grad = None
        route = router(c)
        fn(experts, x, route.expert_index, route.gates).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in router.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_single_expert_equals_the_plain_expert():
    torch.manual_seed(3)
    expert = mlp_experts(1)[0]
    layer = MoELayer([expert])
    x = torch.randn(7, 16)
    out = layer(x, route=Router(8, 1)(torch.randn(7, 8)))
    torch.testing.assert_close(out.output, expert(x))
    assert torch.all(out.route.gates == 1)


def test_router_learns_from_the_task_loss_through_the_gate():
    torch.manual_seed(4)
    layer, router = MoELayer(mlp_experts(3)), Router(8, 3, gating="top1")
    out = layer(torch.randn(9, 16), route=router(torch.randn(9, 8)))
    out.output.sum().backward()
    grad = router.net.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_experts_nobody_chose_are_not_executed():
    torch.manual_seed(5)
    experts = mlp_experts(6)
    calls = [0] * 6
    for i, e in enumerate(experts):
        e.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    index = torch.tensor([[0], [2], [2], [0], [5]])
    gates = torch.ones(5, 1)
    sparse_dispatch(experts, torch.randn(5, 16), index, gates)
    assert calls == [1, 0, 1, 0, 0, 1]


def test_bad_routing_shapes_are_rejected():
    experts = mlp_experts(2)
    with pytest.raises(InvalidInputError, match="expert_index"):
        sparse_dispatch(experts, torch.randn(4, 16), torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1))
    with pytest.raises(InvalidInputError, match="out of range"):
        sparse_dispatch(experts, torch.randn(2, 16), torch.tensor([[0], [2]]), torch.ones(2, 1))
    with pytest.raises(InvalidInputError, match="batch dimension"):
        sparse_dispatch(experts, [torch.randn(2, 4), torch.randn(3, 4)], torch.zeros(2, 1, dtype=torch.long),
                        torch.ones(2, 1))


@pytest.mark.parametrize("index", [[[0], [0], [0]], [[0], [1], [0]]])
def test_inference_dispatch_never_overwrites_the_input(index):
    """An identity expert returns its input; scaling it in place under no_grad would corrupt the caller's tensor."""
    x = torch.randn(3, 4)
    before = x.clone()
    expert_index = torch.tensor(index)
    gates = torch.full((3, 1), 0.5)
    with torch.inference_mode():
        out = sparse_dispatch([nn.Identity(), nn.Identity()], x, expert_index, gates)
    assert torch.equal(x, before)
    assert torch.allclose(out, before * 0.5)


def test_tied_experts_run_expert_zero_with_the_router_gates_then_upcycle_copies_it():
    torch.manual_seed(0)
    layer, router = MoELayer(mlp_experts(4)), Router(8, 4)
    x, cond = torch.randn(24, 16), torch.randn(24, 8)
    layer.tie_experts()
    out = layer(x, route=router(cond))
    assert len(set(out.route.expert_index[:, 0].tolist())) > 1  # the router still spreads the rows
    assert torch.allclose(out.output, layer.experts[0](x) * out.route.gates, atol=1e-6)
    out.output.sum().backward()
    assert all(p.grad is None for e in layer.experts[1:] for p in e.parameters())  # only expert 0 learns

    layer.upcycle()
    assert not layer.tied
    reference = layer.experts[0].state_dict()
    for expert in layer.experts[1:]:
        assert all(torch.equal(v, reference[k]) for k, v in expert.state_dict().items())
    with torch.no_grad():
        layer.experts[1][0].weight.add_(1.0)  # copies, not shared storage
    assert not torch.equal(layer.experts[1][0].weight, layer.experts[0][0].weight)


def test_sparse_dispatch_reads_the_device_once(monkeypatch):
    """Each read of a device value stalls a CUDA stream: the routing must be read back in a single one."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    host_reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: host_reads.append(self.shape) or tolist(self))
    torch.manual_seed(6)
    experts = mlp_experts(6)
    route = Router(8, 6, gating="topk", top_k=2)(torch.randn(12, 8))
    with torch.no_grad(), RecordOps() as recorded:
        out = sparse_dispatch(experts, torch.randn(12, 16), route.expert_index, route.gates)
    # _local_scalar_dense is what .item(), int() and bool() of a tensor run.
    syncing = {"nonzero", "_unique2", "unique_dim", "bincount", "masked_select", "_local_scalar_dense"}
    assert not syncing & set(recorded.ops), sorted(syncing & set(recorded.ops))
    assert host_reads == [torch.Size([6])]  # the per-expert counts
    assert out.shape == (12, 16)
