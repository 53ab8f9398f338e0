"""Optional task hooks (validate, param_groups, export), the schedule, and data-loading workers."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from testkit.train import BranchNet, ToyDataset, ToyTask, train_args

from medmoe.train import run_training
from medmoe.train.logs import read_metrics
from medmoe.train.optim import build_optimizer, warmup_cosine


class ValidatingTask(ToyTask):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.validate_calls: list[tuple[str, bool, bool]] = []
        self.exported_type: str | None = None

    def validate(self, model):
        self.validate_calls.append((type(model).__name__, model.training, torch.is_grad_enabled()))
        random.random()  # validation randomness must not shift training's random stream
        torch.rand(3)
        ds = ToyDataset(48, bad=())
        x, y, route = ds.x, ds.y, ds.route
        acc = (model(x, route).argmax(1) == y).float().mean().item()
        return {"accuracy": acc}

    def export(self, model, directory):
        self.exported_type = type(model).__name__
        directory.mkdir(parents=True)
        (directory / "exported.txt").write_text("ok")


@pytest.mark.timeout(60)
def test_validate_runs_on_the_bare_model_and_never_shifts_training(tmp_path):
    plain = ToyTask()
    flags = ("--steps", "6", "--ckpt-every", "100")
    run_training(plain, train_args(tmp_path / "plain", *flags))
    task = ValidatingTask()
    result = run_training(task, train_args(tmp_path / "val", *flags, "--eval-every", "4"))

    # Called at step 4 and at the end, in eval mode without autograd, on the bare module.
    assert task.validate_calls == [("BranchNet", False, False)] * 2
    rows = read_metrics(tmp_path / "val" / "metrics.jsonl")
    val_rows = [r for r in rows if "val/accuracy" in r]
    assert [r["step"] for r in val_rows] == [4, 6]
    assert result.validation == {"accuracy": val_rows[-1]["val/accuracy"]}
    assert json.loads((tmp_path / "val" / "summary.json").read_text())["validation"] == result.validation
    # Same training losses with and without validation in between.
    train_losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert train_losses == [r["train/loss"] for r in read_metrics(tmp_path / "plain" / "metrics.jsonl")]
    # The task's own export was used, with the bare module.
    assert task.exported_type == "BranchNet" and (tmp_path / "val" / "model" / "exported.txt").is_file()


@pytest.mark.timeout(60)
def test_data_loading_workers_give_the_same_batches(tmp_path):
    # 14 steps of 4 out of 48 samples: the second epoch's augmentation must reach the workers too.
    run_training(ToyTask(), train_args(tmp_path / "w0", "--steps", "14", "--workers", "0"))
    run_training(ToyTask(), train_args(tmp_path / "w2", "--steps", "14", "--workers", "2"))
    loss = [[r["train/loss"] for r in read_metrics(tmp_path / d / "metrics.jsonl")] for d in ("w0", "w2")]
    assert loss[0] == loss[1]


def test_warmup_cosine_schedule():
    f = warmup_cosine(steps=110, warmup_steps=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5) and f(110) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert warmup_cosine(5, 0)(0) == 1.0 and math.isclose(warmup_cosine(5, 0)(5), 0.0, abs_tol=1e-12)


def test_param_groups_from_the_task_or_the_default_split():
    model = BranchNet()

    class Custom:
        def param_groups(self, m):
            return [{"params": list(m.trunk.parameters()), "lr": 1e-5}, {"params": list(m.branches.parameters())}]

    opt = build_optimizer(model, Custom(), lr=1e-3, weight_decay=0.1, device=torch.device("cpu"))
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 1e-3]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.1]

    opt = build_optimizer(model, object(), lr=1e-3, weight_decay=0.1, device=torch.device("cpu"))
    decayed, plain = opt.param_groups
    assert all(p.ndim == 2 for p in decayed["params"]) and decayed["weight_decay"] == 0.1
    assert all(p.ndim == 1 for p in plain["params"]) and plain["weight_decay"] == 0.0
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())
