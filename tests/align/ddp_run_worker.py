"""torchrun worker of test_ddp_runs.py: the tiny MedMoE trained from shards by 2 gloo ranks.

argv: MODE OUT_DIR. Modes:
- ``validate``: train 4 steps on OUT_DIR/train, validating on OUT_DIR/val (the trainer writes summary.json);
- ``bad-shard``: train 10 steps on OUT_DIR/train (2 shards of 12 samples, 6 batches per rank and epoch); at step 3
  shard 1 is overwritten with bytes that are not a tar file, so the rank that reads it in epoch 1 (step 7) finds no
  readable sample. Every rank writes OUT_DIR/rank{R}.json with the error it stopped with.
"""

import json
import sys
from pathlib import Path

from testkit.align import TINY

from medmoe.align.task import AlignTask, AlignTaskConfig
from medmoe.distributed import rank
from medmoe.errors import DataLoadError
from medmoe.train import TrainConfig, run_training


class ShardBreakingTask(AlignTask):
    """Overwrites a training shard at step 3 (a file damaged on shared storage while the run goes on)."""

    def before_step(self, model, step):
        super().before_step(model, step)
        if step == 3 and rank() == 0:
            (Path(self.config.data) / "shard-000001.tar").write_bytes(b"not a tar file at all\n" * 64)


mode, out = sys.argv[1], Path(sys.argv[2])
common = dict(batch_size=2, lr=2e-3, warmup_steps=1, device="cpu", workers=0, progress=False, amp="off",
              dist_timeout=3.0)
if mode == "validate":
    config = AlignTaskConfig(data=str(out / "train"), model="medmoe-nano", overrides=dict(TINY), val_data=str(out / "val"),
                             val_split="train", val_max=1000)
    run_training(AlignTask(config), TrainConfig(out=out / "run", steps=4, ckpt_every=1000, **common))
else:
    config = AlignTaskConfig(data=str(out / "train"), model="medmoe-nano", overrides=dict(TINY))
    try:
        run_training(ShardBreakingTask(config), TrainConfig(out=out / "run", steps=10, ckpt_every=1000, **common))
        outcome = {"error": None}
    except DataLoadError as err:
        outcome = {"error": str(err)}
    (out / f"rank{rank()}.json").write_text(json.dumps(outcome))
