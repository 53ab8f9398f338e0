"""torchrun worker: train the tiny MedMoE from shards for a few steps; every rank writes the sample
indices it trained on and its final parameters (argv: shard source, output folder, steps)."""

import json
import sys
from pathlib import Path

import torch
from testkit.align import TINY

from medmoe.align.task import AlignTask, AlignTaskConfig
from medmoe.distributed import rank
from medmoe.train import TrainConfig, run_training


class RecordingTask(AlignTask):
    seen: list[int] = []

    def training_step(self, model, batch):
        self.seen += batch["index"].tolist()
        return super().training_step(model, batch)

    def validate(self, model):  # runs on every rank after the last step
        out = Path(sys.argv[2])
        # parameters, not buffers: DDP broadcasts BatchNorm statistics at the start of each forward, so after
        # the last step every rank holds the statistics of its own last batch
        torch.save({k: v.detach().clone() for k, v in model.named_parameters()}, out / f"params{rank()}.pt")
        (out / f"seen{rank()}.json").write_text(json.dumps(self.seen))
        return {}


source, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
task = RecordingTask(AlignTaskConfig(data=source, model="medmoe-nano", overrides=dict(TINY), seed=0))
run_training(task, TrainConfig(out=out / "run", steps=steps, batch_size=2, lr=2e-3, warmup_steps=1, device="cpu",
                               workers=0, progress=False, amp="off", ckpt_every=1000))
