"""Experiment: the same MedMoE with a pretrained image backbone vs a randomly initialised one.

Two arms that differ only in the backbone's starting weights (default: ``medmoe-effnet-nano`` with its
ImageNet EfficientNet-Lite0 weights vs ``backbone.weights=null``), same data, steps, batch and seeds, trained
and evaluated as ``exp_align_moe_vs_single.py`` does (its ``train_one`` / ``evaluate_one``): text->image and
image->text recall on the held-out test split with a paired bootstrap interval of the difference over the
test pairs (seeds pooled), and the image router's agreement with the modality on the test images and on the
real sample images (never trained on). Prints JSON and writes OUT/results.json.

    medmoe data build-samples --out samples --which modality,real
    OMP_NUM_THREADS=1 python benchmarks/exp_align_pretrained_vs_random.py \\
        --data samples/modality-bench/manifest.csv --real samples/real-samples/manifest.csv \\
        --out runs/pretrained-vs-random --steps 400 --warmup-steps 30
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
from exp_align_moe_vs_single import evaluate_one, mean_std, train_one, train_seconds

from medmoe.align.compare import paired_bootstrap, verdict
from medmoe.settings import parse_overrides

KEYS = ("t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5", "routing_agreement_identity", "real_routing_agreement_identity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="modality-bench manifest")
    parser.add_argument("--real", type=Path, default=None, help="real-samples manifest (routing check)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="medmoe-effnet-nano")
    parser.add_argument("--random", default="backbone.weights=null", metavar="KEY=VALUE[,KEY=VALUE]",
                        help="overrides that make the random arm (default: no backbone weights)")
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--augmentation", default="mild", choices=("mild", "domain"),
                        help="training augmentation profile of both arms")
    parser.add_argument("--set", dest="both", default="", metavar="KEY=VALUE[,KEY=VALUE]",
                        help="model config overrides of both arms, e.g. backbone.image_size=128")
    parser.add_argument("--task", default="", metavar="KEY=VALUE[,KEY=VALUE]",
                        help="task settings of both arms, e.g. backbone_lr_scale=0.1")
    parser.add_argument("--arms", default="pretrained,random", help="which arms to run (comma-separated)")
    parser.add_argument("--reuse", action="store_true", help="evaluate runs already trained in OUT")
    args = parser.parse_args()
    args.eval_data, args.eval_split, args.upcycle_steps = None, "test", 0
    torch.set_num_threads(args.threads)
    args.task_fields = parse_overrides(args.task.split(","), example="backbone_lr_scale=0.1") if args.task else {}
    both = args.both.split(",") if args.both else []
    random_arm = parse_overrides(args.random.split(",") + both, example="backbone.weights=null")
    arms = {name: {"pretrained": parse_overrides(both, example="backbone.image_size=128"), "random": random_arm}[name]
            for name in args.arms.split(",")}
    rows: dict[str, list[dict]] = {name: [] for name in arms}
    for seed in args.seeds:
        for name, overrides in arms.items():
            arm_args = copy.copy(args)
            arm_args.out = args.out / name
            model_dir, seconds = train_one(arm_args, args.experts, seed, overrides)
            row = {"arm": name, "seed": seed, "train_s": train_seconds(seconds), **evaluate_one(model_dir, args)}
            rows[name].append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("t2i_ranks", "real_routes")}), flush=True)
    difference = {}
    for k in (1, 5) if len(arms) == 2 else ():
        hits = {name: np.array([r["t2i_ranks"] for r in rows[name]]) <= k for name in arms}
        result = paired_bootstrap(hits["pretrained"], hits["random"])
        difference[f"t2i_R@{k}"] = {**{key: round(v, 4) if isinstance(v, float) else v for key, v in result.items()},
                                    "verdict": verdict(result, "pretrained", "random")}
    result = {
        "setup": {"model": args.model, "random_arm": random_arm, "experts": args.experts, "steps": args.steps,
                  "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": args.warmup_steps,
                  "seeds": args.seeds, "threads": args.threads, "data": str(args.data), "augmentation": args.augmentation,
                  "task": args.task_fields, "both_arms": both,
                  "real": str(args.real) if args.real else None},
        "runs": [r for name in arms for r in rows[name]],
        "summary": {name: mean_std(rows[name], KEYS) for name in arms},
        "paired_difference": difference,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("summary", "paired_difference")}, indent=2))


if __name__ == "__main__":
    main()
