"""`medmoe align`: train, evaluate and embed with MedMoE image-report alignment models."""

from __future__ import annotations

import argparse

from medmoe.cli.overrides import parse_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("align", help="MedMoE image-report alignment: train, eval, compare, embed")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    group = parser.add_subparsers(dest="align_command", metavar="SUBCOMMAND")
    _add_train(group)
    _add_eval(group)
    _add_compare(group)
    _add_embed(group)
    from medmoe.cli.align_search import add_search_commands  # zeroshot, index, search

    add_search_commands(group)


def _add_train(group: argparse._SubParsersAction) -> None:
    from medmoe.train import add_training_arguments

    train = group.add_parser("train", help="train a MedMoE model (single process or torchrun DDP)")
    g = train.add_argument_group("alignment")
    g.add_argument("--data", required=True, metavar="MANIFEST|SHARDS",
                   help="training manifest (.csv / .jsonl), or shards: a folder of .tar, a brace pattern "
                        "'corpus/shard-{000000..000999}.tar', a glob, or URLs (https://..., pipe:CMD, s3://... "
                        "through fsspec); shards are streamed, each rank and loader worker reading its own")
    g.add_argument("--model", default="medmoe-nano", help="registered model name or a saved model directory")
    g.add_argument("--split", default="train", help="training rows (default train)")
    g.add_argument("--image-size", type=int, default=None, help="input side (default: the model's)")
    g.add_argument("--num-experts", type=int, default=None, help="override the model's num_experts")
    g.add_argument("--route-by", choices=("text", "image", "label"), default=None,
                   help="override the model's training route")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", dest="set_fields",
                   help="override any model config field, e.g. --set balance_loss_weight=0.1 (repeatable)")
    g.add_argument("--no-augment", action="store_true", help="no training augmentation")
    g.add_argument("--random-text", action="store_true", help="random text-encoder weights (no pretrained load)")
    g.add_argument("--val-data", default=None, metavar="MANIFEST|SHARDS",
                   help="validation manifest or shards (retrieval, routing)")
    g.add_argument("--val-split", default="val")
    g.add_argument("--val-max", type=int, default=256, help="validation pairs at most")
    g.add_argument("--text-cache-gb", type=float, default=4.0, metavar="GB",
                   help="host memory for caching a frozen text tower's outputs (float16 on the CPU); a corpus "
                        "that needs more trains without the cache (default 4)")
    g.add_argument("--upcycle-steps", type=int, default=0, metavar="N",
                   help="sparse upcycling: one shared expert for the first N steps, then copied into all "
                        "experts (default 0: off)")
    add_training_arguments(train)
    train.set_defaults(func=run_train)


def _add_eval(group: argparse._SubParsersAction) -> None:
    ev = group.add_parser("eval", help="retrieval, zero-shot, linear probe and routing metrics + figures")
    ev.add_argument("--model", required=True, help="saved model directory (or a registered name, untrained)")
    ev.add_argument("--data", required=True, metavar="MANIFEST|SHARDS", help="manifest or shard source")
    ev.add_argument("--out", required=True, help="metrics JSON; figures go to <out stem>_figures/")
    ev.add_argument("--split", default="test", help="rows to evaluate (all rows if the manifest has no splits)")
    ev.add_argument("--probe-split", default="train", help="linear-probe training rows ('' to skip)")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--workers", type=int, default=0)
    ev.add_argument("--max-items", type=int, default=None, help="evaluate at most N rows (quick checks)")
    ev.add_argument("--no-figures", action="store_true")
    ev.add_argument("--per-item", action="store_true",
                    help="keep each pair's retrieval ranks in the JSON (for `medmoe align compare`)")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=run_eval)


def _add_compare(group: argparse._SubParsersAction) -> None:
    co = group.add_parser(
        "compare", help="is model A better than model B? paired bootstrap over the test items",
        description="Compare two `medmoe align eval --per-item` results on the same test items: difference of "
                    "R@K both ways with a paired percentile-bootstrap confidence interval over the items.")
    co.add_argument("a", metavar="A_METRICS", help="metrics JSON of model A (from eval --per-item)")
    co.add_argument("b", metavar="B_METRICS", help="metrics JSON of model B, same manifest and split")
    co.add_argument("--out", default=None, help="write the comparison as JSON")
    co.add_argument("--resamples", type=int, default=10_000)
    co.add_argument("--level", type=float, default=0.95, help="coverage of the interval (default 0.95)")
    co.add_argument("--seed", type=int, default=0)
    co.set_defaults(func=run_compare)


