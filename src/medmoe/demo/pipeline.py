"""The demo: build the built-in data, train and evaluate MedMoE against a one-expert baseline, train MoME on
CT phantoms plus two real CTs (each its own partially labelled dataset), evaluate it on held-out phantoms
and on a third real CT it never trained on (the TotalSegmentator DICOM series), and write ``report.html`` +
``metrics.json``.

Every number in the report is computed in the run that writes it; only the data (deterministic by seed)
is reused when it is already there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmoe.demo.budget import FULL, QUICK, DemoBudget
from medmoe.demo.ownership import claim_output_dir, owned_fresh
from medmoe.errors import MedMoEError
from medmoe.paths import write_text_atomic

log = logging.getLogger(__name__)

ALIGN_DATASETS = ("modality-bench", "iu-cxr", "real-samples")
# Retrieval of the MoE and the one-expert model is compared pair by pair on the two test splits.
COMPARED_DATASETS = ("modality-bench", "iu-cxr")
REAL_CT_PROMPTS = ("liver", "spleen", "kidney left", "kidney right")  # free text: resolved through synonyms
# What each real training CT teaches: the classes of its label map kept in training (the rest of the map is
# never prompted). The 3 mm abdomen-pelvis CT teaches the phantoms' eight organs; the 1.5 mm chest CT of the
# aorta report its aorta and heart (its brachiocephalic and coeliac trunks are a few voxels at the demo's 6 mm).
REAL_CT_CLASSES = ("liver", "spleen", "kidney_left", "kidney_right", "stomach", "gallbladder", "pancreas", "aorta")
REAL_CT_DATASET = "example-ct"
AORTA_CT_CLASSES = ("aorta", "heart")
AORTA_CT_DATASET = "aorta-report"
# pack dataset -> (the demo's dataset name, the classes it trains)
REAL_TRAINING = {"TotalSegmentator": (REAL_CT_DATASET, REAL_CT_CLASSES),
                 "aorta-report": (AORTA_CT_DATASET, AORTA_CT_CLASSES)}


@dataclass
class DemoResult:
    out: Path
    metrics: dict[str, Any]
    report: Path
    summary_rows: list[tuple[str, str, str]] = field(default_factory=list)


@contextmanager
def step(name: str, timings: dict[str, float], say: Callable[[str], None]) -> Iterator[None]:
    """Times one stage and names it in the error if it fails."""
    start = time.perf_counter()
    say(f"[demo] {name} ...")
    try:
        yield
    except MedMoEError as exc:
        raise MedMoEError(f"demo step '{name}' failed: {exc}") from exc
    finally:
        timings[name] = round(time.perf_counter() - start, 1)
    say(f"[demo] {name}: done in {timings[name]:.0f} s")


def build_data(root: Path, budget: DemoBudget, seed: int, progress: bool) -> dict[str, Path]:
    """The image-report packs and the CT packs; each is built only if its manifest/datalist is missing."""
    from medmoe_samples.ct.phantom_pack import build_phantom_pack
    from medmoe_samples.ct.totalseg import build_totalseg_pack
    from medmoe_samples.pairs import build_samples

    images = root / "images"
    which = tuple(key for key, name in zip(("modality", "iu", "real"), ALIGN_DATASETS)
                  if not (images / name / "manifest.csv").is_file())
    if which:
        build_samples(images, seed=seed, which=which, n_per_modality=budget.n_per_modality,
                      iu_limit=budget.iu_limit, progress=progress)
    phantoms = root / "ct" / "phantoms" / "datalist.json"
    if not phantoms.is_file():
        build_phantom_pack(phantoms.parent, seed=seed, quick=budget.seg_quick_data, progress=progress)
    real = root / "ct" / "totalseg" / "datalist.json"
    if not real.is_file() or AORTA_CT_DATASET not in json.loads(real.read_text()).get("label_maps", {}):
        build_totalseg_pack(real.parent)  # absent, or written before the aorta-report CT joined the pack
    return {**{name: images / name / "manifest.csv" for name in ALIGN_DATASETS}, "phantoms": phantoms,
            "totalseg": real}


def combined_manifest(manifests: list[Path], out: Path) -> Path:
    """One manifest with the rows of several (image paths rewritten relative to ``out``)."""
    from medmoe.data.manifest import read_manifest, write_manifest

    write_manifest([row for m in manifests for row in read_manifest(m)], out)
    return out


def _entries(doc: dict, root: Path, split: str, dataset: str | None = None) -> list[dict]:
    """A split's entries with absolute paths (so a derived datalist can live anywhere), optionally renamed."""
    renamed = {"dataset": dataset} if dataset else {}
    return [{**e, "image": str((root / e["image"]).resolve()), "label": str((root / e["label"]).resolve()),
             **renamed} for e in doc.get(split, [])]


