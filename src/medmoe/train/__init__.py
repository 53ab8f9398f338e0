"""The trainer shared by MedMoE alignment and MoME segmentation.

A command builds a :class:`Task` (see :mod:`medmoe.train.task` for the full contract) and calls::

    parser = sub.add_parser("train")
    add_training_arguments(parser)          # --out, --config, --steps, --lr, ..., --resume
    ...
    result = run_training(task, args)       # -> TrainResult

The same code runs in one process and under ``torchrun --nproc_per_node N`` (DDP; gloo on CPU,
nccl on CUDA). Only rank 0 logs and writes files. Library code never imports this package.
"""

from medmoe.train.args import add_training_arguments, resolved_config
from medmoe.train.checkpoint import find_latest_checkpoint, load_checkpoint
from medmoe.train.config import TrainConfig
from medmoe.train.distributed import all_reduce_sum, is_main, unwrap_model
from medmoe.train.interrupt import TrainingInterrupted
from medmoe.train.loop import TrainResult, run_training
from medmoe.train.outputs import NonFiniteLossError
from medmoe.train.task import BadSampleLike, Task, TaskBase, default_param_groups, export_model

__all__ = [
    "BadSampleLike",
    "NonFiniteLossError",
    "Task",
    "TaskBase",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "add_training_arguments",
    "all_reduce_sum",
    "default_param_groups",
    "export_model",
    "find_latest_checkpoint",
    "is_main",
    "load_checkpoint",
    "resolved_config",
    "run_training",
    "unwrap_model",
]