def _add_embed(group: argparse._SubParsersAction) -> None:
    em = group.add_parser("embed", help="write image and report embeddings of a manifest or shards to .npz")
    em.add_argument("--model", required=True, help="saved model directory (or a registered name)")
    em.add_argument("--data", required=True, metavar="MANIFEST|SHARDS", help="manifest or shard source")
    em.add_argument("--out", required=True, help="output .npz")
    em.add_argument("--split", default=None, help="only rows of this split (default: all)")
    em.add_argument("--batch-size", type=int, default=32)
    em.add_argument("--device", default="cpu")
    em.add_argument("--workers", type=int, default=0)
    em.add_argument("--no-progress", action="store_true")
    em.set_defaults(func=run_embed)


def _load(name_or_dir: str, device: str):
    """An alignment model from a saved directory or a registered name; another family is a one-line error."""
    from pathlib import Path

    import medmoe
    from medmoe.errors import InvalidInputError
    from medmoe.hub import describe_family
    from medmoe.registry import get_model_config

    if Path(name_or_dir).is_dir():
        return medmoe.load_model(name_or_dir, device=device, family="medmoe")
    if Path(name_or_dir).exists():
        raise InvalidInputError(f"--model {name_or_dir}: is a file; expected a saved model folder or a registered name")
    family = get_model_config(name_or_dir).get("model_type")
    if family != "medmoe":
        raise InvalidInputError(f"--model {name_or_dir}: a {describe_family(family)} model; this command needs a "
                                f"{describe_family('medmoe')} model")
    return medmoe.create_model(name_or_dir).to(device).eval()


def run_train(args: argparse.Namespace) -> int:
    from medmoe.align.task import AlignTask, AlignTaskConfig
    from medmoe.train import is_main, run_training

    overrides = parse_overrides(args.set_fields, example="num_experts=1")
    if args.num_experts is not None:
        overrides["num_experts"] = args.num_experts
    if args.route_by is not None:
        overrides["route_by"] = args.route_by
    config = AlignTaskConfig(
        data=args.data, model=args.model, overrides=overrides, split=args.split or None, image_size=args.image_size,
        augment=not args.no_augment, seed=args.seed, pretrained=not args.random_text, val_data=args.val_data,
        val_split=args.val_split, val_max=args.val_max, upcycle_steps=args.upcycle_steps,
        text_cache_gb=args.text_cache_gb,
    )
    _check_run_dir(args.out)
    result = run_training(AlignTask(config), args)
    if is_main():
        losses = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.final_losses.items()))
        print(f"trained {result.steps} steps ({result.samples_per_s:.1f} samples/s); {losses}")
        if result.validation:
            print("validation: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.validation.items())))
        print(f"bad samples skipped: {result.bad_samples}")
        print(f"model: {result.model_dir}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from medmoe.align.evaluate import evaluate
    from medmoe.cli.paths import check_output_file

    check_output_file(args.out)
    model = _load(args.model, args.device)
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
    import json
    from pathlib import Path

    from medmoe.align.compare import DIRECTIONS, compare_retrieval, interval_points, verdict

    a, b = _read_metrics(args.a), _read_metrics(args.b)
    if args.out:
        from medmoe.cli.paths import check_output_file

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
    from medmoe.align.embed import embed_manifest
    from medmoe.cli.paths import check_output_file

    check_output_file(args.out)
    model = _load(args.model, args.device)
    path = embed_manifest(model, args.data, args.out, split=args.split, batch_size=args.batch_size,
                          device=args.device, workers=args.workers, progress=not args.no_progress)
    print(f"embeddings: {path}")
    return 0


def _check_run_dir(out) -> None:
    """Before training: RUN_DIR writable, and its ``model/`` (replaced at the end) empty or a model medmoe saved."""
    from medmoe.cli.paths import check_output_dir
    from medmoe.hub import check_replaceable

    check_replaceable(check_output_dir(out) / "model")
