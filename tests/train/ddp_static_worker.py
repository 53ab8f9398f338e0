"""Run by test_train_find_unused.py under ``torchrun --nproc_per_node 2``: a static model, trained with DDP's
``find_unused_parameters`` off because the model declares that every step uses all of its parameters.

Writes ``rank{R}.json`` into OUT_DIR with what the test checks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from ddp_train_worker import params_digest
from testkit.train import DIM, HIDDEN, ToyTask, train_args
from torch import nn

from medmoe.train import run_training
from medmoe.train.distributed import close_process_group


class StaticNet(nn.Module):
    """Trunk and head, both used for every sample: nothing can be left without a gradient."""

    may_leave_parameters_unused = False

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU())
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, x: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class StaticTask(ToyTask):
    def __init__(self) -> None:
        super().__init__(n=48, bad=())
        self.find_unused: list[object] = []

    def build_model(self) -> nn.Module:
        self.model = StaticNet()
        return self.model

    def training_step(self, model, batch):
        # `model` is the DDP wrapper here: record what the trainer configured it with.
        self.find_unused.append(getattr(model, "find_unused_parameters", "not wrapped"))
        return super().training_step(model, batch)


def main(out_dir: str) -> None:
    out = Path(out_dir)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    task = StaticTask()
    torch.manual_seed(0)
    initial = params_digest(task.build_model())
    result = run_training(task, train_args(out / "run", "--steps", "6", "--accum-steps", "2"))
    report = {
        "rank": rank,
        "initial": initial,
        "final": params_digest(task.model),
        "find_unused": sorted({str(v) for v in task.find_unused}),
        "steps": result.steps,
        "loss": result.final_losses["loss"],
    }
    del task
    close_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
