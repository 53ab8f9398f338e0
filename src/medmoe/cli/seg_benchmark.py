"""`medmoe seg eval` (a model on one datalist split) and `medmoe seg benchmark` (one model over several datalists).

``add_eval_command(group)`` and ``add_benchmark_command(group)`` register the commands on the ``seg``
sub-command group; ``add_eval_spacing_argument(parser)`` adds ``--eval-spacing MM`` to a parser,
:func:`eval_spacing_of` reads it back for :func:`medmoe.seg.evaluate.evaluate` and
:func:`eval_spacing_lines` gives the lines to print for the scores at that spacing.
"""

from __future__ import annotations

import argparse
import math
import sys

from medmoe.cli.arguments import add_command


def _millimetres(text: str) -> float:
    """A positive millimetre value (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of millimetres") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of millimetres")
    return value


def _score(value: float | None) -> str:
    """A score as `seg eval` prints it: three decimals in six columns, ``n/a`` when there is none."""
    return "   n/a" if value is None else f"{value:6.3f}"


def add_seg_eval_arguments(parser: argparse.ArgumentParser, *, max_cases_help: str) -> None:
    """The sliding-window and metric flags of ``medmoe seg eval`` and ``medmoe seg benchmark``."""
    parser.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD boundary tolerance in mm (default 2)")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-cases", type=int, default=None, help=max_cases_help)
    parser.add_argument("--no-progress", action="store_true")


def add_eval_spacing_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--eval-spacing MM [MM MM]`` (default: none, native grid only) to ``parser``."""
    parser.add_argument("--eval-spacing", type=_millimetres, nargs="+", default=None, metavar="MM",
                        help="also score on a grid at this spacing (one value: isotropic, or three), as the "
                             "Universal Model reports Dice at 1.5 mm: --eval-spacing 1.5")


def eval_spacing_of(args: argparse.Namespace) -> tuple[float, float, float] | None:
    """The parsed ``--eval-spacing`` as three millimetre values, or None when it was not given.

    Raises:
        InvalidInputError: two values, or more than three.
    """
    from medmoe.seg.evaluate import parse_eval_spacing

    return parse_eval_spacing(getattr(args, "eval_spacing", None))


def eval_spacing_lines(report: dict) -> list[str]:
    """Lines `seg eval` prints for a report with ``at_eval_spacing``: Dice and NSD per class and the mean."""
    from medmoe.seg.evaluate import spacing_label

    at = report.get("at_eval_spacing")
    if not at:
        return []
    label = spacing_label(at["spacing_mm"])
    lines = [f"at {label}: {'class':20s} {'dice':>6s} {'nsd':>6s}  n"]
    lines += [f"at {label}: {name:20s} {_score(row['dice'])} {_score(row['nsd'])}  {row['n']}"
              for name, row in at["per_class"].items()]
    lines.append(f"at {label}: {'mean':20s} {_score(at['mean']['dice'])} {_score(at['mean']['nsd'])}")
    return lines


def add_eval_command(sub: argparse._SubParsersAction) -> None:
    """Register ``eval`` on the ``seg`` sub-command group."""
    ev = add_command(sub, "eval", run_eval)
    ev.add_argument("--model", required=True, help="a saved model directory")
    ev.add_argument("--data", required=True, help="datalist JSON")
    ev.add_argument("--out", required=True, help="metrics JSON to write")
    ev.add_argument("--split", default="test", choices=("training", "validation", "test"))
    ev.add_argument("--class", dest="classes", action="append", default=None, metavar="CLASS",
                    help="only these classes (repeat; default: every class each dataset labels)")
    ev.add_argument("--overlays", default=None, metavar="DIR", help="write one overlay PNG per case here")
    add_seg_eval_arguments(ev, max_cases_help="evaluate only the first N cases")
    add_eval_spacing_argument(ev)


