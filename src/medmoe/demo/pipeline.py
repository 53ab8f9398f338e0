"""The demo: build the built-in data, train and evaluate MedMoE against a one-expert baseline, train and
evaluate MoME on CT phantoms, predict organs on a real CT, and write ``report.html`` + ``metrics.json``.

Every number in the report is computed in the run that writes it; only the data (deterministic by seed)
is reused when it is already there.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmoe.demo.budget import FULL, QUICK, DemoBudget
from medmoe.errors import MedMoEError

log = logging.getLogger(__name__)

ALIGN_DATASETS = ("modality-bench", "iu-cxr", "real-samples")
# Retrieval of the MoE and the one-expert model is compared pair by pair on the two test splits.
COMPARED_DATASETS = ("modality-bench", "iu-cxr")
REAL_CT_PROMPTS = ("liver", "spleen", "kidney left", "kidney right")  # free text: resolved through synonyms
REAL_CT_CLASSES = ("liver", "spleen", "kidney_left", "kidney_right")   # what the real CT teaches in training
REAL_CT_DATASET = "example-ct"


@dataclass
class DemoResult:
    out: Path
    metrics: dict[str, Any]
    report: Path
    summary_rows: list[tuple[str, str, str]] = field(default_factory=list)


class Step:
    """Times one stage and names it in the error if it fails."""

    def __init__(self, name: str, timings: dict[str, float], say: Callable[[str], None]) -> None:
        self.name, self.timings, self.say = name, timings, say

    def __enter__(self) -> Step:
        self.start = time.perf_counter()
        self.say(f"[demo] {self.name} ...")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.timings[self.name] = round(time.perf_counter() - self.start, 1)
        if exc is None:
            self.say(f"[demo] {self.name}: done in {self.timings[self.name]:.0f} s")
        elif isinstance(exc, MedMoEError):
            raise MedMoEError(f"demo step '{self.name}' failed: {exc}") from exc


def build_data(root: Path, budget: DemoBudget, seed: int, progress: bool) -> dict[str, Path]:
    """The image-report packs and the CT packs; each is built only if its manifest/datalist is missing."""
    from medmoe.data.samples import build_samples
    from medmoe.seg.samples import build_phantom_pack, build_totalseg_pack

    images = root / "images"
    which = tuple(key for key, name in zip(("modality", "iu", "real"), ALIGN_DATASETS)
                  if not (images / name / "manifest.csv").is_file())
    if which:
        build_samples(images, seed=seed, which=which, n_per_modality=budget.n_per_modality,
                      iu_limit=budget.iu_limit, progress=progress)
    paths = {name: images / name / "manifest.csv" for name in ALIGN_DATASETS}
    phantoms = root / "ct" / "phantoms" / "datalist.json"
    if not phantoms.is_file():
        build_phantom_pack(phantoms.parent, seed=seed, quick=budget.seg_quick_data, progress=progress)
    real = root / "ct" / "totalseg" / "datalist.json"
    if not real.is_file():
        build_totalseg_pack(real.parent)
    paths.update(phantoms=phantoms, totalseg=real)
    return paths


def combined_manifest(manifests: list[Path], out: Path) -> Path:
    """One manifest with the rows of several (image paths rewritten relative to ``out``)."""
    from medmoe.data.manifest import read_manifest, write_manifest

    rows = [row for m in manifests for row in read_manifest(m)]
    write_manifest(rows, out)
    return out


def seg_training_datalist(phantoms: Path, real: Path, out: Path) -> Path:
    """The phantom datalist plus the real example CT as one more partially labelled dataset.

    The real CT keeps only :data:`REAL_CT_CLASSES` of its TotalSegmentator map, so training prompts stay few;
    the validation and test splits stay the phantoms'. Paths become absolute so ``out`` can live anywhere.
    """
    def entries(doc: dict, root: Path, split: str, dataset: str | None = None) -> list[dict]:
        rows = []
        for e in doc.get(split, []):
            row = {**e, "image": str((root / e["image"]).resolve()), "label": str((root / e["label"]).resolve())}
            rows.append({**row, "dataset": dataset} if dataset else row)
        return rows

    ph, ct = json.loads(phantoms.read_text()), json.loads(real.read_text())
    ct_map = next(iter(ct["label_maps"].values()))
    keep = {i: name for i, name in ct_map.items() if name in REAL_CT_CLASSES}
    if set(keep.values()) != set(REAL_CT_CLASSES):
        raise MedMoEError(f"{real}: the real CT's label map lacks {sorted(set(REAL_CT_CLASSES) - set(keep.values()))}")
    doc = {**ph, "description": f"{ph.get('description', 'phantoms')} + the real example CT ({REAL_CT_DATASET})",
           "label_maps": {**ph.get("label_maps", {}), REAL_CT_DATASET: keep},
           "training": entries(ph, phantoms.parent, "training") + entries(ct, real.parent, "training", REAL_CT_DATASET)}
    for split in ("validation", "test"):
        if split in ph:
            doc[split] = entries(ph, phantoms.parent, split)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    return out


def _fresh(directory: Path) -> Path:
    if directory.exists():
        shutil.rmtree(directory)
    return directory


def train_align(train_manifest: Path, run_dir: Path, num_experts: int, budget: DemoBudget, *, seed: int,
                device: str, progress: bool) -> tuple[Path, dict[str, Any]]:
    from medmoe.align.task import AlignTask, AlignTaskConfig
    from medmoe.train import TrainConfig, run_training

    task = AlignTask(AlignTaskConfig(data=str(train_manifest), model="medmoe-nano",
                                     overrides={"num_experts": num_experts}, seed=seed))
    result = run_training(task, TrainConfig(
        out=_fresh(run_dir), steps=budget.align_steps, batch_size=budget.align_batch, lr=budget.align_lr,
        warmup_steps=budget.align_warmup, workers=0, seed=seed, device=device, ckpt_every=budget.align_steps,
        keep_ckpts=1, log_every=max(1, budget.align_steps // 20), progress=progress))
    return Path(result.model_dir), {"steps": result.steps, "seconds": round(result.wall_time_s, 1),
                                    "samples_per_s": round(result.samples_per_s, 2),
                                    "bad_samples": result.bad_samples, "final_losses": result.final_losses}


def evaluate_align(model_dir: Path, manifests: dict[str, Path], out_dir: Path, budget: DemoBudget, *,
                   device: str, progress: bool) -> dict[str, Any]:
    import medmoe
    from medmoe.align.evaluate import evaluate

    model = medmoe.load_model(model_dir, device=device)
    results = {}
    for name in ALIGN_DATASETS:
        probe = "train" if name == "modality-bench" and budget.align_probe else None
        results[name] = evaluate(model, manifests[name], split="test", out=out_dir / f"{name}.json",
                                 probe_split=probe, device=device, max_items=budget.align_eval_max,
                                 progress=progress, attention_examples=4 if name != "real-samples" else 0,
                                 per_item=True)
    return results


def compare_align(align: dict[str, Any]) -> dict[str, Any]:
    """MoE minus one expert on R@1 and R@5 both ways, with paired bootstrap intervals over the test pairs.

    The per-item ranks stay in the per-dataset JSON files and are dropped from the in-memory metrics.
    """
    from medmoe.align.compare import compare_retrieval

    out = {ds: compare_retrieval(align["moe"]["eval"][ds], align["single"]["eval"][ds], ks=(1, 5))
           for ds in COMPARED_DATASETS}
    for label in ("moe", "single"):
        for result in align[label]["eval"].values():
            result.pop("items", None)
    return out


def train_seg(datalist: Path, run_dir: Path, budget: DemoBudget, *, seed: int, device: str,
              progress: bool) -> tuple[Path, dict[str, Any]]:
    from medmoe.seg.task import SegTask, SegTaskConfig
    from medmoe.train import TrainConfig, run_training

    task = SegTask(SegTaskConfig(data=str(datalist), model="mome-nano", overrides=dict(budget.seg_overrides),
                                 patch_size=budget.seg_patch, spacing=budget.seg_spacing, seed=seed,
                                 val_split=None, progress=progress, soft_labels=budget.seg_soft_labels,
                                 cache_dir=str(run_dir.parent / "cache")))
    result = run_training(task, TrainConfig(
        out=_fresh(run_dir), steps=budget.seg_steps, batch_size=budget.seg_batch, lr=budget.seg_lr,
        warmup_steps=budget.seg_warmup, workers=0, seed=seed, device=device, ckpt_every=budget.seg_steps,
        keep_ckpts=1, log_every=max(1, budget.seg_steps // 20), progress=progress))
    return Path(result.model_dir), {"steps": result.steps, "seconds": round(result.wall_time_s, 1),
                                    "samples_per_s": round(result.samples_per_s, 2),
                                    "bad_samples": result.bad_samples, "final_losses": result.final_losses}


def evaluate_seg(model_dir: Path, datalist: Path, out_dir: Path, budget: DemoBudget, *, device: str,
                 progress: bool) -> dict[str, Any]:
    import medmoe
    from medmoe.seg.evaluate import evaluate

    model = medmoe.load_model(model_dir, device=device)
    return evaluate(model, datalist, split="test", out=out_dir / "phantoms.json", overlay_dir=out_dir / "overlays",
                    device=device, progress=progress, max_cases=budget.seg_eval_cases, overlap=budget.seg_overlap)


def predict_real_ct(model_dir: Path, datalist: Path, out_dir: Path, budget: DemoBudget, *,
                    device: str) -> dict[str, Any]:
    """Predict the demo organs on the real example CT and score them against TotalSegmentator's masks."""
    import medmoe
    from medmoe.seg.data import load_datalist
    from medmoe.data.volumes import read_ct, read_label
    from medmoe.seg.metrics import case_metrics
    from medmoe.seg.overlay import save_overlay
    from medmoe.seg.predict import predict_volume, save_prediction

    model = medmoe.load_model(model_dir, device=device)
    lst = load_datalist(datalist)
    entry = lst.entries("training")[0]
    ct = read_ct(entry["image"])
    prediction = predict_volume(model, ct, list(REAL_CT_PROMPTS), device=device, overlap=budget.seg_overlap)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_prediction(prediction, out_dir / "real_ct_mask.nii.gz", summary=out_dir / "real_ct_summary.json")
    label = read_label(entry["label"])
    ids = {name: int(i) for i, name in lst.template.label_map(entry["dataset"]).items()}
    reference = np.stack([label.array == ids[c] if c in ids else np.zeros(label.array.shape, bool)
                          for c in prediction.classes])
    metrics = case_metrics(prediction.masks, reference, ct.spacing, prediction.classes)
    figure = save_overlay(ct.array, ct.affine, prediction.masks, prediction.classes, out_dir / "real_ct_overlay.png",
                          reference=reference, title="mome-nano on the real TotalSegmentator example CT")
    return {"image": str(entry["image"]), "classes": prediction.classes, "metrics": metrics, "figure": str(figure),
            "volumes_ml": {c: float(m.sum()) * prediction.voxel_ml for c, m in zip(prediction.classes, prediction.masks)}}


