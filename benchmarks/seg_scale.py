"""Dataset-scale figures of MoME, run by ``bench_seg.py --scale`` (side by side in one run):

- peak RSS of ``medmoe seg train`` (a few steps, cache filled by the same process) on 4 versus 24 synthetic
  CTs of 1.5 mm abdominal size: memory per rank must not grow with the number of training CTs (ratio <= 1.3);
- whole-CT prediction time of ``--fast`` versus the default on one such CT.

The CTs are the built-in phantoms rendered on a 1.5 mm grid over a 384 x 384 x 360 mm field of view
(256 x 256 x 240 voxels, the size of a 1.5 mm abdominal CT); 4 distinct phantoms are written as many times
as needed (each copy is its own file and cache entry, preprocessed like any other).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FOV_MM = (384.0, 384.0, 360.0)
SPACING = (1.5, 1.5, 1.5)


def write_cts(root: Path, n: int) -> Path:
    """``n`` labelled CTs (NIfTI, int16) and a datalist with them as training cases; returns the datalist."""
    from medmoe.data.volumes import write_nifti
    from medmoe_samples.ct.phantoms import FULL_LABELS, Grid, relabel, render_phantom

    root.mkdir(parents=True, exist_ok=True)
    grid = Grid.make(SPACING, fov_mm=FOV_MM)
    distinct = []
    for seed in range(min(n, 4)):
        phantom = render_phantom((5, seed), grid)
        distinct.append((phantom.image, relabel(phantom, FULL_LABELS).astype(np.uint8), phantom.affine))
    entries = []
    for i in range(n):
        image, label, affine = distinct[i % len(distinct)]
        write_nifti(image, affine, root / f"ct{i:03d}.nii.gz", dtype=np.int16)
        write_nifti(label, affine, root / f"label{i:03d}.nii.gz", dtype=np.uint8)
        entries.append({"image": f"ct{i:03d}.nii.gz", "label": f"label{i:03d}.nii.gz", "dataset": "scale"})
    doc = {"label_maps": {"scale": {str(k): v for k, v in FULL_LABELS.items()}}, "training": entries}
    path = root / "datalist.json"
    path.write_text(json.dumps(doc))
    return path


def train_peak_rss(datalist: Path, out: Path, steps: int, patch: int) -> dict:
    """Peak RSS (MB) of one ``medmoe seg train`` process (cache filled in-process: --cache-workers 0)."""
    cmd = [sys.executable, "-m", "medmoe", "seg", "train", "--data", str(datalist), "--out", str(out / "run"),
           "--cache-dir", str(out / "cache"), "--cache-workers", "0", "--steps", str(steps), "--batch-size", "2",
           "--workers", "0", "--spacing", *map(str, SPACING), "--patch-size", *[str(patch)] * 3,
           "--set", "text.model=tiny-bert", "--no-pretrained", "--val-split", "", "--no-progress",
           "--warmup-steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read()
    if status != 0:
        raise RuntimeError(f"seg train failed ({status}):\n{stderr[-3000:]}")
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1), "seconds": round(time.perf_counter() - start, 1)}


def rss_scaling(work: Path, sizes: tuple[int, int] = (4, 24), steps: int = 3, patch: int = 64) -> dict:
    """Peak RSS of training on ``sizes[0]`` versus ``sizes[1]`` CTs; the ratio large / small."""
    runs = {}
    for n in sizes:
        datalist = write_cts(work / f"cts{n}", n)
        runs[n] = train_peak_rss(datalist, work / f"train{n}", steps, patch)
    small, large = runs[sizes[0]], runs[sizes[1]]
    return {"cts": list(sizes), "ct_shape": [int(round(f / s)) for f, s in zip(FOV_MM, SPACING)],
            "steps": steps, "patch": patch, "runs": {str(k): v for k, v in runs.items()},
            "rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3)}


def cache_read_comparison(datalist: Path, work: Path, patch: int = 96, repeats: int = 10) -> dict:
    """Time of one training item's patch read from MONAI's ``PersistentDataset`` (torch.load of the whole
    preprocessed volume, then a crop) versus medmoe's cache (a crop out of memory maps), same CT, same
    preprocessing, files already cached and in the page cache; interleaved."""
    from monai.data import PersistentDataset

    from medmoe.seg.data import build_seg_dataset
    from medmoe.seg.patches import crop

    ds = build_seg_dataset(datalist, "training", patch_size=(patch,) * 3, spacing=SPACING, progress=False,
                           cache_dir=work / "medmoe-cache")
    entry = ds.entries[0]
    persistent = PersistentDataset([{"image": entry["image"], "label": entry["label"]}],
                                   transform=ds.cache.preprocess, cache_dir=work / "monai-cache")
    persistent[0]
    vol = ds.volume(0)
    start = tuple(max(0, (s - patch) // 2) for s in vol.shape)
    size = (patch,) * 3
    times: dict[str, list[float]] = {"monai_persistent": [], "medmoe_memmap": []}
    for _ in range(repeats):
        t = time.perf_counter()
        d = persistent[0]
        crop(np.asarray(d["image"]), start, size), crop(np.asarray(d["label"]), start, size)
        times["monai_persistent"].append(time.perf_counter() - t)
        t = time.perf_counter()
        vol = ds.volume(0)
        crop(vol.image, start, size), crop(vol.label, start, size)
        times["medmoe_memmap"].append(time.perf_counter() - t)
    median = {k: float(np.median(v)) for k, v in times.items()}
    return {"volume_shape": list(vol.shape), "patch": patch,
            "ms_per_item": {k: round(v * 1000, 2) for k, v in median.items()},
            "persistent_over_memmap": round(median["monai_persistent"] / median["medmoe_memmap"], 2)}


def predict_speed(ct: Path, model_name: str = "mome-nano", prompts: int = 4, repeats: int = 1) -> dict:
    """Whole-CT prediction time, ``fast=True`` versus the default, interleaved (random weights: speed only)."""
    import torch

    import medmoe
    from medmoe.data.volumes import read_ct
    from medmoe.seg.predict import predict_volume

    torch.manual_seed(0)
    model = medmoe.create_model(model_name, pretrained=False, text={"model": "tiny-bert"}).eval()
    names = ["liver", "spleen", "kidney_left", "kidney_right", "stomach", "aorta", "pancreas", "gallbladder"][:prompts]
    volume = read_ct(ct)
    times: dict[str, list[float]] = {"default": [], "fast": []}
    shapes = {}
    for _ in range(repeats):
        for mode in ("default", "fast"):
            t = time.perf_counter()
            out = predict_volume(model, volume, names, fast=mode == "fast", device="cpu")
            times[mode].append(time.perf_counter() - t)
            shapes[mode] = out.meta["processed_shape"]
    median = {k: float(np.median(v)) for k, v in times.items()}
    return {"model": model_name, "ct_shape": list(volume.shape), "prompts": prompts,
            "processed_shape": shapes, "seconds": {k: round(v, 2) for k, v in median.items()},
            "default_over_fast": round(median["default"] / median["fast"], 2)}


def run(work: Path, *, steps: int = 3, patch: int = 64, sizes: tuple[int, int] = (4, 24)) -> dict:
    """All three figures, side by side in one run (``bench_seg.py --scale``)."""
    out = {"rss": rss_scaling(work, sizes=sizes, steps=steps, patch=patch)}
    datalist = work / f"cts{sizes[0]}" / "datalist.json"
    out["cache_read"] = cache_read_comparison(datalist, work / "cache-read")
    from medmoe.data.volumes import write_nifti
    from medmoe_samples.ct.phantoms import Grid, render_phantom

    phantom = render_phantom((5, 0), Grid.make(SPACING))  # 192 x 160 x 128 at 1.5 mm: a short default run
    ct = write_nifti(phantom.image, phantom.affine, work / "predict_ct.nii.gz", dtype=np.int16)
    out["predict"] = predict_speed(ct)
    return out


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--work", type=Path, default=None, help="keep the generated CTs and caches here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medmoe-seg-scale-") as tmp:
        print(json.dumps(run(args.work or Path(tmp), steps=args.steps, patch=args.patch), indent=2))
