"""The trainer shared by MedMoE alignment and MoME segmentation.

A command builds a :class:`Task` (see :mod:`medmoe.train.task` for the full contract) and calls::

    parser = sub.add_parser("train")        # a medmoe.settings.SettingsParser reads --config YAML
    add_training_arguments(parser)          # a flag per TrainConfig field (--out, --steps, --lr, ...), --config
    ...
    result = run_training(task, args)       # -> TrainResult

The same code runs in one process and under ``torchrun --nproc_per_node N`` (DDP; gloo on CPU,
nccl on CUDA). Only rank 0 logs and writes files. Library code never imports this package.
"""

from medmoe.lazy_exports import lazy_getattr

# Imported on first use: the command line reads the trainer's flags without loading torch.
_EXPORTS = {
    **dict.fromkeys(("add_training_arguments", "resolved_config"), "medmoe.train.args"),
    **dict.fromkeys(("find_latest_checkpoint", "load_checkpoint"), "medmoe.train.checkpoint"),
    "TrainConfig": "medmoe.train.config",
    **dict.fromkeys(("all_reduce_sum", "is_main", "unwrap_model"), "medmoe.train.distributed"),
    "TrainingInterrupted": "medmoe.train.interrupt",
    **dict.fromkeys(("TrainResult", "run_training"), "medmoe.train.loop"),
    "NonFiniteLossError": "medmoe.train.outputs",
    **dict.fromkeys(("BadSampleLike", "Task", "TaskBase", "default_param_groups", "export_model"),
                    "medmoe.train.task"),
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
