"""MoME's forward on each 3-D backbone kind against the matching plain MONAI network, side by side in one run.

For every kind (``swinunetr``, ``segresnet``) a MoME is built from a registered config (its backbone section
taken as is, random weights, the frozen text tower's prompt embeddings computed once up front) and the plain
MONAI network with the same backbone settings and ``out_channels=K`` (``SwinUNETR`` / ``SegResNet``): one
logit map per class from one conv, where MoME adds its scale experts, the per-class voxel router and K
dynamic heads. Forward passes (CPU, ``torch.no_grad``, batch 1) are timed interleaved so that machine drift
hits both alike; ``ratio`` = median MoME time / median plain time.

Prints one JSON object.

    python benchmarks/bench_mome_backbones.py [--size 64 64 64] [--k 4] [--repeats 5] [--threads 2]
        [--swinunetr-model mome-nano] [--segresnet-model mome-segresnet-nano]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from monai.networks.nets import SegResNet, SwinUNETR

import medmoe
from medmoe.backbones.swinunetr import norm_name

PROMPTS = ["liver", "spleen", "kidney_right", "kidney_left", "stomach", "aorta", "pancreas", "gallbladder"]


def plain_network(backbone, in_channels: int, k: int) -> torch.nn.Module:
    """The MONAI network MoME's ``backbone`` section describes, with K output channels."""
    norm = norm_name(backbone.norm, backbone.feature_size)
    if backbone.kind == "swinunetr":
        return SwinUNETR(in_channels=in_channels, out_channels=k, feature_size=backbone.feature_size,
                         depths=tuple(backbone.depths), num_heads=tuple(backbone.num_heads),
                         window_size=backbone.window_size, norm_name=norm, spatial_dims=3)
    if backbone.kind == "segresnet":
        depths = tuple(backbone.depths)
        return SegResNet(spatial_dims=3, init_filters=backbone.feature_size, in_channels=in_channels,
                         out_channels=k, norm=norm, blocks_down=depths, blocks_up=(1,) * (len(depths) - 1))
    raise SystemExit(f"no plain MONAI network for backbone kind {backbone.kind!r}")


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def compare(model_name: str, size: tuple[int, int, int], k: int, repeats: int) -> dict:
    """Median forward seconds of MoME (``model_name``) and of its plain MONAI network, and their ratio."""
    torch.manual_seed(0)
    mome = medmoe.create_model(model_name, pretrained=False, text={"model": "tiny-bert"}).eval()
    cfg = mome.config
    plain = plain_network(cfg.backbone, cfg.in_channels, k).eval()
    volume = torch.rand(1, cfg.in_channels, *size)
    with torch.no_grad():
        text_emb = mome.embed_prompts(PROMPTS[:k])
        runs = {"mome": lambda: mome(volume, text_emb=text_emb), "plain": lambda: plain(volume)}
        for run in runs.values():
            run()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                times[name].append(_seconds(run))
    mome_s, plain_s = statistics.median(times["mome"]), statistics.median(times["plain"])
    return {"model": model_name, "backbone": cfg.backbone.kind, "plain": type(plain).__name__,
            "feature_size": cfg.backbone.feature_size, "depths": list(cfg.backbone.depths),
            "mome_s": round(mome_s, 4), "plain_s": round(plain_s, 4), "ratio": round(mome_s / plain_s, 3),
            "mome_params_without_text": sum(p.numel() for p in mome.parameters())
            - sum(p.numel() for p in mome.text.parameters()),
            "plain_params": sum(p.numel() for p in plain.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=(64, 64, 64), help="input volume (D H W)")
    parser.add_argument("--k", type=int, default=4, help=f"prompted classes (at most {len(PROMPTS)})")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--swinunetr-model", default="mome-nano")
    parser.add_argument("--segresnet-model", default="mome-segresnet-nano")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(args.size)
    results = [compare(name, size, args.k, args.repeats) for name in (args.swinunetr_model, args.segresnet_model)]
    print(json.dumps({"size": list(size), "k": args.k, "repeats": args.repeats, "threads": args.threads,
                      "device": "cpu", "cpu": platform.processor() or platform.machine(),
                      "torch": torch.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
