"""Experiment: medmoe-nano with 6 experts vs the same model with 1 expert on the modality benchmark.

Same data, steps, batch and seed for both; 3 seeds. For each run: text->image and image->text R@1 on the
held-out test split (with a paired bootstrap interval of the K=6 - K=1 difference over the test pairs,
seeds pooled), and how well the image router's expert (no report, no label at inference) agrees
with the modality of the test images (best one-to-one expert <-> modality mapping, and the identity
mapping that label-supervised routing aims at). Optionally the same routing check on the real sample
images. Prints the table as JSON and writes it to OUT/results.json (``--results`` renames it).

    medmoe data build-samples --out samples --which modality,real
    python benchmarks/exp_align_moe_vs_single.py --data samples/modality-bench/manifest.csv \\
        --real samples/real-samples/manifest.csv --out runs/moe-vs-single
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import medmoe  # noqa: E402
from medmoe.align.compare import paired_bootstrap, verdict  # noqa: E402
from medmoe.align.evaluate import embed_dataset, make_dataset, routing_report  # noqa: E402
from medmoe.align.retrieval import retrieval_metrics  # noqa: E402
from medmoe.align.task import AlignTask, AlignTaskConfig  # noqa: E402
from medmoe.data.modalities import MODALITIES  # noqa: E402
from medmoe.settings import parse_overrides  # noqa: E402
from medmoe.train import TrainConfig, run_training  # noqa: E402


def train_seconds(seconds: float | None) -> float | None:
    """A run's training time for the results (None, JSON null, for a run reused from an earlier call)."""
    return None if seconds is None else round(seconds, 1)


def train_one(args, experts: int, seed: int, overrides: dict) -> tuple[Path, float | None]:
    run_dir = args.out / f"k{experts}_seed{seed}"
    model_dir = run_dir / "model"
    if args.reuse and (model_dir / "model.safetensors").is_file():
        return model_dir, None  # reused: not trained by this run
    task = AlignTask(AlignTaskConfig(data=str(args.data), model=args.model, seed=seed,
                                     overrides={**overrides, "num_experts": experts},
                                     upcycle_steps=args.upcycle_steps,
                                     augmentation=getattr(args, "augmentation", "mild"),
                                     **getattr(args, "task_fields", {})))
    cfg = TrainConfig(out=run_dir, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=args.warmup_steps, min_lr_ratio=0.05, weight_decay=0.05, seed=seed, device="cpu",
                      workers=args.workers, ckpt_every=args.steps, log_every=10, progress=False, amp="off")
    start = time.perf_counter()
    if (run_dir / "checkpoints").is_dir():
        cfg.resume = "latest"
    run_training(task, cfg)
    return model_dir, time.perf_counter() - start


def evaluate_one(model_dir: Path, args) -> dict:
    model = medmoe.load_model(model_dir)
    size = model.config.backbone.image_size
    emb = embed_dataset(model, make_dataset(args.eval_data or args.data, args.eval_split or None, size), progress=False)
    ret = retrieval_metrics(emb.image_embeds, emb.text_embeds, ks=(1, 5, 10), per_item=True)
    routing = routing_report(emb, model.num_experts)
    row = {
        "n_test": len(emb),
        "t2i_R@1": ret["text_to_image"]["R@1"], "t2i_R@5": ret["text_to_image"]["R@5"],
        "i2t_R@1": ret["image_to_text"]["R@1"], "i2t_R@5": ret["image_to_text"]["R@5"],
        "routing_agreement": routing.get("agreement"),
        "routing_agreement_identity": routing.get("agreement_identity"),
        "expert_usage": [round(u, 3) for u in routing["usage"]],
        "t2i_ranks": ret["ranks"]["text_to_image"],
    }
    if args.real is not None:
        real = embed_dataset(model, make_dataset(args.real, None, size), progress=False)
        real_routing = routing_report(real, model.num_experts)
        row["real_routing_agreement_identity"] = real_routing.get("agreement_identity")
        row["real_n"] = len(real)
        names = [*MODALITIES, "unknown"]  # modality -1 (unknown) indexes the last
        row["real_routes"] = [[Path(path).name, names[m], names[e]] for path, m, e in
                              zip(real.paths, real.modality.tolist(), real.expert_index.tolist())]
    return row


