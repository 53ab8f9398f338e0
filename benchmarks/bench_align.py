"""MedMoE cost, measured side by side on one batch: prints one JSON object.

* forward time of the image side (backbone + route + expert + projection) of the K=6 model over the K=1
  model (target <= 1.10: top-1 sparse dispatch runs one expert per image whatever K is), over the bare Swin
  backbone, and the released code's behaviour (every expert on every image, dense dispatch) over K=1;
* images per second for training (forward + backward + AdamW step with reports) and inference
  (``encode_image``);
* parameters with and without the idle experts (what one image runs through), with and without the
  text tower.

Timings alternate between the variants in rounds and report medians, because absolute times on a shared
machine drift; read the ratios.

    python benchmarks/bench_align.py                          # medmoe-nano, batch 32, CPU
    python benchmarks/bench_align.py --model medmoe-swin-t --batch-size 8 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import medmoe  # noqa: E402
from medmoe.moe import RouterOutput  # noqa: E402

REPORTS = [
    "Chest radiograph: mild cardiomegaly with a small left pleural effusion.",
    "Axial CT of the abdomen: a 4 mm nodule in the right hepatic lobe.",
    "Brain MRI: ring-enhancing lesion in the left frontal lobe with oedema.",
    "Ultrasound: hypoechoic mass in the right thyroid lobe with posterior shadowing.",
    "H&E section: crowded atypical glands with nuclear pleomorphism.",
    "Fundus photograph: scattered microaneurysms and hard exudates near the macula.",
]


def image_side(model, images: torch.Tensor, route: RouterOutput | None) -> torch.Tensor:
    """Image embeddings with a given route (None: the model's own image router)."""
    if route is None:
        return model.encode_image(images)
    pyramid = model.backbone(images)
    local = model.moe(pyramid.features, route=route).output
    return F.normalize(model.image_proj(local.mean(dim=(2, 3))), dim=-1)


def spread_route(batch: int, num_experts: int) -> RouterOutput:
    """Every expert hit by an equal share of the batch (the worst case for sparse dispatch)."""
    index = (torch.arange(batch) % num_experts).unsqueeze(1)
    gates = torch.ones(batch, 1)
    logits = torch.zeros(batch, num_experts)
    return RouterOutput(logits=logits, probs=logits.softmax(-1), expert_index=index, gates=gates)


def timed(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="medmoe-nano")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7, help="alternating timing rounds (median reported)")
    parser.add_argument("--repeats", type=int, default=3, help="calls per variant per round")
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    k6 = medmoe.create_model(args.model, num_experts=6).to(device).eval()
    k1 = medmoe.create_model(args.model, num_experts=1).to(device).eval()
    dense = medmoe.create_model(args.model, num_experts=6, dispatch="dense").to(device).eval()
    # Identical shared parts; expert 0 of K=1 is expert 0 of K=6.
    k1.load_state_dict({k: v for k, v in k6.state_dict().items() if k in k1.state_dict()
                        and k1.state_dict()[k].shape == v.shape}, strict=False)
    dense.load_state_dict(k6.state_dict())
    size = k6.config.backbone.image_size
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    spread = spread_route(args.batch_size, 6)
    spread = RouterOutput(*(t.to(device) for t in (spread.logits, spread.probs, spread.expert_index, spread.gates)))
    single = RouterOutput(*(t.to(device) for t in (torch.zeros(args.batch_size, 1), torch.ones(args.batch_size, 1),
                                                   torch.zeros(args.batch_size, 1, dtype=torch.long),
                                                   torch.ones(args.batch_size, 1))))
    variants = {
        "k6_spread": lambda: image_side(k6, images, spread),
        "k6_routed": lambda: image_side(k6, images, None),
        "k1": lambda: image_side(k1, images, single),
        "dense_k6": lambda: image_side(dense, images, spread),
        "backbone": lambda: k6.backbone(images),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for fn in variants.values():
            fn()  # warm-up
        for _ in range(args.rounds):
            for name, fn in variants.items():
                times[name].append(timed(fn, args.repeats))
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}

    train_model = medmoe.create_model(args.model).to(device).train()
    opt = torch.optim.AdamW([p for p in train_model.parameters() if p.requires_grad], lr=1e-4)
    reports = [REPORTS[i % len(REPORTS)] for i in range(args.batch_size)]
    modality = torch.arange(args.batch_size, device=device) % 6

    def train_step():
        out = train_model(images, reports, modality=modality, return_loss=True)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    train_step()
    train_s = timed(train_step, args.train_steps)

    text = sum(p.numel() for p in k6.text.parameters())
    expert = sum(p.numel() for p in k6.moe.experts[0].parameters())
    row = {
        "bench": "align",
        "model": args.model,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "image_size": size,
        "forward_ms": {k: round(v, 2) for k, v in ms.items()},
        "ratio_k6_over_k1": round(ms["k6_spread"] / ms["k1"], 3),
        "ratio_k6_routed_over_k1": round(ms["k6_routed"] / ms["k1"], 3),
        "ratio_k6_over_backbone": round(ms["k6_spread"] / ms["backbone"], 3),
        "ratio_dense_k6_over_k1": round(ms["dense_k6"] / ms["k1"], 3),
        "train_images_per_s": round(args.batch_size / train_s, 1),
        "infer_images_per_s": round(1000 * args.batch_size / ms["k6_routed"], 1),
        "params": {
            "total": k6.num_parameters(),
            "active": k6.num_parameters(active=True),
            "total_without_text": k6.num_parameters() - text,
            "active_without_text": k6.num_parameters(active=True) - text,
            "backbone": sum(p.numel() for p in k6.backbone.parameters()),
            "per_expert": expert,
            "text": text,
        },
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
