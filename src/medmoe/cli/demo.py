"""`medmoe demo`: the main job, end to end on built-in data, with a report a person can read."""

from __future__ import annotations

import argparse
import sys
import textwrap

from medmoe.cli.arguments import add_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "demo", run)
    parser.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default demo_out)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (about a minute): a smoke run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--overwrite", action="store_true",
                        help="let the demo use a non-empty DIR it did not create (it replaces runs/, align/, seg/ there)")


def run(args: argparse.Namespace) -> int:
    """build sample data, train + evaluate MedMoE and MoME, write report.html

    Builds the built-in data if needed, trains medmoe-effnet-nano (ImageNet EfficientNet-Lite0, 6 experts) and
    its one-expert baseline, trains mome-nano on CT phantoms plus two real example CTs, tests it on a third,
    predicts organs on a training CT, and writes DIR/report.html and DIR/metrics.json.
    """
    import torch

    from medmoe.demo import run_demo
    from medmoe.demo.summary import summary_note
    from medmoe.errors import InvalidInputError

    if args.device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("--device cuda: no CUDA device is available here; use --device cpu")
    result = run_demo(args.out, quick=args.quick, device=args.device, seed=args.seed, progress=not args.no_progress,
                      say=lambda m: print(m, file=sys.stderr, flush=True), overwrite=args.overwrite)
    width = max(len(r[0]) for r in result.summary_rows)
    print(f"\n{'metric':{width}s}  {'MoE/MoME':>9s}  {'1 expert':>9s}")
    for what, a, b in result.summary_rows:
        print(f"{what:{width}s}  {a:>9s}  {b:>9s}")
    note = summary_note(result.metrics)
    if note:
        print("\n" + textwrap.fill(note, width=100))
    print(f"\nreport:  {result.report.resolve()}")
    print(f"metrics: {(result.out / 'metrics.json').resolve()}")
    return 0
