"""GPU smoke run: MedMoE alignment trained from synthetic tar shards, then a few MoME segmentation steps.

Writes a few hundred generated images with modality-specific reports, packs them into shards with
``medmoe.data.write_shards``, trains ``--model`` on the shard folder through the shared trainer
(``run_training(AlignTask(...), TrainConfig(...))``, the path of ``medmoe align train --data SHARDS``) and
prints one JSON object:

- ``images_per_s``: samples over the time spent in training steps (``summary.json`` ``step_time_s``;
  model building, text caching and export excluded); ``images_per_s_wall`` counts the whole run;
- ``peak_memory_gib``: ``torch.cuda.max_memory_allocated`` over the run (CUDA only);
- ``data_wait_share``: of the step time, the part spent waiting for the next batch (the loader's share;
  near 0 means the GPU is the bottleneck, not the data pipeline);
- the same for ``--seg-steps`` MoME steps on generated CT phantoms (0 skips them), then whole-CT prediction
  of the trained model (13 prompts, autocast, stitching on the CPU) on a 256 x 256 x 240 phantom at 1.5 mm.

Defaults are sized for one modern GPU (well under 8 minutes on an H100/H200, bf16). On a CPU it checks the
wiring in a few minutes::

    python benchmarks/gpu_smoke.py                                     # CUDA, medmoe-swin-t, bf16
    python benchmarks/gpu_smoke.py --device cpu --model medmoe-nano --steps 3 --batch-size 8 \\
        --samples 64 --workers 2 --seg-model mome-nano --seg-steps 2 --seg-batch-size 1 \\
        --predict-fov-mm 96 96 96
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MODALITY_REPORTS = {
    "xray": ("Chest x-ray: clear lungs, no effusion.", "Chest x-ray: pleural effusion at the right base."),
    "ct": ("CT abdomen: normal study, no nodule.", "CT abdomen: small bright nodule in the liver."),
    "mri": ("MRI brain: no acute lesion.", "MRI brain: hyperintense lesion in the left lobe."),
    "ultrasound": ("Ultrasound: normal echotexture.", "Ultrasound: hypoechoic mass with posterior shadowing."),
}


def synthetic_image(rng: np.random.Generator, modality: str, finding: bool, size: int) -> np.ndarray:
    """A grey image whose structure depends on the modality and the finding (what the report says)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    if modality == "xray":
        img = 0.3 + 0.6 * (((xx - 0.5) / 0.4) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1)
        if finding:
            img[int(0.75 * size):, :] *= 0.3
    elif modality == "ct":
        img = 0.2 + 0.4 * (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.16)
        if finding:
            c = rng.uniform(0.35, 0.65, 2)
            img[((xx - c[0]) ** 2 + (yy - c[1]) ** 2) < 0.003] = 1.0
    elif modality == "mri":
        img = 0.15 + 0.5 * (((xx - 0.5) / 0.35) ** 2 + ((yy - 0.5) / 0.42) ** 2 < 1) * (0.8 + 0.2 * np.sin(20 * xx))
        if finding:
            img[((xx - 0.35) ** 2 + (yy - 0.45) ** 2) < 0.004] = 0.95
    else:
        img = np.clip(0.5 - 0.6 * yy + 0.1 * rng.standard_normal((size, size)), 0, 1) * (np.abs(xx - 0.5) < 0.45 * yy + 0.1)
        if finding:
            img[((xx - 0.5) ** 2 + (yy - 0.55) ** 2) < 0.005] *= 0.2
    return np.clip(img + 0.04 * rng.standard_normal(img.shape), 0, 1)


