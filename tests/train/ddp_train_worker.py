"""Run by test_train_ddp.py under ``torchrun --nproc_per_node 2``: the trainer with 2 gloo ranks.

Writes ``rank{R}.json`` into OUT_DIR with what the test checks; exits non-zero on a failed check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from testkit.train import ToyTask

from medmoe.distributed import gather_with_grad
from medmoe.train import TrainingInterrupted, add_training_arguments, is_main, run_training
from medmoe.train.distributed import close_process_group

BAD = (3, 17, 25, 40, 44)


def params_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_gather(rank: int) -> None:
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    g = gather_with_grad(x)
    expected = torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)])
    assert torch.equal(g.detach(), expected), g
    weights = torch.arange(12.0).view(4, 3)
    (g * weights).sum().backward()
    assert torch.equal(x.grad, weights[2 * rank : 2 * rank + 2]), x.grad


def train_args(out: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    return parser.parse_args(
        ["--out", str(out), "--device", "cpu", "--workers", "0", "--no-progress", "--batch-size", "4",
         "--accum-steps", "2", "--steps", "10", "--ckpt-every", "3", "--log-every", "1", "--lr", "3e-2",
         "--warmup-steps", "2", *extra]
    )


def main(out_dir: str) -> None:
    out = Path(out_dir)
    dist.init_process_group("gloo")  # run_training reuses a process group that already exists
    rank = dist.get_rank()
    check_gather(rank)

    task = ToyTask(n=48, bad=BAD, drop_branch_on_rank=1)
    torch.manual_seed(0)
    initial = params_digest(task.build_model())
    result = run_training(task, train_args(out / "full"))

    # Rank 0 alone receives SIGTERM during step 5; both ranks must stop after that step, checkpointed.
    stopped = ToyTask(n=48, bad=BAD, drop_branch_on_rank=1, sigterm_at_call=9 if rank == 0 else None)
    try:
        run_training(stopped, train_args(out / "resumed"))
        raise AssertionError("the run was not interrupted")
    except TrainingInterrupted as err:
        interrupted_at = err.step
    resumed_task = ToyTask(n=48, bad=BAD, drop_branch_on_rank=1)
    resumed = run_training(resumed_task, train_args(out / "resumed", "--resume", "latest"))

    report = {
        "rank": rank,
        "initial": initial,
        "final": params_digest(task.model),
        "resumed_final": params_digest(resumed_task.model),
        "bad_seen": len(task.bad_seen),
        "result_bad": result.bad_samples,
        "epoch0_indices": [i for e, i in task.indices_seen if e == 0],
        "branches_used": task.branches_used,
        "interrupted_at": interrupted_at,
        "resumed_from": str(resumed.resumed_from),
    }
    del task, stopped, resumed_task  # their models were DDP-wrapped: the reducers go before the group
    close_process_group()
    report["is_main_after_teardown"] = is_main()  # what a CLI handler asks once run_training returned
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
