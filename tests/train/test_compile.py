"""``--compile``: in-place torch.compile of the model's compile targets, a trial step, and the eager fallback.

These tests use Dynamo with the ``eager`` backend (the FX graph runs op by op), which exercises tracing,
graph breaks and the trainer's plumbing in seconds on a CPU; ``inductor``'s code generation is not run here.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch._dynamo
from testkit.train import ToyTask, train_args
from torch import nn

import medmoe
from medmoe.errors import InvalidInputError
from medmoe.train import run_training
from medmoe.train.compile import compile_in_place, compile_targets, is_compiled, uncompile
from medmoe.train.logs import read_metrics

FAILING = "medmoe_test_failing_compiler"


@pytest.fixture(scope="module")
def failing_backend() -> str:
    """A registered backend that fails as a compiler does when, e.g., there is no C compiler."""

    def no_compiler(graph, example_inputs):
        raise RuntimeError("simulated failure: no working C compiler")

    if FAILING not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(compiler_fn=no_compiler, name=FAILING)
    return FAILING


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def losses(run_dir) -> list[float]:
    return [row["train/loss"] for row in read_metrics(run_dir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eager")
    run_training(ToyTask(), train_args(out, "--steps", "4"))
    return out


@pytest.mark.timeout(120)
def test_compiled_run_traces_the_model_and_trains_like_eager(eager_run, tmp_path):
    task = ToyTask()
    run_training(task, train_args(tmp_path, "--steps", "4", "--compile", "--compile-backend", "eager"))
    assert is_compiled(task.model)  # ToyTask's model declares no targets: compiled whole
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["compile"] == "eager"
    # The trial step left no trace: same random streams, same weights, same losses as the eager run.
    torch.testing.assert_close(losses(tmp_path), losses(eager_run), rtol=1e-6, atol=1e-7)


@pytest.mark.timeout(120)
def test_a_backend_that_fails_falls_back_to_eager_and_says_so(eager_run, failing_backend, tmp_path, caplog):
    task = ToyTask()
    with caplog.at_level(logging.WARNING, logger="medmoe.train.loop"):
        result = run_training(task, train_args(tmp_path, "--steps", "4", "--compile", "--compile-backend",
                                               failing_backend))
    assert result.steps == 4
    assert not is_compiled(task.model)
    warning = [r.getMessage() for r in caplog.records if "--compile" in r.getMessage()]
    assert warning and failing_backend in warning[0] and "no working C compiler" in warning[0]
    assert "training without torch.compile" in warning[0]
    assert json.loads((tmp_path / "summary.json").read_text())["compile"] is None
    torch.testing.assert_close(losses(tmp_path), losses(eager_run), rtol=1e-6, atol=1e-7)


def test_unknown_backend_is_rejected_by_name(tmp_path):
    with pytest.raises(InvalidInputError, match="'no-such-backend'.*inductor"):
        run_training(ToyTask(), train_args(tmp_path, "--steps", "1", "--compile", "--compile-backend",
                                           "no-such-backend"))


class Trunk(nn.Module):
    # A module of its own: Dynamo does not trace a bare torch.nn layer compiled on its own.
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class Declared(nn.Module):
    def __init__(self, targets: str = "trunk") -> None:
        super().__init__()
        self.trunk = Trunk()
        self.head = nn.Linear(4, 2)
        self._targets = targets

    @property
    def compile_targets(self) -> list[nn.Module]:
        return {"trunk": [self.trunk], "none": [], "foreign": [nn.Linear(1, 1)]}[self._targets]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def test_only_the_declared_targets_are_compiled_and_uncompile_restores_eager():
    model = Declared()
    targets = compile_in_place(model, "eager")
    assert targets == [model.trunk]
    assert is_compiled(model.trunk) and not is_compiled(model) and not is_compiled(model.head)
    assert list(model.state_dict()) == ["trunk.linear.weight", "trunk.linear.bias", "head.weight",
                                         "head.bias"]
    model(torch.randn(3, 4)).sum().backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    uncompile(targets)
    assert not is_compiled(model.trunk)


@pytest.mark.parametrize("targets", ["none", "foreign"])
def test_bad_declared_targets_are_rejected(targets):
    with pytest.raises(InvalidInputError, match="compile_targets"):
        compile_targets(Declared(targets))


@pytest.mark.timeout(240)
def test_medmoe_compile_targets_give_the_eager_loss_and_gradients():
    overrides = {"text": {"model": "tiny-bert", "max_length": 24, "freeze": "all"}, "num_experts": 3,
                 "backbone": {"image_size": 64, "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                              "window_size": 2, "drop_path_rate": 0.0}, "local_dim": 32, "embed_dim": 24}
    reports = ["Chest radiograph: mild cardiomegaly.", "CT abdomen: 4 mm nodule.", "MRI brain: no lesion."]
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = medmoe.create_model("medmoe-nano", **overrides).train()
        if compiled:
            targets = compile_in_place(model, "eager")
            assert targets[0] is model.backbone.swin and len(targets) == 1 + model.num_experts
        torch.manual_seed(1)
        loss = model(images, reports, return_loss=True)["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (plain_loss, plain_grads), (comp_loss, comp_grads) = results
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    torch.testing.assert_close(comp_loss, plain_loss)
    assert comp_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(comp_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.timeout(60)
def test_data_wait_is_logged_per_step_and_summed_in_the_summary(tmp_path):
    run_training(ToyTask(), train_args(tmp_path, "--steps", "5", "--accum-steps", "2"))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    waits = [row["train/data_wait_s"] for row in rows]
    assert len(waits) == 5 and all(w >= 0 for w in waits)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data_wait_s"] == pytest.approx(sum(waits), abs=2e-3)
    assert 0 <= summary["data_wait_share"] <= 1
    assert summary["compile"] is None