def mean_std(rows: list[dict], keys: tuple[str, ...]) -> dict:
    """Mean and standard deviation over the runs (seeds) of each metric in ``keys`` that the runs have."""
    out = {}
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = {"mean": round(statistics.mean(values), 4),
                        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}
    return out


def summarise(rows: list[dict], experts: list[int]) -> dict:
    keys = ("t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5", "routing_agreement", "routing_agreement_identity",
            "real_routing_agreement_identity")
    return {f"K={k}": mean_std([r for r in rows if r["num_experts"] == k], keys) for k in experts}


def paired_difference(rows: list[dict], seeds: list[int]) -> dict:
    """K=6 minus K=1 on text->image R@1 and R@5, seeds pooled per test item, with a paired bootstrap interval
    over the test items (how much of the gap the choice of test pairs alone could make)."""
    ranks = {k: np.array([next(r["t2i_ranks"] for r in rows if r["seed"] == s and r["num_experts"] == k)
                          for s in seeds]) for k in (6, 1)}
    out = {}
    for k in (1, 5):
        result = paired_bootstrap(ranks[6] <= k, ranks[1] <= k)
        out[f"t2i_R@{k}"] = {**{key: round(v, 4) if isinstance(v, float) else v for key, v in result.items()},
                             "verdict": verdict(result, "K=6", "K=1")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="modality-bench manifest")
    parser.add_argument("--real", type=Path, default=None, help="real-samples manifest (routing check)")
    parser.add_argument("--eval-data", type=Path, default=None,
                        help="evaluate on this manifest instead of --data (e.g. a pack built with another seed)")
    parser.add_argument("--eval-split", default="test", help="rows to evaluate ('' for all rows)")
    parser.add_argument("--results", default="results.json", help="file name of the table in OUT")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="medmoe-nano")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--experts", type=int, nargs="+", default=[6, 1])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    parser.add_argument("--upcycle-steps", type=int, default=0,
                        help="sparse upcycling of the K > 1 models: one shared expert for N steps, then copied")
    parser.add_argument("--reuse", action="store_true", help="evaluate runs already trained in OUT")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a CPU shared with other jobs; 0 leaves the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = parse_overrides(args.set, example="refine_depth=2")
    rows = []
    for seed in args.seeds:
        for k in args.experts:
            model_dir, seconds = train_one(args, k, seed, overrides)
            row = {"num_experts": k, "seed": seed, "train_s": train_seconds(seconds), **evaluate_one(model_dir, args)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "t2i_ranks"}), flush=True)
    result = {
        "setup": {"model": args.model, "threads": torch.get_num_threads(), "steps": args.steps,
                  "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": args.warmup_steps,
                  "seeds": args.seeds, "overrides": overrides, "upcycle_steps": args.upcycle_steps,
                  "data": str(args.data), "eval_data": str(args.eval_data or args.data),
                  "eval_split": args.eval_split or "all"},
        "runs": rows,
        "summary": summarise(rows, args.experts),
    }
    if len(args.experts) == 2 and set(args.experts) == {6, 1}:
        wins = [next(r["t2i_R@1"] for r in rows if r["seed"] == s and r["num_experts"] == 6)
                > next(r["t2i_R@1"] for r in rows if r["seed"] == s and r["num_experts"] == 1) for s in args.seeds]
        result["paired_difference"] = paired_difference(rows, args.seeds)
        result["moe_beats_single_t2i_R@1"] = {"per_seed": wins, "mean": result["summary"]["K=6"]["t2i_R@1"]["mean"]
                                              > result["summary"]["K=1"]["t2i_R@1"]["mean"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("summary", "paired_difference") if k in result}, indent=2))


if __name__ == "__main__":
    main()
