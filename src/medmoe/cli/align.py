"""`medmoe align`: train, evaluate and embed with MedMoE image-report alignment models."""

from __future__ import annotations

import argparse

from medmoe.cli.align_benchmark import add_benchmark_command
from medmoe.cli.align_search import add_search_commands
from medmoe.cli.arguments import (
    add_command,
    add_command_group,
    add_loader_arguments,
    add_model_data_arguments,
    add_train_command,
    format_numbers,
    run_train_command,
)
from medmoe.cli.models import model_from_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    group = add_command_group(sub, "align", help="MedMoE image-report alignment: train, eval, compare, embed, zeroshot, index, search, benchmark")
    add_train_command(group, task_config="medmoe.align.task:AlignTaskConfig", title="alignment", run=run_train)

    ev = add_command(group, "eval", run_eval)
    add_model_data_arguments(ev)
    ev.add_argument("--out", required=True, help="metrics JSON; figures go to <out stem>_figures/")
    ev.add_argument("--split", default="test", help="rows to evaluate (all rows if the manifest has no splits)")
    ev.add_argument("--probe-split", default="train", help="linear-probe training rows ('' to skip)")
    add_loader_arguments(ev, device="cpu")
    ev.add_argument("--max-items", type=int, default=None, help="evaluate at most N rows (quick checks)")
    ev.add_argument("--no-figures", action="store_true")
    ev.add_argument("--per-item", action="store_true",
                    help="keep each pair's retrieval ranks in the JSON (for `medmoe align compare`)")

    co = add_command(group, "compare", run_compare)
    co.add_argument("a", metavar="A_METRICS", help="metrics JSON of model A (from eval --per-item)")
    co.add_argument("b", metavar="B_METRICS", help="metrics JSON of model B, same manifest and split")
    co.add_argument("--out", default=None, help="write the comparison as JSON")
    co.add_argument("--resamples", type=int, default=10_000)
    co.add_argument("--level", type=float, default=0.95, help="coverage of the interval (default 0.95)")
    co.add_argument("--seed", type=int, default=0)

    em = add_command(group, "embed", run_embed)
    add_model_data_arguments(em, model_help="saved model directory (or a registered name)")
    em.add_argument("--out", required=True, help="output .npz")
    em.add_argument("--split", default=None, help="only rows of this split (default: all)")
    add_loader_arguments(em, device="cpu")

    add_search_commands(group)  # zeroshot, index, search
    add_benchmark_command(group)  # the papers' protocols


def run_train(args: argparse.Namespace) -> int:
    """train a MedMoE model (single process or torchrun DDP)

    Train a MedMoE model. The alignment flags are AlignTaskConfig's fields; --set changes any field of the
    model's config (--num-experts and --route-by are shortcuts of it).
    """
    from medmoe.align.task import AlignTask, AlignTaskConfig

    return run_train_command(args, AlignTaskConfig, AlignTask, _print_trained)


def _print_trained(result) -> None:
    print(f"trained {result.steps} steps ({result.samples_per_s:.1f} samples/s); {format_numbers(result.final_losses)}")
    if result.validation:
        print("validation: " + format_numbers(result.validation))
    print(f"bad samples skipped: {result.bad_samples}")
    print(f"model: {result.model_dir}")


def run_eval(args: argparse.Namespace) -> int:
    """retrieval, zero-shot, linear probe and routing metrics + figures"""
    from medmoe.align.evaluate import evaluate
    from medmoe.paths import check_output_file

    check_output_file(args.out)
    model = model_from_flag(args.model, family="medmoe", device=args.device)
    metrics = evaluate(
        model, args.data, split=args.split or None, out=args.out, probe_split=args.probe_split or None,
        batch_size=args.batch_size, device=args.device, workers=args.workers, figures=not args.no_figures,
        max_items=args.max_items, progress=not args.no_progress, per_item=args.per_item,
    )
    r = metrics["retrieval"]
    print(f"{metrics['n']} pairs ({metrics['bad_samples']} bad skipped)")
    for direction in ("image_to_text", "text_to_image"):
        d = r[direction]
        print(f"{direction}: R@1 {d['R@1']:.3f}  R@5 {d['R@5']:.3f}  R@10 {d['R@10']:.3f}  "
              f"median rank {d['median_rank']:.0f}")
    routing = metrics["routing"]
    if "agreement" in routing:
        print(f"image router vs modality: agreement {routing['agreement']:.3f} "
              f"(identity {routing['agreement_identity']:.3f}) on {routing['n_labelled']} images")
    print(f"metrics: {args.out}")
    for figure in metrics.get("figures", []):
        print(f"figure: {figure}")
    return 0


def _read_metrics(path: str) -> dict:
    import json
    from pathlib import Path

    from medmoe.errors import InvalidInputError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such metrics file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise InvalidInputError(f"{path}: not a metrics JSON ({err})") from None
    except OSError as err:
        raise InvalidInputError(f"{path}: cannot read ({err.strerror or err})") from None


def run_compare(args: argparse.Namespace) -> int:
    """is model A better than model B? paired bootstrap over the test items

    Compare two `medmoe align eval --per-item` results on the same test items: difference of R@K both ways
    with a paired percentile-bootstrap confidence interval over the items.
    """
    import json
    from pathlib import Path

    from medmoe.align.compare import DIRECTIONS, compare_retrieval, interval_points, verdict

    a, b = _read_metrics(args.a), _read_metrics(args.b)
    if args.out:
        from medmoe.paths import check_output_file

        check_output_file(args.out)
    result = compare_retrieval(a, b, resamples=args.resamples, level=args.level, seed=args.seed)
    result.update(a_metrics=args.a, b_metrics=args.b)
    print(f"A = {args.a}\nB = {args.b}\n{result['n']} shared test pairs"
          + (f" ({result['only_in_a']} only in A, {result['only_in_b']} only in B)"
             if result["only_in_a"] or result["only_in_b"] else ""))
    pct = int(round(100 * args.level))
    print(f"{'direction':<15}{'metric':<7}{'A %':>7}{'B %':>7}{'A-B':>8}   {f'{pct} % interval':<18}verdict")
    for direction in DIRECTIONS:
        for metric, r in result[direction].items():
            print(f"{direction.replace('_to_', '->'):<15}{metric:<7}{100 * r['a']:>7.1f}{100 * r['b']:>7.1f}"
                  f"{100 * r['difference']:>+8.1f}   {interval_points(r):<18}{verdict(r)}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"comparison: {out}")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    """write image and report embeddings of a manifest or shards to .npz"""
    from medmoe.align.embed import embed_manifest
    from medmoe.paths import check_output_file

    check_output_file(args.out)
    model = model_from_flag(args.model, family="medmoe", device=args.device)
    path = embed_manifest(model, args.data, args.out, split=args.split, batch_size=args.batch_size,
                          device=args.device, workers=args.workers, progress=not args.no_progress)
    print(f"embeddings: {path}")
    return 0

