"""`medmoe align zeroshot | index | search`: classify a folder, index a gallery, search it by text or image."""

from __future__ import annotations

import argparse

from medmoe.cli.arguments import MODEL_HELP, add_command, add_loader_arguments, add_model_data_arguments


def add_search_commands(group: argparse._SubParsersAction) -> None:
    """Register the three sub-commands on the ``medmoe align`` sub-parsers."""
    zs = add_command(group, "zeroshot", run_zeroshot)
    zs.add_argument("--model", required=True, help=MODEL_HELP)
    zs.add_argument("--images", required=True, metavar="DIR|MANIFEST|SHARDS",
                    help="a folder (searched recursively for DICOM, NIfTI, PNG, JPEG, TIFF, BMP), a manifest "
                         "(.csv / .jsonl) or shards")
    classes = zs.add_mutually_exclusive_group(required=True)
    classes.add_argument("--classes", metavar="A,B,C", help="comma-separated class names (default prompt templates)")
    classes.add_argument("--classes-file", metavar="FILE",
                         help="YAML / JSON {class: [prompt, ...]} (prompt ensembles), or a text file with one "
                              "class name a line")
    zs.add_argument("--out", required=True, help="predictions CSV")
    zs.add_argument("--split", default=None, help="only rows of this split of a manifest or shards (default: all)")
    add_loader_arguments(zs)

    ix = add_command(group, "index", run_index)
    add_model_data_arguments(ix)
    ix.add_argument("--out", required=True, metavar="IDX", help="index folder (created)")
    ix.add_argument("--kind", choices=("auto", "exact", "pq", "ivf", "hnsw", "ivfpq"), default="auto",
                    help="FAISS index (default auto): exact below 100k items; pq (4-bit PQ scan of every item, "
                         "best re-ranked exactly) up to 20M; ivfpq beyond. ivf and hnsw on request. "
                         "See docs/search.md")
    ix.add_argument("--split", default=None, help="only rows of this split (default: all)")
    ix.add_argument("--chunk-size", type=int, default=4096, metavar="N",
                    help="manifest rows embedded and saved together (the unit of resuming; a shard is one "
                         "chunk) (default 4096)")
    ix.add_argument("--no-resume", action="store_true", help="embed every chunk again, even those saved before")
    ix.add_argument("--overwrite", action="store_true",
                    help="replace an index of another model or data in OUT (otherwise an error)")
    add_loader_arguments(ix)

    se = add_command(group, "search", run_search)
    se.add_argument("--index", required=True, metavar="IDX", help="index folder written by `medmoe align index`")
    se.add_argument("--model", default=None, help="model to embed the query (default: the one the index was built with)")
    query = se.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", action="append", metavar="TEXT", help="query text (repeatable)")
    query.add_argument("--image", action="append", metavar="PATH", help="query image file (repeatable)")
    se.add_argument("-k", "--top-k", type=int, default=10, dest="k", help="hits per query (default 10)")
    se.add_argument("--target", choices=("images", "reports"), default="images",
                    help="what to search: the images (default) or the reports")
    se.add_argument("--json", action="store_true", help="print the hits as JSON")
    se.add_argument("--device", default="cpu", help="device of the query embedding: cpu (default), cuda, auto")


def _load(name_or_dir: str, device) -> tuple[object, str]:
    """The MedMoE model and how to name it in the index (a directory's absolute path, or the registered name)."""
    from pathlib import Path

    from medmoe.cli.models import model_from_flag

    model = model_from_flag(name_or_dir, family="medmoe", device=device)
    return model, str(Path(name_or_dir).resolve()) if Path(name_or_dir).is_dir() else name_or_dir


