"""`medmoe align benchmark`: the MedMoE paper's zero-shot (Table 1) and linear-probe (Table 2) protocols."""

from __future__ import annotations

import argparse

from medmoe.cli.arguments import add_command, add_loader_arguments


def add_benchmark_command(group: argparse._SubParsersAction) -> None:
    """Register ``benchmark`` on the ``medmoe align`` sub-parsers."""
    from medmoe.align.suites.sets import EVAL_SETS, PROBE_SETS

    bench = add_command(group, "benchmark", run_benchmark)
    bench.add_argument("--suite", choices=("zeroshot", "probe"), required=True, help="which protocol")
    bench.add_argument("--root", required=True, metavar="DIR", help="folder holding one folder per test set")
    bench.add_argument("--model", required=True,
                       help="saved model folder, or a registered name (untrained weights: a smoke test)")
    bench.add_argument("--sets", default=None, metavar="A,B",
                       help=f"comma-separated subset of {', '.join(EVAL_SETS)} (default: the suite's sets; "
                            f"probe: {', '.join(PROBE_SETS)})")
    bench.add_argument("--out", default=None, metavar="JSON", help="write the results (and the paper's values) here")
    bench.add_argument("--cache-dir", default=None, metavar="DIR",
                       help="where MRNet slices and MedMNIST images are written as PNGs (default: a .medmoe-png "
                            "folder inside each set's folder)")
    bench.add_argument("--seeds", default="0,1,2", metavar="S,S",
                       help="probe: seeds of the 1 %% / 10 %% subsamples, averaged (default 0,1,2)")
    bench.add_argument("--max-items", type=int, default=None, metavar="N",
                       help="at most N evenly spaced images per set and split (quick checks; not the protocol)")
    add_loader_arguments(bench)


def _seeds(text: str) -> list[int]:
    from medmoe.errors import InvalidInputError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise InvalidInputError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2")
    return seeds


def run_benchmark(args: argparse.Namespace) -> int:
    """the paper's zero-shot / linear-probe protocols on public test sets, next to its numbers

    Run the MedMoE paper's evaluation protocols on the public test sets found under --root (one folder per
    set, in its public layout; see docs/protocols.md) and print the paper's rows (MedMoE, arXiv 2506.08356,
    Table 1 / Table 2) next to the model's. zeroshot: top-1 accuracy with prompt ensembles on the nine sets of
    Table 1 and their mean; probe: logistic regression on frozen image embeddings at 1 / 10 / 100 % of the
    training labels on the sets of Table 2. Missing sets are listed, not fatal.
    """
    from pathlib import Path

    from medmoe.align.suites import (
        format_probe_table,
        format_zeroshot_table,
        run_probe_suite,
        run_zeroshot_suite,
        select_sets,
        write_suite_json,
    )
    from medmoe.devices import resolve_device
    from medmoe.errors import InvalidInputError
    from medmoe.paths import check_output_file

    if args.batch_size < 1 or args.workers < 0 or (args.max_items is not None and args.max_items < 1):
        raise InvalidInputError("--batch-size and --max-items must be positive and --workers non-negative")
    seeds = _seeds(args.seeds)
    if args.sets is not None:
        select_sets(args.sets, ())  # unknown names fail before the model loads
    if not Path(args.root).is_dir():
        raise InvalidInputError(f"--root {args.root}: not a folder (it holds one folder per test set)")
    out = check_output_file(args.out) if args.out else None
    device = resolve_device(args.device)
    from medmoe.cli.models import model_from_flag

    model = model_from_flag(args.model, family="medmoe", device=str(device))
    options = {"batch_size": args.batch_size, "device": str(device), "workers": args.workers,
               "progress": not args.no_progress, "cache_dir": args.cache_dir, "max_items": args.max_items}
    if args.suite == "zeroshot":
        result = run_zeroshot_suite(model, args.root, args.sets, **options)
        print(format_zeroshot_table(result, label=Path(args.model).name or args.model))
    else:
        result = run_probe_suite(model, args.root, args.sets, seeds=seeds, **options)
        print(format_probe_table(result, label=Path(args.model).name or args.model))
    if out is not None:
        write_suite_json(result, out, model=args.model, max_items=args.max_items)
        print(f"results: {out}")
    return 0
