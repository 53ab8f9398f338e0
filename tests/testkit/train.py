"""A tiny but real training task for the trainer's tests (also imported by the torchrun script).

Generated data: 8-D points whose label depends on a per-item route (0, 1, 2); the model has a shared
trunk with dropout and three branches, each run only on the samples routed to it (like MoE experts).
Per-item augmentation noise comes from (seed, epoch, index) as the dataset contract asks; a few items
are "unreadable" and come back as bad samples.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from medmoe.distributed import rank
from medmoe.train import TaskBase, add_training_arguments

DIM, HIDDEN, BRANCHES = 8, 16, 3


@dataclass(frozen=True)
class Bad:
    path: str
    reason: str


class ToyDataset(Dataset):
    def __init__(self, n: int = 48, bad: tuple[int, ...] = (3, 17), seed: int = 0) -> None:
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, DIM, generator=g)
        self.route = torch.randint(0, BRANCHES, (n,), generator=g)
        w = torch.randn(BRANCHES, DIM, generator=g)
        self.y = ((self.x * w[self.route]).sum(1) > 0).long()
        self.bad = set(bad)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        if index in self.bad:
            return Bad(path=f"/data/toy/item_{index:03d}.npy", reason="truncated file")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        noise = torch.from_numpy(rng.normal(0.0, 0.05, DIM).astype(np.float32))
        return {"x": self.x[index] + noise, "y": self.y[index], "route": self.route[index], "index": index,
                "epoch": self.epoch}


class BranchNet(nn.Module):
    """Shared trunk + three branches; a branch no sample chose takes no part in the graph."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU(), nn.Dropout(dropout))
        self.branches = nn.ModuleList(nn.Linear(HIDDEN, 2) for _ in range(BRANCHES))

    def forward(self, x: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        out = h.new_zeros(x.shape[0], 2)
        for b in torch.unique(route).tolist():
            mask = route == b
            out = out.index_put((mask,), self.branches[b](h[mask]))
        return out


class ToyTask(TaskBase):
    """Options make it misbehave on purpose at the ``n``-th ``training_step`` call (1-based)."""

    def __init__(
        self,
        *,
        n: int = 48,
        bad: tuple[int, ...] = (3, 17),
        crash_at_call: int | None = None,
        sigterm_at_call: int | None = None,
        nan_at_calls: tuple[int, ...] = (),
        nan_always: bool = False,
        drop_branch_on_rank: int | None = None,
        unusable: tuple[int, ...] = (),
    ) -> None:
        self.n, self.bad = n, bad
        self.crash_at_call = crash_at_call
        self.sigterm_at_call = sigterm_at_call
        self.nan_at_calls = set(nan_at_calls)
        self.nan_always = nan_always
        self.drop_branch_on_rank = drop_branch_on_rank
        self.unusable = set(unusable)
        self.calls = 0
        self.bad_seen: list[Bad] = []
        self.indices_seen: list[tuple[int, int]] = []  # (epoch, index) of every good sample trained on
        self.branches_used: list[list[int]] = []

    def build_model(self) -> nn.Module:
        self.model = BranchNet()  # kept so that tests can inspect each rank's weights after training
        return self.model

    def train_dataset(self) -> Dataset:
        return ToyDataset(self.n, self.bad)

    def collate(self, samples):
        good = [s for s in samples if isinstance(s, dict)]
        bad = [s for s in samples if not isinstance(s, dict)]
        self.bad_seen.extend(bad)
        return {
            "x": torch.stack([s["x"] for s in good]),
            "y": torch.stack([s["y"] for s in good]),
            "route": torch.stack([s["route"] for s in good]),
            "index": [s["index"] for s in good],
            "epoch": [s["epoch"] for s in good],
            "bad": bad,
        }

    def check_batch(self, batch):
        """A batch holding an item of ``unusable`` cannot be trained on."""
        hit = sorted(self.unusable.intersection(batch["index"]))
        return f"items {hit} are marked unusable" if hit else None

    def training_step(self, model, batch):
        self.calls += 1
        if self.calls == self.crash_at_call:
            raise RuntimeError("simulated crash")
        if self.calls == self.sigterm_at_call:
            os.kill(os.getpid(), signal.SIGTERM)
        route = batch["route"]
        if self.drop_branch_on_rank is not None and rank() == self.drop_branch_on_rank:
            route = route % (BRANCHES - 1)  # this rank never uses the last branch
        self.indices_seen.extend(zip(batch["epoch"], batch["index"]))
        self.branches_used.append(sorted(torch.unique(route).tolist()))
        logits = model(batch["x"], route)
        # Task-level randomness from the Python and NumPy global RNGs (restored on resume).
        jitter = 1.0 + 0.01 * (random.random() + float(np.random.rand()))
        ce = F.cross_entropy(logits, batch["y"]) * jitter
        if self.nan_always or self.calls in self.nan_at_calls:
            ce = ce * float("nan")
        usage = torch.bincount(route, minlength=BRANCHES).float() / len(route)
        return {"ce_loss": ce, "margin_loss": 0.01 * logits.pow(2).mean(), "usage": usage, "batch_size": len(route)}


def train_args(out, *extra: str) -> argparse.Namespace:
    """Parsed trainer flags for a quick CPU run of the toy task into ``out``."""
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    base = ["--out", str(out), "--device", "cpu", "--workers", "0", "--no-progress", "--batch-size", "4",
            "--lr", "3e-2", "--warmup-steps", "2", "--log-every", "1"]
    return parser.parse_args(base + list(extra))
