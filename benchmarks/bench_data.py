"""Data-loading throughput: manifest vs shards, 0 vs 2 workers, and the loader / training-step ratio.

Generates ``--n`` grey PNG images in a temporary folder, writes a manifest and tar shards, and times full
passes of a DataLoader (training augmentation on) over the manifest, the streamed shards (ShardDataset)
and the indexed shards (IndexedShardDataset). When ``medmoe.create_model("medmoe-nano")``
is available it also times medmoe-nano training steps (forward, backward, AdamW) on batches from the same
pipeline and reports ``loader_to_train_ratio`` = loader samples/s (2 workers, the model's input size) over
training samples/s: above 1 the loader keeps up with training.

    python benchmarks/bench_data.py --n 300 --device cpu

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medmoe.data.dataset import ImageReportDataset, collate_image_report
from medmoe.data.manifest import ManifestRow, write_manifest
from medmoe.data.shards import IndexedShardDataset, ShardDataset, write_shards

REPORTS = (
    "FINDINGS: The heart is enlarged. Small left pleural effusion. IMPRESSION: Cardiomegaly.",
    "FINDINGS: Lungs are clear. No effusion or pneumothorax. IMPRESSION: Normal chest.",
    "FINDINGS: Focal opacity in the right lower lobe. IMPRESSION: Pneumonia.",
)


def make_corpus(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    base = np.linspace(0, 180, size, dtype=np.float32)[None, :] + np.linspace(0, 40, size, dtype=np.float32)[:, None]
    for i in range(n):
        pixels = np.clip(base + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)
        path = root / "images" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, compress_level=1)
        rows.append(ManifestRow(image=str(path), report=REPORTS[i % 3], modality="xray", split="train"))
    return write_manifest(rows, root / "manifest.csv")


def loader_rate(dataset, workers: int, batch_size: int) -> dict:
    """Samples per second of one full pass, worker start-up included.

    The main process runs with one intra-op thread, as DataLoader workers do: per-image tensors are small,
    and on a busy machine extra threads only contend (a 224^2 transform went from 4 ms to 50 ms here).
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(1)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_image_report)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        count = bad = 0
        for batch in loader:
            count += batch["images"].shape[0]
            bad += len(batch["bad"])
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return {"samples": count, "bad": bad, "seconds": round(seconds, 3), "samples_per_s": round(count / seconds, 1)}


def train_rate(manifest: Path, device: str, batch_size: int, steps: int) -> dict:
    """medmoe-nano training throughput on real batches, and the matching loader throughput."""
    try:
        import medmoe

        model = medmoe.create_model("medmoe-nano").to(device).train()
    except Exception as err:  # the model family may not exist yet in a partial checkout
        return {"note": f"medmoe-nano not available ({type(err).__name__}: {err})"}
    size = int(model.config.backbone.image_size)
    dataset = ImageReportDataset(manifest, image_size=size, train=True)
    loader_2w = loader_rate(dataset, 2, batch_size)
    batches = list(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_image_report))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(batch) -> None:
        images = batch["images"].to(device)
        modality = batch["modality"].to(device)
        out = model(images, batch["reports"], modality=modality, return_loss=True)
        loss = out["loss"] if "loss" in out else sum(v for k, v in out.items() if k.endswith("_loss"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in batches[:2]:  # warm-up
        step(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    samples = 0
    for i in range(steps):
        batch = batches[i % len(batches)]
        step(batch)
        samples += batch["images"].shape[0]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    train_sps = samples / seconds
    return {
        "model": "medmoe-nano",
        "image_size": size,
        "train_samples_per_s": round(train_sps, 1),
        "loader_2_workers_samples_per_s": loader_2w["samples_per_s"],
        "loader_to_train_ratio": round(loader_2w["samples_per_s"] / train_sps, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="images to generate")
    parser.add_argument("--size", type=int, default=512, help="side of the generated PNGs")
    parser.add_argument("--image-size", type=int, default=224, help="model input side for the loader passes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--per-shard", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10, help="timed medmoe-nano training steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="medmoe-bench-data-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        manifest = make_corpus(root, args.n, args.size)
        generate_s = time.perf_counter() - start
        start = time.perf_counter()
        shards = write_shards(manifest, root / "shards", per_shard=args.per_shard)
        shard_s = time.perf_counter() - start
        result = {
            "benchmark": "data_loading",
            "n": args.n,
            "source_size": args.size,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "train_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "generate_seconds": round(generate_s, 2),
            "write_shards_seconds": round(shard_s, 2),
            "shards": len(shards.shards),
        }
        for workers in (0, 2):
            result[f"manifest_{workers}_workers"] = loader_rate(
                ImageReportDataset(manifest, image_size=args.image_size, train=True), workers, args.batch_size
            )
            result[f"shards_{workers}_workers"] = loader_rate(
                ShardDataset(root / "shards", image_size=args.image_size, train=True), workers, args.batch_size
            )
            result[f"indexed_shards_{workers}_workers"] = loader_rate(
                IndexedShardDataset(root / "shards", image_size=args.image_size, train=True), workers, args.batch_size
            )
        result["shards_vs_manifest_2_workers"] = round(
            result["shards_2_workers"]["samples_per_s"] / result["manifest_2_workers"]["samples_per_s"], 2
        )
        result["training"] = train_rate(manifest, args.device, args.batch_size, args.steps)
        result["device"] = args.device
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
