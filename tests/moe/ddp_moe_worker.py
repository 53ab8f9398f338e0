"""Run by test_ddp.py under torchrun: an MoE layer under DDP where one expert gets no sample in a step."""

import hashlib
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medmoe.moe import MoELayer, Router
from medmoe.train.distributed import close_process_group


class PlannedMoE(nn.Module):
    """Three experts behind a router whose choice is replaced by a fixed plan (its gates stay learned)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = MoELayer([nn.Linear(8, 8) for _ in range(3)])
        self.router = Router(4, 3)

    def forward(self, x: torch.Tensor, condition: torch.Tensor, index: torch.Tensor):
        route = self.router(condition)
        route.expert_index, route.gates = index, route.probs.gather(1, index)
        return self.layer(x, route=route)


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # identical initial weights on both ranks
    layer = PlannedMoE()
    model = DistributedDataParallel(layer, find_unused_parameters=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # Step 0: rank 0 uses experts {0, 1}, rank 1 only {0}; expert 2 idle everywhere.
    # Step 1: rank 0 uses {2}, rank 1 uses {1}; expert 0 idle everywhere.
    plans = [[[0, 1, 0, 1], [0, 0, 0, 0]], [[2, 2, 2, 2], [1, 1, 1, 1]]]
    gen = torch.Generator().manual_seed(100 + rank)
    for plan in plans:
        x, cond = torch.randn(4, 8, generator=gen), torch.randn(4, 4, generator=gen)
        out = model(x, cond, torch.tensor(plan[rank]).unsqueeze(1))
        opt.zero_grad()
        out.output.pow(2).mean().backward()
        opt.step()
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in layer.parameters())).hexdigest()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(digest)
    del model, opt, layer, out  # DDP's reducer must go before the group does
    close_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