def run_zeroshot(args: argparse.Namespace) -> int:
    """classify every image of a folder or manifest against your class names (CSV)

    Zero-shot classification: each class is the mean text embedding of its prompts; an image's class
    probabilities are softmax(logit_scale x cosine) over the classes. Writes one CSV row per image (path,
    top_class, top_prob, expert, expert_prob, one column per class); unreadable files are listed in <out
    stem>.errors.csv and the summary, never fatal.
    """
    from medmoe.align.folder import class_prompts, zero_shot_folder
    from medmoe.devices import resolve_device

    prompts = class_prompts(args.classes, args.classes_file)
    device = resolve_device(args.device)
    model, _ = _load(args.model, device)
    result = zero_shot_folder(model, args.images, prompts, args.out, split=args.split, batch_size=args.batch_size,
                              device=device, workers=args.workers, progress=not args.no_progress)
    counts = ", ".join(f"{name} {count}" for name, count in result.counts.items())
    print(f"{result.n} images classified: {counts}")
    print(f"predictions: {result.out}")
    if result.errors:
        print(f"{len(result.errors)} unreadable (listed in {result.errors_out}):")
        for path, reason in result.errors[:20]:
            print(f"  {reason}" if path in reason else f"  {path}: {reason}")
        if len(result.errors) > 20:
            print(f"  ... {len(result.errors) - 20} more")
    return 0


def run_index(args: argparse.Namespace) -> int:
    """embed a manifest or shards and build a FAISS search index (resumable, torchrun)

    Embed every image and report of MANIFEST|SHARDS and save a search index folder: FAISS indexes of the image
    and report embeddings, the items (id, path, report) and meta.json (index kind and parameters, model).
    Embeddings are saved in chunks under OUT/parts/: an interrupted run continues where it stopped. Under
    torchrun every rank embeds a share of the chunks and rank 0 builds the index.
    """
    from medmoe.align.index import SearchIndex, build_index
    from medmoe.train.distributed import setup_distributed, teardown_distributed

    env = setup_distributed(args.device)
    ok = False
    try:
        model, name = _load(args.model, env.device)
        out = build_index(model, args.data, args.out, kind=args.kind, batch_size=args.batch_size, device=env.device,
                          workers=args.workers, progress=not args.no_progress, resume=not args.no_resume,
                          split=args.split, chunk_size=args.chunk_size, model_name=name, overwrite=args.overwrite)
        ok = True
    finally:
        teardown_distributed(env, synchronize=ok)
    if env.rank == 0:
        meta = SearchIndex.load(out).meta
        params = ", ".join([meta["params"]["factory"]] + [f"{k}={v}" for k, v in meta["params"].items()
                                                         if k != "factory"])
        print(f"{meta['n']} items indexed ({', '.join(meta['targets'])}); {meta['kind']} index ({params}); "
              f"{meta['unreadable']} unreadable (listed in {out / 'errors.csv'})")
        print(f"index: {out}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    """search an index by text or by example image; prints the top hits with scores

    Embed the query with the model and print the index's k most similar items (cosine). --target images
    searches the image embeddings (text->image, image->image); --target reports the report embeddings
    (image->text, text->text).
    """
    import json
    from dataclasses import asdict

    from medmoe.align.index import SearchIndex
    from medmoe.devices import resolve_device
    from medmoe.errors import InvalidInputError

    index = SearchIndex.load(args.index)
    name = args.model or index.meta["model"]
    if name == "<in memory>":
        raise InvalidInputError(f"{args.index}: built from a model in memory; give --model")
    model, _ = _load(name, resolve_device(args.device))
    queries = args.text or args.image
    search = index.search_text if args.text else index.search_image
    results = search(model, queries, k=args.k, target=args.target)
    if args.json:
        print(json.dumps({"index": args.index, "model": name, "target": args.target, "kind": index.meta["kind"],
                          "queries": [{"query": q, "hits": [asdict(h) for h in hits]}
                                      for q, hits in zip(queries, results)]}, indent=2))
        return 0
    what = "text" if args.text else "image"
    for query, hits in zip(queries, results):
        print(f"{what} {query!r} -> {args.target} ({index.meta['kind']} index of {index.meta['n']} items)")
        for h in hits:
            report = " ".join(h.report.split())
            report = report if len(report) <= 70 else report[:67] + "..."
            print(f"{h.rank:>4}  {h.score:.4f}  {h.id:<12} {h.path}" + (f"  | {report}" if report else ""))
    return 0
