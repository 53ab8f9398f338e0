"""`medmoe seg`: train MoME text-prompted CT segmentation (predict, classes, eval and build-samples: ``seg_tools``)."""

from __future__ import annotations

import argparse
import json

from medmoe.cli import seg_tools
from medmoe.cli.overrides import parse_overrides


def _voxels(text: str) -> int:
    """A positive voxel count (a named type, so YAML lists such as ``patch_size: [64, 64, 32]`` load)."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of voxels")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("seg", help="MoME text-prompted CT segmentation: train, predict, classes, eval, build-samples")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    group = parser.add_subparsers(dest="seg_command", metavar="SUBCOMMAND")
    _add_train(group)
    seg_tools.add_parsers(group)


def _add_train(group: argparse._SubParsersAction) -> None:
    from medmoe.train import add_training_arguments

    train = group.add_parser("train", help="train a MoME model on partially labelled CT datasets (torchrun for DDP)")
    g = train.add_argument_group("segmentation")
    g.add_argument("--data", required=True, metavar="DATALIST", help="Decathlon-style datalist JSON")
    g.add_argument("--model", default="mome-nano", help="registered model name or a saved model directory")
    g.add_argument("--patch-size", type=_voxels, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="training patch in voxels, multiples of 32 (default: the model's roi_size)")
    g.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("SX", "SY", "SZ"),
                   help="training spacing in mm (default: the model's, 1.5 mm)")
    g.add_argument("--samples-per-volume", type=int, default=1,
                   help="patches per volume and item; each centred on the body or on one labelled class "
                        "present, all equally likely (class-balanced)")
    g.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="preprocessed-volume cache, reused by runs with the same spacing (default: $MEDMOE_CACHE/volumes "
                        "or ~/.cache/medmoe/volumes; put it on storage every node sees)")
    g.add_argument("--cache-workers", type=int, default=2,
                   help="processes per rank that preprocess the rank's share of the volumes before training")
    g.add_argument("--no-cache", action="store_true",
                   help="preprocess every volume at every access (writes nothing; slow)")
    g.add_argument("--max-locations", type=int, default=10_000,
                   help="patch-centre voxels kept per class and volume (bounded memory, as nnU-Net)")
    g.add_argument("--augment", choices=("light", "strong", "none"), default="light",
                   help="light: intensity jitter; strong: + contrast, noise, rotation/scaling and patches at the "
                        "body's edge (for few training scans)")
    g.add_argument("--no-balance", action="store_true", help="sample volumes, not source datasets, uniformly")
    g.add_argument("--soft-labels", action="store_true",
                   help="train against partial-volume class fractions instead of nearest-neighbour labels "
                        "(sharper boundaries at coarse spacings; K float16 channels per cached volume)")
    g.add_argument("--bce-weight", type=float, default=1.0)
    g.add_argument("--dice-weight", type=float, default=1.0)
    g.add_argument("--dice-reduction", choices=("batch", "sample"), default="batch",
                   help="Dice pooled per class over the batch, or per sample and class (Universal Model)")
    g.add_argument("--balance-weight", type=float, default=0.0, help="weight of the scale-balance loss on the gates")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", dest="set_fields",
                   help="override a model config field, e.g. --set feature_size=24 (repeatable)")
    g.add_argument("--random-text", action="store_true", help="random text-encoder weights (no pretrained load)")
    g.add_argument("--val-split", default="validation", help="datalist split for validation Dice ('' for none)")
    g.add_argument("--val-max-cases", type=int, default=8)
    g.add_argument("--val-overlap", type=float, default=0.25)
    add_training_arguments(train)
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from medmoe.seg.task import SegTask, SegTaskConfig
    from medmoe.train import is_main, run_training

    config = SegTaskConfig(
        data=args.data, model=args.model, overrides=parse_overrides(args.set_fields, example="feature_size=24"),
        patch_size=tuple(args.patch_size) if args.patch_size else None,
        spacing=tuple(args.spacing) if args.spacing else None, cache=not args.no_cache,
        cache_dir=args.cache_dir, cache_workers=args.cache_workers, max_locations=args.max_locations,
        augmentation=args.augment,
        samples_per_volume=args.samples_per_volume, balance=not args.no_balance, bce_weight=args.bce_weight,
        dice_weight=args.dice_weight, dice_reduction=args.dice_reduction, balance_weight=args.balance_weight, seed=args.seed,
        pretrained=not args.random_text, val_split=args.val_split or None, val_max_cases=args.val_max_cases,
        val_overlap=args.val_overlap, progress=not args.no_progress, soft_labels=args.soft_labels,
    )
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
