"""torchrun worker of test_ddp.py: ``--compile`` of the tiny MedMoE under 2-rank DDP. Counts the graphs Dynamo
compiled through its DDP optimizer (which splits a graph at DDP's gradient buckets so that their all-reduce
overlaps the backward); writes ROOT/rank{R}.json."""

import json
import sys
from pathlib import Path

from testkit.align import TINY, args_for
from torch._dynamo.backends.distributed import DDPOptimizer

from medmoe.align.task import AlignTask, AlignTaskConfig
from medmoe.distributed import rank
from medmoe.train import run_training

calls = []
compile_fn = DDPOptimizer.compile_fn


def counting_compile_fn(self, gm, example_inputs):
    calls.append(len(list(gm.graph.nodes)))
    return compile_fn(self, gm, example_inputs)


DDPOptimizer.compile_fn = counting_compile_fn
root = Path(sys.argv[1])
task = AlignTask(AlignTaskConfig(data=str(root / "manifest.csv"), model="medmoe-nano", overrides=dict(TINY)))
run_training(task, args_for(root / "run", "--steps", "3", "--batch-size", "2", "--compile", "--compile-backend", "eager"))
(root / f"rank{rank()}.json").write_text(json.dumps({"ddp_optimizer_graphs": len(calls)}))