def run_eval(args: argparse.Namespace) -> int:
    """Dice, HD95, NSD and tumour detection of a model on a datalist split"""
    import torch

    from medmoe.paths import check_output_dir, check_output_file
    from medmoe.saved_model import load_model
    from medmoe.seg.evaluate import evaluate

    check_output_file(args.out)
    if args.overlays:
        check_output_dir(args.overlays, "--overlays")
    model = load_model(args.model, device=args.device, family="mome")
    report = evaluate(model, args.data, split=args.split, classes=args.classes, out=args.out,
                      overlay_dir=args.overlays, nsd_tolerance_mm=args.nsd_tolerance, threshold=args.threshold,
                      overlap=args.overlap, sw_batch_size=args.sw_batch_size, device=torch.device(args.device) if args.device else None,
                      max_cases=args.max_cases, progress=not args.no_progress, eval_spacing=eval_spacing_of(args))
    print(f"{'class':28s} {'dice':>6s} {'hd95':>7s} {'nsd':>6s}  n")
    for name, row in report["per_class"].items():
        hd = "    n/a" if row["hd95"] is None else f"{row['hd95']:7.1f}"
        print(f"{name:28s} {_score(row['dice'])} {hd} {_score(row['nsd'])}  {row['n']}")
    mean = report["mean"]
    print(f"{'mean':28s} {_score(mean['dice'])} {'':7s} {_score(mean['nsd'])}")
    for name, det in report["tumour_detection"].items():
        print(f"{name}: sensitivity {_score(det['sensitivity'])}, specificity {_score(det['specificity'])} "
              f"(tp {det['tp']} fn {det['fn']} tn {det['tn']} fp {det['fp']})")
    for line in eval_spacing_lines(report):
        print(line)
    if report["bad"]:
        print(f"{len(report['bad'])} case(s) skipped:", file=sys.stderr)
        for row in report["bad"]:
            print(f"  {row['path']}: {row['reason']}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


def add_benchmark_command(group: argparse._SubParsersAction) -> None:
    """Register ``benchmark`` on the ``seg`` sub-command group."""
    bench = add_command(group, "benchmark", run_benchmark, epilog="example:\n  medmoe seg benchmark --model runs/mome/model --data btcv.json --data msd.json:validation "
               "\\\n      --eval-spacing 1.5 --out benchmark.json")
    bench.add_argument("--model", required=True, help="a saved model folder or a registered model name")
    bench.add_argument("--data", required=True, action="append", dest="datalists", metavar="DATALIST[:SPLIT]",
                       help="a datalist JSON and optionally its split (repeatable)")
    bench.add_argument("--out", default=None, metavar="JSON", help="write the tables and every report here")
    add_eval_spacing_argument(bench)
    bench.add_argument("--class", dest="classes", action="append", default=None, metavar="CLASS",
                       help="only these classes (repeatable; default: every class each dataset labels)")
    add_seg_eval_arguments(bench, max_cases_help="evaluate only the first N cases of each")


def run_benchmark(args: argparse.Namespace) -> int:
    """evaluate one model over several datalists: a table per dataset and class

    Evaluate one MoME model on each DATALIST[:SPLIT] (split default: test) with `seg eval`'s
    protocol and print one table per dataset and class (Dice on the native grid, Dice at
    --eval-spacing, NSD, cases) and the overall mean; --out writes it all as JSON.
    """
    import torch

    from medmoe.seg.benchmark import benchmark, format_tables, parse_datalist_spec

    if args.out:
        from medmoe.paths import check_output_file

        check_output_file(args.out)
    spacing = eval_spacing_of(args)
    for spec in args.datalists:
        parse_datalist_spec(spec)
    from medmoe.cli.models import model_from_flag

    model = model_from_flag(args.model, family="mome", device=args.device)
    result = benchmark(model, args.datalists, eval_spacing=spacing, out=args.out, classes=args.classes,
                       nsd_tolerance_mm=args.nsd_tolerance, threshold=args.threshold, overlap=args.overlap,
                       sw_batch_size=args.sw_batch_size, device=torch.device(args.device) if args.device else None,
                       max_cases=args.max_cases, progress=not args.no_progress)
    print(format_tables(result))
    skipped = sum(len(r["bad"]) for r in result["reports"])
    if skipped:
        print(f"{skipped} case(s) skipped (reasons in the JSON's reports[].bad)", file=sys.stderr)
    if args.out:
        print(f"wrote {args.out}")
    return 0
