"""`medmoe data`: check manifests, import corpora, write shards (and build the sample data)."""

from __future__ import annotations

import argparse
import json
import sys

from medmoe.cli import data_samples
from medmoe.cli.arguments import add_command, add_command_group


def add_parser(sub: argparse._SubParsersAction) -> None:
    group = add_command_group(sub, "data", help="manifests, dataset import, shards, sample data")

    check = add_command(group, "check", run_check)
    check.add_argument("manifest", help="a .csv or .jsonl manifest")
    check.add_argument("--no-read", action="store_true", help="only check that image files exist (faster)")
    check.add_argument("--max-problems", type=int, default=None, metavar="N",
                       help="print at most N problems (the summary counts all)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")

    imp = group.add_parser(
        "import", help="build a manifest from a public corpus you have on disk",
        description="Build a manifest from a public corpus in the layout it is distributed in. "
        "`medmoe data import SOURCE --help` shows the folder tree SOURCE expects and the source it follows.")
    sources = imp.add_subparsers(dest="source", metavar="SOURCE", required=True)
    from medmoe.data.adapters import SOURCES  # one list of adapters: the library's

    for source in sorted(SOURCES):
        _add_import_parser(sources, source)

    shard = add_command(group, "shard", run_shard)
    shard.add_argument("manifest", help="a .csv or .jsonl manifest")
    shard.add_argument("--out", required=True, help="output folder")
    shard.add_argument("--per-shard", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    shard.add_argument("--split", default=None, help="only rows of this split")
    shard.add_argument("--format", choices=("png", "jpg"), default="png", help="image encoding (default png)")
    shard.add_argument("--max-size", type=int, default=None, metavar="PX",
                       help="downsize images whose longer side exceeds PX")
    shard.add_argument("--shuffle-seed", type=int, default=None, metavar="SEED",
                       help="write rows in an order shuffled by SEED (recommended for training: shards are "
                            "streamed, so a manifest sorted by dataset would give one-source batches)")
    shard.add_argument("--no-progress", action="store_true", help="no progress bar")

    data_samples.add_parser(group)


def _add_import_parser(sources: argparse._SubParsersAction, source: str) -> None:
    """``medmoe data import SOURCE``: its help is the adapter's description (source followed, layout)."""
    from medmoe.data.adapters import layout_help

    text = layout_help(source)
    parser = add_command(sources, source, run_import,
        help=text.splitlines()[0] if text else source, description=text)
    parser.add_argument("root", help="a .tar shard or a folder of shards" if source == "wds" else
                        "the corpus folder, laid out as above")
    parser.add_argument("--out", required=True, help="manifest to write (.csv or .jsonl)")
    if source != "wds":
        parser.add_argument("--keep-missing", action="store_true", help="keep rows whose image file is missing")
    _add_source_options(parser, source)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_source_options(parser: argparse.ArgumentParser, source: str) -> None:
    from medmoe.data.adapters.unimed_folds import LAYOUTS

    if source == "mimic-cxr":
        parser.add_argument("--all-views", action="store_true", help="keep lateral views too")
        parser.add_argument("--reports-root", default=None,
                            help="where the reports are, if not in ROOT: the folder of their files/ tree, the "
                                 "folder holding mimic-cxr-reports.zip, or that zip")
    if source == "wds":
        parser.add_argument("--extract-dir", default=None,
                            help="where to extract images (default: <out without suffix>-images)")
        parser.add_argument("--split", default=None, help="split of samples that do not carry one")
    if source == "busi":
        parser.add_argument("--normal", choices=("benign", "exclude", "class"), default="benign",
                            help="the normal images: labelled benign as RadImageNet's fold does (default), left "
                                 "out, or a class of their own")
        parser.add_argument("--split-by", choices=("fold", "hash"), default="fold",
                            help="RadImageNet's fold CSVs (default) or a file-name hash (not the protocol's)")
    if source in LAYOUTS or source == "busi":
        parser.add_argument("--fold", type=int, default=1, help="which published fold (default 1)")


def run_check(args: argparse.Namespace) -> int:
    """report every problem of a manifest; exit 1 if any row is bad"""
    from medmoe.data.check import check_manifest

    result = check_manifest(args.manifest, read_images=not args.no_read, progress=not args.no_progress)
    limit = args.max_problems if args.max_problems is not None else len(result.problems)
    for problem in result.problems[:limit]:
        print(problem)
    if len(result.problems) > limit:
        print(f"... {len(result.problems) - limit} more problem(s)")
    print(result.summary())
    return 0 if result.ok else 1


def run_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medmoe.data.adapters import import_source
    from medmoe.data.manifest import manifest_format, write_manifest
    from medmoe.paths import check_output_dir, check_output_file

    manifest_format(args.out)
    check_output_file(args.out)
    options: dict = {"progress": not args.no_progress}
    if args.source != "wds":
        options["skip_missing"] = not args.keep_missing
    if args.source == "mimic-cxr":
        options.update(views=None if args.all_views else ("PA", "AP"), reports_root=args.reports_root)
    if args.source == "busi":
        options.update(normal=args.normal, split=args.split_by)
    if hasattr(args, "fold"):
        options["fold"] = args.fold
    if args.source == "wds":
        out = Path(args.out)
        options.update(extract_dir=args.extract_dir or str(out.with_name(out.name.split(".")[0] + "-images")),
                       split=args.split)
        check_output_dir(options["extract_dir"], "--extract-dir")
    result = import_source(args.source, args.root, **options)
    path = write_manifest(result.rows, args.out)
    splits = ", ".join(f"{k} {v}" for k, v in sorted(result.split_counts().items())) or "none"
    print(f"{args.source}: wrote {len(result.rows)} rows to {path} (splits: {splits})")
    for reason, items in result.skipped.items():
        print(f"  skipped {len(items)} with {reason}", file=sys.stderr)
    return 0 if result.rows else 1


def run_shard(args: argparse.Namespace) -> int:
    """write WebDataset-style tar shards from a manifest"""
    from medmoe.data.shards import write_shards
    from medmoe.errors import InvalidInputError
    from medmoe.paths import check_output_dir

    if args.max_size is not None and args.max_size < 1:
        raise InvalidInputError(f"--max-size {args.max_size}: max_size must be a positive number of pixels")
    if args.per_shard < 1:
        raise InvalidInputError(f"--per-shard {args.per_shard}: expected at least 1 sample per shard")
    check_output_dir(args.out)

    result = write_shards(
        args.manifest,
        args.out,
        per_shard=args.per_shard,
        shuffle_seed=args.shuffle_seed,
        split=args.split,
        image_format=args.format,
        max_size=args.max_size,
        progress=not args.no_progress,
    )
    for bad in result.bad:
        print(f"skipped {bad.path}: {bad.reason}", file=sys.stderr)
    print(json.dumps({"out": args.out, "shards": len(result.shards), "samples": result.samples, "bad": len(result.bad)}))
    return 0 if result.samples else 1
