"""Cost of MoE dispatch relative to one expert, measured side by side in one run.

Experts are MedMoE scale-attention experts at paper size (Swin-T pyramid 96/192/384/768 channels at
H/4..H/32 of a 224 px image, D = 768). Three ways to compute a batch, timed interleaved so machine drift
hits all of them alike:

- ``single``: one expert on the whole batch (the floor any top-1 MoE can reach);
- ``sparse_top1``: medmoe's sparse dispatch, 6 experts, routes drawn uniformly (every expert is hit);
- ``all_experts``: every expert on every sample, then top-1 selection, as the released MedMoE code does.

Prints one JSON object; ``sparse_over_single`` is the figure the MoE core is held to (<= 1.15).

    python benchmarks/bench_moe.py [--batch 32] [--repeats 3] [--image-size 224] [--dim 768]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from medmoe.align.experts import ScaleAttentionExpert
from medmoe.moe import dense_dispatch, select_experts, sparse_dispatch

CHANNELS = (96, 192, 384, 768)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    experts = [ScaleAttentionExpert(CHANNELS, args.dim).to(device).eval() for _ in range(args.experts)]
    size = args.image_size // 4
    pyramid = [torch.randn(args.batch, c, size >> s, size >> s, device=device) for s, c in enumerate(CHANNELS)]
    route = select_experts(torch.randn(args.batch, args.experts, device=device), "top1")
    hit = len(torch.unique(route.expert_index))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    candidates = {
        "single": lambda: experts[0](pyramid),
        "sparse_top1": lambda: sparse_dispatch(experts, pyramid, route.expert_index, route.gates),
        "all_experts": lambda: dense_dispatch(experts, pyramid, route.expert_index, route.gates),
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.inference_mode():
        for fn in candidates.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in candidates.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
    best = {name: min(ts) for name, ts in times.items()}
    print(json.dumps({
        "benchmark": "moe_dispatch",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "batch": args.batch, "experts": args.experts, "experts_hit": hit, "dim": args.dim,
        "image_size": args.image_size, "repeats": args.repeats,
        "seconds_best": {k: round(v, 4) for k, v in best.items()},
        "sparse_over_single": round(best["sparse_top1"] / best["single"], 3),
        "all_experts_over_single": round(best["all_experts"] / best["single"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