def seg_training_datalist(phantoms: Path, real: Path, out: Path) -> Path:
    """The phantom datalist plus the real training CTs, each as one more partially labelled dataset.

    Each real CT of ``real``'s training split joins under the name :data:`REAL_TRAINING` gives its pack
    dataset and keeps only that entry's classes of its label map, so training prompts stay few; the
    validation and test splits stay the phantoms'. Paths become absolute so ``out`` can live anywhere.
    """
    ph, ct = json.loads(phantoms.read_text()), json.loads(real.read_text())
    label_maps = {**ph.get("label_maps", {})}
    training = _entries(ph, phantoms.parent, "training")
    names = []
    for source, (name, classes) in REAL_TRAINING.items():
        rows = [e for e in ct.get("training", []) if e.get("dataset") == source]
        if not rows:
            continue
        source_map = ct.get("label_maps", {}).get(source, {})
        keep = {i: c for i, c in source_map.items() if c in classes}
        if set(keep.values()) != set(classes):
            raise MedMoEError(f"{real}: the label map of {source} lacks {sorted(set(classes) - set(keep.values()))}")
        label_maps[name] = keep
        training += _entries({"training": rows}, real.parent, "training", name)
        names.append(name)
    if not names:
        raise MedMoEError(f"{real}: no training CT of {sorted(REAL_TRAINING)}")
    doc = {**ph, "description": f"{ph.get('description', 'phantoms')} + the real CTs {', '.join(names)}",
           "label_maps": label_maps, "training": training}
    doc.update({split: _entries(ph, phantoms.parent, split)
                for split in ("validation", "test") if split in ph})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    return out


