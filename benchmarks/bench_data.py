"""Data-loading throughput at corpus scale: reduced-size decoding against decoding at full resolution,
and one loader worker against a medmoe-swin-t training step.

Generates ``--n`` full-size 3000x2500 JPEG radiographs and ``--n`` 2000x2000 12-bit DICOMs (deterministic:
gradient, ripple, a round opacity, noise) and times full passes of a DataLoader in the main process with
one intra-op thread, which is what one DataLoader worker does, with training augmentation on (the two
paths take turns, each batch's fastest of ``--repeats`` passes counts, see :func:`loader_rates`):

* ``reduced``: the pipeline as it is, :class:`ImageReportDataset` decoding at ``transform.decode_size``
  (334 px for 224: JPEG draft mode, integer box reduction) and returning uint8 items;
* ``full_resolution``: a loader without reduced-size decoding, kept in this script: ``read_image``
  without ``target_size`` (full decode, float64 at full size) and the float32 normalised transform.

It then times medmoe-swin-t training steps (forward, backward, AdamW; batch ``--train-batch`` at the
model's 224 px, batches from the reduced loader) and reports, per format and path, the ratio of one
worker's images/s to training images/s and the workers one training process needs. The PNG section
times a small PNG corpus from its manifest and from shards (streamed with :class:`ShardDataset`) at 0 and 2
workers; the last section times full-size JPEG files against shards written once at ``decode_size``.

    nice python benchmarks/bench_data.py --n 24 --device cpu

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medmoe.data.dataset import BadSample, ImageReportDataset, collate_image_report, dataset_item
from medmoe.data.manifest import ManifestRow, write_manifest
from medmoe.data.readers import read_image
from medmoe.data.shards import ShardDataset, write_shards
from medmoe.data.transforms import ImageTransform

REPORTS = (
    "FINDINGS: The heart is enlarged. Small left pleural effusion. IMPRESSION: Cardiomegaly.",
    "FINDINGS: Lungs are clear. No effusion or pneumothorax. IMPRESSION: Normal chest.",
    "FINDINGS: Focal opacity in the right lower lobe. IMPRESSION: Pneumonia.",
)


class FullResolutionDataset(ImageReportDataset):
    """The comparison arm: every image decoded at full resolution into normalised float32 items."""

    def __init__(self, manifest, image_size: int, seed: int = 0) -> None:
        super().__init__(manifest, transform=ImageTransform(image_size=image_size, train=True, normalized=True),
                         seed=seed)

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        row = self.rows[index]
        try:
            image, meta = read_image(row.image)
            item = dataset_item(self, self.epoch, index, path=row.image, image=image, image_modality=meta.modality,
                                raw_report=row.report, row_modality=row.modality, labels=row.labels)
        except Exception as err:
            item = BadSample(index, row.image, f"{type(err).__name__}: {err}")
        return item


def _picture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A radiograph-like float image in [0, 1]: smooth anatomy, a sharp-edged opacity, mottle and noise.

    The mottle (noise correlated over ~4 pixels, 6/255) and the pixel noise (2/255) make a quality-95 JPEG
    of 1.8 MB, a little more than the 1.5 MB average of MIMIC-CXR-JPG (quality 95, ~3000x2500): entropy
    decoding, which draft mode cannot skip, weighs at least as much here as on real radiographs.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx, r = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, rng.uniform(0.05, 0.2) * height
    image = 0.15 + 0.55 * x / width + 0.15 * np.sin(y / (height / rng.uniform(5, 12)))
    image += 0.12 * (((x - cx) ** 2 + (y - cy) ** 2) < r**2)
    mottle = rng.normal(0.0, 6 / 255, (height // 4, width // 4)).astype(np.float32)
    image += np.asarray(Image.fromarray(mottle).resize((width, height), Image.BILINEAR))
    image += rng.normal(0.0, 2 / 255, (height, width)).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def _write_dicom(path: Path, stored: np.ndarray) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # computed radiography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2000, 3600
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_full_size(root: Path, n: int) -> dict[str, Path]:
    """``n`` 3000x2500 JPEGs and ``n`` 2000x2000 DICOMs, one manifest per format."""
    rng = np.random.default_rng(0)
    rows: dict[str, list[ManifestRow]] = {"jpeg": [], "dicom": []}
    (root / "full").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        jpeg = root / "full" / f"cxr{i:04d}.jpg"
        Image.fromarray(np.round(_picture(2500, 3000, rng) * 255).astype(np.uint8)).save(jpeg, quality=95)
        rows["jpeg"].append(ManifestRow(image=str(jpeg), report=REPORTS[i % 3], modality="xray", split="train"))
        dicom = root / "full" / f"cr{i:04d}.dcm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _write_dicom(dicom, np.round(_picture(2000, 2000, rng) * 4095))
        rows["dicom"].append(ManifestRow(image=str(dicom), report=REPORTS[i % 3], modality="xray", split="train"))
    return {fmt: write_manifest(r, root / f"{fmt}.csv") for fmt, r in rows.items()}


def make_png_corpus(root: Path, n: int, size: int) -> Path:
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


def _batch_seconds(loader) -> tuple[list[float], int, int, str]:
    """Seconds per batch of one full pass (the first batch includes worker start-up), images, bad, dtype."""
    seconds, count, bad, dtype = [], 0, 0, ""
    start = time.perf_counter()
    for batch in loader:
        seconds.append(time.perf_counter() - start)
        count += batch["images"].shape[0]
        bad += len(batch["bad"])
        dtype = str(batch["images"].dtype).replace("torch.", "")
        start = time.perf_counter()
    return seconds, count, bad, dtype


def loader_rates(datasets: dict[str, Any], workers: int, batch_size: int, repeats: int = 1) -> dict[str, dict]:
    """Images per second of full passes over each dataset, worker start-up included.

    The datasets take turns for ``repeats`` rounds; each batch position keeps its fastest time and the
    rate is images over the sum of those (``seconds``): other processes on a shared machine slow some
    batches down, and neither taking turns nor per-batch minima favours one dataset. ``median_pass_seconds``
    is the plain median of the full passes. The main process runs with one intra-op thread, as
    DataLoader workers do.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs: dict[str, list] = {name: [] for name in datasets}
    try:
        for _ in range(repeats):
            for name, dataset in datasets.items():
                dataset.set_epoch(1)
                loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                    collate_fn=collate_image_report)
                runs[name].append(_batch_seconds(loader))
    finally:
        torch.set_num_threads(threads)
    out = {}
    for name, passes in runs.items():
        seconds = sum(min(batch) for batch in zip(*(p[0] for p in passes), strict=True))
        _, count, bad, dtype = passes[-1]
        out[name] = {"images": count, "bad": bad, "item_dtype": dtype, "seconds": round(seconds, 3),
                     "images_per_s": round(count / seconds, 2),
                     "median_pass_seconds": round(float(np.median([sum(p[0]) for p in passes])), 3)}
    return out


