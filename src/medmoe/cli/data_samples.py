"""``medmoe data build-samples``: registered on the ``medmoe data`` group by ``medmoe.cli.data``."""

from __future__ import annotations

import argparse
import json
import time

from medmoe.cli.arguments import add_command


def add_parser(data_subparsers: argparse._SubParsersAction) -> None:
    """Register ``build-samples`` on the sub-parsers of the ``medmoe data`` group."""
    parser = add_command(data_subparsers, "build-samples", run_build_samples)
    parser.add_argument("--out", required=True, help="destination folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--which", default="modality,iu,real",
                        help="comma-separated packs among modality,iu,real (default all)")
    parser.add_argument("--n-per-modality", type=int, default=None,
                        help="modality-benchmark images per modality (default 300; 30 with --quick)")
    parser.add_argument("--iu-limit", type=int, default=None,
                        help="IU reports to use (default all; 200 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small packs for smoke tests")
    parser.add_argument("--size", type=int, default=224, help="generated image side in pixels (default 224)")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: CPUs, at most 4)")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run_build_samples(args: argparse.Namespace) -> int:
    """write the built-in sample packs (modality benchmark, IU chest X-ray pairs, real images)

    Write DIR/<dataset>/manifest.csv and DIR/<dataset>/images/ for each pack, offline and deterministic by
    seed: modality-bench (generated X-ray, CT, MRI, ultrasound, pathology, fundus), iu-cxr (real IU reports
    with rendered radiographs), real-samples (real DICOM/JPEG/NIfTI/PNG files).
    """
    from medmoe_samples.pairs.build import build_samples

    which = [w.strip() for w in args.which.split(",") if w.strip()]
    start = time.perf_counter()
    counts = build_samples(
        args.out, seed=args.seed, which=which, n_per_modality=args.n_per_modality, iu_limit=args.iu_limit,
        quick=args.quick, size=args.size, workers=args.workers, progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - start
    if args.json:
        print(json.dumps({name: c.as_dict() for name, c in counts.items()} | {"seconds": round(elapsed, 1)}))
        return 0
    print(f"{'dataset':16s} {'total':>6s} {'train':>6s} {'val':>5s} {'test':>5s} {'skipped':>7s}  modalities")
    for name, c in counts.items():
        mods = " ".join(f"{m}={n}" for m, n in c.modalities.items())
        print(f"{name:16s} {c.total:6d} {c.splits['train']:6d} {c.splits['val']:5d} {c.splits['test']:5d} "
              f"{c.skipped:7d}  {mods}")
    print(f"wrote {sum(c.total for c in counts.values())} pairs to {args.out} in {elapsed:.1f} s")
    return 0
