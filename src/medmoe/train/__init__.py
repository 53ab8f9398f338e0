"""The trainer shared by MedMoE alignment and MoME segmentation.

A command builds a :class:`Task` (see :mod:`medmoe.train.task` for the full contract) and calls::

    parser = sub.add_parser("train")        # a medmoe.settings.SettingsParser reads --config YAML
    add_training_arguments(parser)          # a flag per TrainConfig field (--out, --steps, --lr, ...), --config
    ...
    result = run_training(task, args)       # -> TrainResult

The same code runs in one process and under ``torchrun --nproc_per_node N`` (DDP; gloo on CPU,
nccl on CUDA). Only rank 0 logs and writes files. Library code never imports this package.
"""

from medmoe.lazy_exports import lazy_package

# Imported on first use: the command line reads the trainer's flags without loading torch.
lazy_package(globals(), {
    ".args": "add_training_arguments resolved_config",
    ".checkpoint": "find_latest_checkpoint load_checkpoint",
    ".config": "TrainConfig",
    ".distributed": "all_reduce_sum is_main unwrap_model",
    ".interrupt": "TrainingInterrupted",
    ".loop": "TrainResult run_training",
    ".outputs": "NonFiniteLossError",
    ".task": "BadSampleLike Task TaskBase default_param_groups export_model",
})