def real_test_datalist(real: Path, training: Path, out: Path) -> tuple[Path, list[str]]:
    """The real CTs of ``real``'s test split (the DICOM series, never trained on) as a datalist of their own,
    and the classes to score there: those some training dataset labels and the test label map shows.

    Returns:
        (datalist path, classes in template order), classes present in at least one test label (a class
        trained but absent from the slab has no Dice).
    """
    from medmoe.data.volumes import read_label
    from medmoe.seg.data import load_datalist

    ct = json.loads(real.read_text())
    doc = {"description": "the real test CT(s) of the TotalSegmentator pack (never trained on)",
           "label_maps": ct.get("label_maps", {}), "test": _entries(ct, real.parent, "test")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    train_list = load_datalist(training)
    trained = set(train_list.class_names({e["dataset"] for e in train_list.entries("training")}))
    test = load_datalist(out)
    present: set[str] = set()
    for e in test.entries("test"):
        table = test.template.label_map(e["dataset"])
        ids = np.unique(read_label(e["label"]).array)
        present.update(table[int(i)] for i in ids if int(i) in table)
    classes = [n for n in test.template.names if n in trained and n in present]
    if not classes:
        raise MedMoEError(f"{real}: its test CT shows none of the trained classes")
    return out, classes


def _fresh(directory: Path) -> Path:
    """Empty a run folder of the demo: only inside the output folder the demo claimed (its marker file)."""
    out = next(p for p in directory.parents if p.name == "runs").parent
    return owned_fresh(directory, out)


def train_align(train_manifest: Path, run_dir: Path, num_experts: int, budget: DemoBudget, *, seed: int,
                device: str, progress: bool) -> tuple[Path, dict[str, Any]]:
    from medmoe.align.task import AlignTask, AlignTaskConfig

    task = AlignTask(AlignTaskConfig(data=str(train_manifest), model=budget.align_model,
                                     overrides={"num_experts": num_experts}, seed=seed))
    return _train(task, run_dir, steps=budget.align_steps, batch_size=budget.align_batch, lr=budget.align_lr,
                  warmup_steps=budget.align_warmup, seed=seed, device=device, progress=progress)


def _train(task: Any, run_dir: Path, *, steps: int, batch_size: int, lr: float, warmup_steps: int, seed: int,
           device: str, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Train ``task`` in a fresh ``run_dir`` (one checkpoint at the end); the model folder and a summary."""
    from medmoe.train import TrainConfig, run_training

    result = run_training(task, TrainConfig(
        out=_fresh(run_dir), steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, workers=0,
        seed=seed, device=device, ckpt_every=steps, keep_ckpts=1, log_every=max(1, steps // 20),
        progress=progress))
    return Path(result.model_dir), {"steps": result.steps, "seconds": round(result.wall_time_s, 1),
                                    "samples_per_s": round(result.samples_per_s, 2),
                                    "bad_samples": result.bad_samples, "final_losses": result.final_losses}


def evaluate_align(model_dir: Path, manifests: dict[str, Path], out_dir: Path, budget: DemoBudget, *,
                   device: str, progress: bool) -> dict[str, Any]:
    import medmoe
    from medmoe.align.evaluate import evaluate

    model = medmoe.load_model(model_dir, device=device)
    return {name: evaluate(model, manifests[name], split="test", out=out_dir / f"{name}.json",
                           probe_split="train" if name == "modality-bench" and budget.align_probe else None,
                           device=device, max_items=budget.align_eval_max, progress=progress,
                           attention_examples=4 if name != "real-samples" else 0, per_item=True)
            for name in ALIGN_DATASETS}


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
              progress: bool, augmentation: Any = None) -> tuple[Path, dict[str, Any]]:
    """Train mome-nano at the budget's settings (``augmentation``: a preset name or an ``Augmentation``,
    default the budget's)."""
    from medmoe.seg.task import SegTask, SegTaskConfig

    task = SegTask(SegTaskConfig(data=str(datalist), model="mome-nano", overrides=dict(budget.seg_overrides),
                                 patch_size=budget.seg_patch, spacing=budget.seg_spacing, seed=seed,
                                 val_split=None, progress=progress, soft_labels=budget.seg_soft_labels,
                                 augmentation=budget.seg_augmentation if augmentation is None else augmentation,
                                 cache_dir=str(run_dir.parent / "cache")))
    return _train(task, run_dir, steps=budget.seg_steps, batch_size=budget.seg_batch, lr=budget.seg_lr,
                  warmup_steps=budget.seg_warmup, seed=seed, device=device, progress=progress)


def evaluate_seg(model_dir: Path, datalist: Path, out_dir: Path, budget: DemoBudget, *, device: str,
                 progress: bool, split: str = "test", overlays: bool = True) -> dict[str, Any]:
    """Held-out phantoms (``split`` of the phantom datalist), scored on the classes each case labels."""
    import medmoe
    from medmoe.seg.evaluate import evaluate

    model = medmoe.load_model(model_dir, device=device)
    name = "phantoms" if split == "test" else f"phantoms-{split}"
    return evaluate(model, datalist, split=split, out=out_dir / f"{name}.json",
                    overlay_dir=out_dir / "overlays" if overlays else None, device=device, progress=progress,
                    max_cases=budget.seg_eval_cases, overlap=budget.seg_overlap)


def evaluate_real_test(model_dir: Path, datalist: Path, classes: list[str], out_dir: Path, budget: DemoBudget, *,
                       device: str, progress: bool) -> dict[str, Any]:
    """The real CT never trained on (the DICOM series): ``evaluate`` on ``classes``, with an overlay figure.

    Returns ``evaluate``'s report plus ``classes`` and ``figure`` (the overlay PNG).
    """
    import medmoe
    from medmoe.seg.evaluate import evaluate

    model = medmoe.load_model(model_dir, device=device)
    report = evaluate(model, datalist, split="test", classes=classes, out=out_dir / "real_ct_test.json",
                      overlay_dir=out_dir / "real_ct_test", device=device, progress=progress,
                      overlap=budget.seg_overlap)
    from medmoe.data.volumes import read_ct

    figure = next((c["overlay"] for c in report["cases"] if c.get("overlay")), None)
    volumes: dict[str, dict[str, float]] = {}
    for case in report["cases"]:  # one case (the DICOM series): reference and predicted volume per class
        voxel_ml = float(np.prod(read_ct(case["path"]).spacing)) / 1000.0
        volumes = {c: {"reference_ml": round(m["gt_voxels"] * voxel_ml, 2), "predicted_ml": round(m["pred_voxels"] * voxel_ml, 2)}
                   for c, m in case["metrics"].items()}
    return {**report, "classes": list(classes), "figure": figure, "volumes_ml": volumes}


def predict_real_ct(model_dir: Path, datalist: Path, out_dir: Path, budget: DemoBudget, *,
                    device: str) -> dict[str, Any]:
    """Predict the demo organs on the real example CT (a training scan: this checks the fit and the
    whole-CT path, not generalisation) and score them against TotalSegmentator's masks."""
    import medmoe
    from medmoe.data.volumes import read_ct, read_label
    from medmoe.seg.data import load_datalist
    from medmoe.seg.metrics import case_metrics
    from medmoe.seg.overlay import save_overlay
    from medmoe.seg.predict import predict_volume, save_prediction

    model = medmoe.load_model(model_dir, device=device)
    lst = load_datalist(datalist)
    entry = next(e for e in lst.entries("training") if e["dataset"] == "TotalSegmentator")
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
             progress: bool = True, say: Callable[[str], None] = log.info, overwrite: bool = False) -> DemoResult:
    """Run every stage of the demo; see the module docstring. Returns the metrics and the report's path.

    ``out`` is claimed first (:func:`~medmoe.demo.ownership.claim_output_dir`): a non-empty folder the demo
    did not create is refused unless ``overwrite``, and only the demo's own run folders are ever replaced.
    """
    from medmoe.demo.summary import build_report, summary_rows

    out = Path(out)
    claim_output_dir(out, overwrite=overwrite)
    budget = QUICK if quick else FULL
    timings: dict[str, float] = {}
    data_root = out / "data" / ("quick" if quick else "full")
    with step("build the built-in data", timings, say):
        data = build_data(data_root, budget, seed, progress)
    train_manifest = combined_manifest([data["modality-bench"], data["iu-cxr"]], out / "runs" / "align-train.csv")
    align: dict[str, Any] = {}
    for label, k in (("moe", 6), ("single", 1)):
        with step(f"train {budget.align_model} with {k} expert{'s' if k > 1 else ''}", timings, say):
            model_dir, train_info = train_align(train_manifest, out / "runs" / f"align-{label}", k, budget,
                                                seed=seed, device=device, progress=progress)
        with step(f"evaluate {budget.align_model} K={k}", timings, say):
            align[label] = {"num_experts": k, "train": train_info,
                            "eval": evaluate_align(model_dir, data, out / "align" / label, budget, device=device,
                                                   progress=progress)}
    align["moe_vs_single"] = compare_align(align)
    seg_data = seg_training_datalist(data["phantoms"], data["totalseg"], out / "runs" / "seg-train.json")
    test_data, test_classes = real_test_datalist(data["totalseg"], seg_data, out / "runs" / "seg-real-test.json")
    with step("train mome-nano on CT phantoms + two real CTs", timings, say):
        seg_dir, seg_train = train_seg(seg_data, out / "runs" / "seg", budget, seed=seed, device=device,
                                       progress=progress)
    with step("evaluate mome-nano on held-out phantoms", timings, say):
        seg_eval = evaluate_seg(seg_dir, seg_data, out / "seg", budget, device=device, progress=progress)
    with step("evaluate mome-nano on the real DICOM series it never trained on", timings, say):
        real_test = evaluate_real_test(seg_dir, test_data, test_classes, out / "seg", budget, device=device,
                                       progress=progress)
    with step("predict organs on a real training CT", timings, say):
        real_ct = predict_real_ct(seg_dir, data["totalseg"], out / "seg", budget, device=device)
    metrics = {"quick": quick, "seed": seed, "device": device, "environment": _environment(),
               "budget": budget.__dict__, "timings_s": timings,
               "align": align, "seg": {"train": seg_train, "eval": seg_eval, "real_ct_test": real_test,
                                       "real_ct": real_ct}}
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, default=_json_default) + "\n")
    report = build_report(metrics, out / "report.html")
    return DemoResult(out=out, metrics=metrics, report=report, summary_rows=summary_rows(metrics))


def _environment() -> dict[str, Any]:
    """What else decides the numbers of a seeded CPU run: versions and the thread count (floating-point order)."""
    import platform

    import torch

    from medmoe import __version__

    return {"medmoe": __version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "machine": platform.machine()}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
