"""`medmoe seg`: MoME text-prompted CT segmentation; ``train`` here, the other commands in the ``seg_*`` modules."""

from __future__ import annotations

import argparse
import json

from medmoe.cli.arguments import add_command_group, add_train_command, format_numbers, run_train_command
from medmoe.cli.seg_benchmark import add_benchmark_command, add_eval_command
from medmoe.cli.seg_classes import add_classes_command
from medmoe.cli.seg_datasets import add_dataset_commands
from medmoe.cli.seg_predict import add_predict_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    group = add_command_group(sub, "seg", help="MoME text-prompted CT segmentation: train, predict, classes, eval, benchmark, build-samples, import, check")
    add_train_command(group, task_config="medmoe.seg.task:SegTaskConfig", title="segmentation", run=run_train)
    add_predict_command(group)
    add_classes_command(group)
    add_eval_command(group)
    add_benchmark_command(group)
    add_dataset_commands(group)


def run_train(args: argparse.Namespace) -> int:
    """train a MoME model on partially labelled CT datasets (torchrun for DDP)

    Train a MoME model. The segmentation flags are SegTaskConfig's fields; --set changes any field of the
    model's config.
    """
    from medmoe.seg.task import SegTask, SegTaskConfig

    return run_train_command(args, SegTaskConfig, SegTask, _print_trained)


def _print_trained(result) -> None:
    print(f"trained {result.steps} steps in {result.wall_time_s:.1f} s ({format_numbers(result.final_losses)})")
    if result.validation:
        dice = {k: round(v, 4) for k, v in result.validation.items()}
        print(f"validation: {json.dumps(dice)}")
    if result.model_dir:
        print(f"model saved to {result.model_dir}")