def write_corpus(root: Path, samples: int, size: int) -> Path:
    """``samples`` PNG images and a manifest (all in the train split); returns the manifest path."""
    rng = np.random.default_rng(0)
    rows = ["image,report,modality,split"]
    modalities = list(MODALITY_REPORTS)
    for i in range(samples):
        modality = modalities[i % len(modalities)]
        finding = bool(rng.integers(2))
        name = f"img_{i:05d}.png"
        pixels = (synthetic_image(rng, modality, finding, size) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / name)
        rows.append(f'{name},"{MODALITY_REPORTS[modality][int(finding)]}",{modality},train')
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def summary_figures(run_dir: Path, peak: int | None) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    steps_s = summary.get("step_time_s") or 0.0
    return {
        "steps": summary["steps"],
        "precision": summary["precision"],
        "compile": summary.get("compile"),
        "images_per_s": round(summary["samples_this_run"] / steps_s, 2) if steps_s else None,
        "images_per_s_wall": summary["samples_per_s"],
        "step_time_s": steps_s,
        "wall_time_s": summary["wall_time_s"],
        "data_wait_s": summary.get("data_wait_s"),
        "data_wait_share": summary.get("data_wait_share"),
        "peak_memory_gib": round(peak / 2**30, 3) if peak is not None else None,
        "final_loss": summary["final_losses"].get("loss"),
    }


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def align_part(args: argparse.Namespace, work: Path, device: torch.device) -> dict:
    from medmoe.align.task import AlignTask, AlignTaskConfig
    from medmoe.data import write_shards
    from medmoe.train import TrainConfig, run_training

    corpus = work / "corpus"
    corpus.mkdir()
    started = time.perf_counter()
    manifest = write_corpus(corpus, args.samples, args.image_px)
    shards = work / "shards"
    written = write_shards(manifest, shards, per_shard=args.per_shard, shuffle_seed=0)
    prepared = time.perf_counter() - started
    overrides = {"backbone": {"gradient_checkpointing": True}} if args.checkpointing else {}
    task = AlignTask(AlignTaskConfig(data=str(shards), model=args.model, overrides=overrides, val_data=None))
    cfg = TrainConfig(out=work / "align_run", steps=args.steps, batch_size=args.batch_size, lr=1e-4,
                      warmup_steps=max(1, args.steps // 10), amp=args.amp, device=args.device, workers=args.workers,
                      ckpt_every=args.steps, log_every=max(1, args.steps // 10), progress=False,
                      compile=args.compile, compile_backend=args.compile_backend)
    reset_peak(device)
    run_training(task, cfg)
    out = summary_figures(cfg.out, peak_memory(device))
    out.update(model=args.model, batch_size=args.batch_size, workers=args.workers, shards=len(written.shards),
               samples=written.samples, prepare_s=round(prepared, 2), gradient_checkpointing=args.checkpointing)
    return out


def seg_part(args: argparse.Namespace, work: Path, device: torch.device) -> dict:
    from medmoe.seg.task import SegTask, SegTaskConfig
    from medmoe.train import TrainConfig, run_training
    from medmoe_samples.ct.phantom_pack import build_phantom_pack

    datalist = build_phantom_pack(work / "phantoms", seed=0, sizes=(2, 0, 0), progress=False)
    task = SegTask(SegTaskConfig(data=str(datalist), model=args.seg_model, val_split=None, progress=False,
                                 channels_last=device.type == "cpu", cache_dir=str(work / "cache")))
    cfg = TrainConfig(out=work / "seg_run", steps=args.seg_steps, batch_size=args.seg_batch_size, lr=1e-4,
                      warmup_steps=1, amp=args.amp, device=args.device, workers=args.workers,
                      ckpt_every=args.seg_steps, log_every=1, progress=False)
    reset_peak(device)
    run_training(task, cfg)
    out = summary_figures(cfg.out, peak_memory(device))
    out.update(model=args.seg_model, batch_size=args.seg_batch_size, patches_per_s=out.pop("images_per_s"))
    out["predict"] = predict_part(cfg.out / "model", device, tuple(args.predict_fov_mm))
    return out


def predict_part(model_dir: Path, device: torch.device, fov_mm: tuple[float, float, float]) -> dict:
    """Whole-CT prediction of the trained model (13 prompts, windows on ``device`` with autocast, stitching
    on the CPU) on a 1.5 mm phantom CT covering ``fov_mm`` (default 256 x 256 x 240 voxels): seconds and
    peak GPU memory."""
    import medmoe
    from medmoe.data.volumes import Volume
    from medmoe.seg.predict import predict_volume
    from medmoe_samples.ct.phantoms import Grid, render_phantom

    phantom = render_phantom((9, 0), Grid.make((1.5, 1.5, 1.5), fov_mm=fov_mm))
    volume = Volume(array=phantom.image.astype(np.float32), affine=phantom.affine, path="phantom")
    model = medmoe.load_model(model_dir, device=device)
    prompts = ["liver", "spleen", "kidney_left", "kidney_right", "stomach", "aorta", "pancreas", "gallbladder",
               "esophagus", "inferior_vena_cava", "portal_vein_and_splenic_vein", "adrenal_gland_left",
               "adrenal_gland_right"]
    reset_peak(device)
    start = time.perf_counter()
    prediction = predict_volume(model, volume, prompts, device=device, sw_batch_size=4, progress=False,
                                allow_free_text=True)
    seconds = time.perf_counter() - start
    return {"ct_shape": list(volume.shape), "prompts": len(prompts), "seconds": round(seconds, 2),
            "autocast": prediction.meta.get("autocast"), "peak_memory_gib": _gib(peak_memory(device))}


def _gib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**30, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--model", default="medmoe-swin-t")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64, help="per step (one GPU)")
    parser.add_argument("--samples", type=int, default=512, help="generated image-report pairs")
    parser.add_argument("--image-px", type=int, default=256, help="side of the generated images")
    parser.add_argument("--per-shard", type=int, default=128)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--amp", default="bf16", help="auto, bf16, fp16 or off")
    parser.add_argument("--checkpointing", action="store_true", help="backbone.gradient_checkpointing=true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--seg-model", default="mome-swinunetr")
    parser.add_argument("--seg-steps", type=int, default=20, help="MoME steps on phantoms (0: skip)")
    parser.add_argument("--seg-batch-size", type=int, default=2)
    parser.add_argument("--predict-fov-mm", type=float, nargs=3, default=(384.0, 384.0, 360.0),
                        help="field of view of the whole-CT prediction phantom at 1.5 mm (default 256x256x240 voxels)")
    parser.add_argument("--keep", type=Path, help="keep the shards and run directories here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu for a wiring check)")
    report = {
        "benchmark": "gpu_smoke",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "amp": args.amp,
    }
    with tempfile.TemporaryDirectory(prefix="medmoe-gpu-smoke-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report["align"] = align_part(args, work, device)
        if args.seg_steps > 0:
            report["seg"] = seg_part(args, work, device)
        else:
            report["seg"] = None
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
