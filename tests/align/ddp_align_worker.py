"""Run by test_align_ddp.py under torchrun: the global contrastive loss of a tiny MedMoE under 2-process DDP.

Each rank encodes its half of a fixed global batch; the loss (gathered over ranks) and the DDP-averaged
gradients are written to OUT_DIR/rank{r}.pt for the test to compare with one process on the whole batch.
"""

import os
import sys

import torch
import torch.distributed as dist
from testkit.align import ddp_batch, ddp_model
from torch.nn.parallel import DistributedDataParallel

from medmoe.train.distributed import close_process_group


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = ddp_model()
    images, reports = ddp_batch()
    per = images.shape[0] // world
    mine = slice(rank * per, (rank + 1) * per)
    wrapped = DistributedDataParallel(model, find_unused_parameters=True)
    out = wrapped(images[mine], reports[mine], return_loss=True)
    out["global_loss"].backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    torch.save({"loss": out["global_loss"].detach(), "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    del wrapped, out, model  # DDP's reducer must go before the group does
    close_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