def run_demo(out: str | Path = "demo_out", *, quick: bool = False, device: str = "cpu", seed: int = 0,
             progress: bool = True, say: Callable[[str], None] = log.info) -> DemoResult:
    """Run every stage of the demo; see the module docstring. Returns the metrics and the report's path."""
    from medmoe.demo.summary import build_report, summary_rows

    out = Path(out)
    budget = QUICK if quick else FULL
    timings: dict[str, float] = {}
    data_root = out / "data" / ("quick" if quick else "full")
    with Step("build the built-in data", timings, say):
        data = build_data(data_root, budget, seed, progress)
    train_manifest = combined_manifest([data["modality-bench"], data["iu-cxr"]], out / "runs" / "align-train.csv")
    align: dict[str, Any] = {}
    for label, k in (("moe", 6), ("single", 1)):
        with Step(f"train medmoe-nano with {k} expert{'s' if k > 1 else ''}", timings, say):
            model_dir, train_info = train_align(train_manifest, out / "runs" / f"align-{label}", k, budget,
                                                seed=seed, device=device, progress=progress)
        with Step(f"evaluate medmoe-nano K={k}", timings, say):
            align[label] = {"num_experts": k, "train": train_info,
                            "eval": evaluate_align(model_dir, data, out / "align" / label, budget, device=device,
                                                   progress=progress)}
    align["moe_vs_single"] = compare_align(align)
    seg_data = seg_training_datalist(data["phantoms"], data["totalseg"], out / "runs" / "seg-train.json")
    with Step("train mome-nano on CT phantoms + the real example CT", timings, say):
        seg_dir, seg_train = train_seg(seg_data, out / "runs" / "seg", budget, seed=seed, device=device,
                                       progress=progress)
    with Step("evaluate mome-nano on held-out phantoms", timings, say):
        seg_eval = evaluate_seg(seg_dir, seg_data, out / "seg", budget, device=device, progress=progress)
    with Step("predict organs on a real CT", timings, say):
        real_ct = predict_real_ct(seg_dir, data["totalseg"], out / "seg", budget, device=device)
    metrics = {"quick": quick, "seed": seed, "device": device, "budget": budget.__dict__, "timings_s": timings,
               "align": align, "seg": {"train": seg_train, "eval": seg_eval, "real_ct": real_ct}}
    metrics_path = out / "metrics.json"
    tmp = metrics_path.with_name(".metrics.json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    tmp.replace(metrics_path)
    report = build_report(metrics, out / "report.html")
    return DemoResult(out=out, metrics=metrics, report=report, summary_rows=summary_rows(metrics))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