def train_rate(manifest: Path, device: str, batch_size: int, steps: int) -> dict:
    """medmoe-swin-t training images/s (forward, backward, AdamW) on batches of the reduced loader."""
    import medmoe

    model = medmoe.create_model("medmoe-swin-t").to(device).train()
    size = int(model.config.backbone.image_size)
    dataset = ImageReportDataset(manifest, image_size=size, train=True)
    batches = list(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_image_report))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(batch) -> None:
        out = model(batch["images"].to(device), batch["reports"], modality=batch["modality"].to(device),
                    return_loss=True)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()

    step(batches[0])  # warm-up: allocator, lazy init
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    images = 0
    for i in range(steps):
        batch = batches[i % len(batches)]
        step(batch)
        images += batch["images"].shape[0]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"model": "medmoe-swin-t", "image_size": size, "batch_size": batch_size, "steps": steps,
            "input_dtype": str(batches[0]["images"].dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
            "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="full-size images to generate per format")
    parser.add_argument("--image-size", type=int, default=224, help="model input side for the loader passes")
    parser.add_argument("--batch-size", type=int, default=8, help="loader batch size")
    parser.add_argument("--repeats", type=int, default=5,
                        help="passes per loader measurement (fastest time of each batch kept)")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed medmoe-swin-t training steps (after one warm-up)")
    parser.add_argument("--png-n", type=int, default=120, help="images of the PNG manifest section")
    parser.add_argument("--png-size", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="medmoe-bench-data-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        manifests = make_full_size(root, args.n)
        png_manifest = make_png_corpus(root / "png", args.png_n, args.png_size)
        result: dict[str, Any] = {
            "benchmark": "data_loading",
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "device": args.device,
            "image_size": args.image_size,
            "decode_size": ImageTransform(image_size=args.image_size, train=True).decode_size,
            "generate_seconds": round(time.perf_counter() - start, 2),
            "per_worker": {},
        }
        sources = {"jpeg": "3000x2500 8-bit JPEG", "dicom": "2000x2000 12-bit DICOM"}
        for fmt, manifest in manifests.items():
            rates = loader_rates({
                "reduced": ImageReportDataset(manifest, image_size=args.image_size, train=True),
                "full_resolution": FullResolutionDataset(manifest, args.image_size),
            }, 0, args.batch_size, args.repeats)
            result["per_worker"][fmt] = {
                "source": sources[fmt], "n": args.n, **rates,
                "speedup": round(rates["reduced"]["images_per_s"] / rates["full_resolution"]["images_per_s"], 2),
            }
        result["training"] = train_rate(manifests["jpeg"], args.device, args.train_batch, args.steps)
        train_ips = result["training"]["images_per_s"]
        result["worker_to_train_ratio"] = {
            f"{fmt}_{path}": round(entry[path]["images_per_s"] / train_ips, 2)
            for fmt, entry in result["per_worker"].items() for path in ("reduced", "full_resolution")
        }
        result["workers_per_training_process"] = {
            key: math.ceil(1 / ratio) for key, ratio in result["worker_to_train_ratio"].items()
        }
        png = ImageReportDataset(png_manifest, image_size=args.image_size, train=True)
        write_shards(png_manifest, root / "png-shards", per_shard=max(1, args.png_n // 4))
        png_shards = ShardDataset(root / "png-shards", image_size=args.image_size, train=True)
        for workers in (0, 2):
            rates = loader_rates({"manifest": png, "shards": png_shards}, workers, 32, args.repeats)
            result[f"png_{workers}_workers"] = {
                "source": f"{args.png_n} x {args.png_size}^2 PNG", **rates,
                "shards_over_manifest": round(rates["shards"]["images_per_s"] / rates["manifest"]["images_per_s"], 2),
            }
        # Corpus-scale advice measured: shards written once at decode_size (data shard --max-size --format jpg)
        # against the full-size JPEG files they came from, both through today's reduced-size decoding.
        decode_size = ImageTransform(image_size=args.image_size, train=True).decode_size
        write_shards(manifests["jpeg"], root / "jpeg-shards", per_shard=max(1, args.n // 2), image_format="jpg",
                     max_size=decode_size)
        rates = loader_rates({
            "full_size_files": ImageReportDataset(manifests["jpeg"], image_size=args.image_size, train=True),
            "reduced_shards": ShardDataset(root / "jpeg-shards", image_size=args.image_size, train=True),
        }, 0, args.batch_size, args.repeats)
        result["jpeg_shards_at_decode_size"] = {
            **rates, "speedup": round(rates["reduced_shards"]["images_per_s"] / rates["full_size_files"]["images_per_s"], 2),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
