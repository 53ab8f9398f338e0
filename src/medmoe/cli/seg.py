"""`medmoe seg`: train MoME text-prompted CT segmentation (predict, classes, eval and build-samples: ``seg_tools``)."""

from __future__ import annotations

import argparse
import json

from medmoe.cli import seg_tools
from medmoe.cli.config_flags import DeferredFlagsParser


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("seg", help="MoME text-prompted CT segmentation: train, predict, classes, eval, benchmark, build-samples")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    group = parser.add_subparsers(dest="seg_command", metavar="SUBCOMMAND", parser_class=DeferredFlagsParser)
    _add_train(group)
    seg_tools.add_parsers(group)


def _add_train(group: argparse._SubParsersAction) -> None:
    from medmoe.cli.config_flags import add_task_flags
    from medmoe.train import add_training_arguments

    train = group.add_parser(
        "train", help="train a MoME model on partially labelled CT datasets (torchrun for DDP)",
        description="Train a MoME model. The segmentation flags are SegTaskConfig's fields; --set changes any "
                    "field of the model's config.")
    add_training_arguments(train)
    add_task_flags(train, "medmoe.seg.task:SegTaskConfig", title="segmentation")
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from medmoe.cli.config_flags import config_from_args
    from medmoe.seg.task import SegTask, SegTaskConfig
    from medmoe.train import is_main, run_training

    config = config_from_args(SegTaskConfig, args)
    _check_run_dir(args.out)
    result = run_training(SegTask(config), args)
    if is_main():
        losses = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.final_losses.items()))
        print(f"trained {result.steps} steps in {result.wall_time_s:.1f} s ({losses})")
        if result.validation:
            dice = {k: round(v, 4) for k, v in result.validation.items()}
            print(f"validation: {json.dumps(dice)}")
        if result.model_dir:
            print(f"model saved to {result.model_dir}")
    return 0


def _check_run_dir(out) -> None:
    """Before training: RUN_DIR writable, and its ``model/`` (replaced at the end) empty or a model medmoe saved."""
    from medmoe.cli.paths import check_output_dir
    from medmoe.hub import check_replaceable

    check_replaceable(check_output_dir(out) / "model")
