"""Turn the demo's metrics into the summary table and the HTML report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medmoe.align.compare import interval_points, verdict
from medmoe.demo.report import Figure, Section, Table, write_report

SCALE_UP = """# Image-report alignment on your own corpus (MIMIC-CXR shown), 8 GPUs:
medmoe data import mimic-cxr /data/mimic-cxr-jpg --out mimic.csv
medmoe data shard mimic.csv --out shards/          # optional, for millions of pairs
torchrun --nproc_per_node 8 -m medmoe align train --data mimic.csv --model medmoe-swin-t \\
    --out runs/medmoe-swin-t --steps 50000 --batch-size 32 --lr 5e-5 --amp bf16
medmoe align eval --model runs/medmoe-swin-t/model --data chexpert5x200.csv --out metrics.json

# Text-prompted CT segmentation on partially labelled public datasets (Decathlon-style datalist):
torchrun --nproc_per_node 8 -m medmoe seg train --data datalist.json --model mome-swinunetr \\
    --out runs/mome --steps 100000 --batch-size 2 --amp bf16
medmoe seg predict --model runs/mome/model --input ct.nii.gz --prompt liver --prompt spleen --out mask.nii.gz
medmoe seg eval --model runs/mome/model --data datalist.json --out seg_metrics.json"""


# (label, dataset, keys of the metric in an evaluation): the summary rows with both models' values
COMPARED_ROWS = (
    ("text->image R@1, modality benchmark", "modality-bench", ("retrieval", "text_to_image", "R@1")),
    ("image->text R@1, modality benchmark", "modality-bench", ("retrieval", "image_to_text", "R@1")),
    ("text->image R@1, IU chest X-ray", "iu-cxr", ("retrieval", "text_to_image", "R@1")),
    ("zero-shot finding accuracy, modality benchmark", "modality-bench", ("zero_shot", "labels", "accuracy")),
)


def _get(d: dict, *keys: str, default: float = float("nan")) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return default if d is None else d


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _align_value(metrics: dict, which: str, dataset: str, *keys: str) -> float:
    return _get(metrics["align"][which]["eval"][dataset], *keys)


def summary_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(what, MoE value, one-expert or single value) rows, in percent where the metric is a fraction."""
    rows = [(label + " (%)", *(_pct(_align_value(metrics, model, ds, *keys)) for model in ("moe", "single")))
            for label, ds, keys in COMPARED_ROWS]
    rows += [(label, _pct(_align_value(metrics, "moe", ds, "routing", "agreement")), "(one expert)")
             for label, ds in (("image router vs modality, held-out generated (%)", "modality-bench"),
                               ("image router vs modality, real images (%)", "real-samples"))]
    seg = metrics["seg"]
    rows.append(("MoME mean Dice, held-out phantoms (%)", _pct(_get(seg["eval"], "mean", "dice")), ""))
    test = seg.get("real_ct_test") or {}
    rows += [(f"MoME Dice on the unseen real DICOM series (never trained on): {organ} (%)", _pct(values.get("dice")),
              "") for organ, values in _get(test, "per_class", default={}).items()]
    fit = seg["real_ct"]["metrics"]
    rows.append((f"MoME Dice on a real training CT (fit, not generalisation): {' / '.join(fit)} (%)",
                 " / ".join(_pct(v.get("dice")) for v in fit.values()), ""))
    return rows


def summary_note(metrics: dict) -> str:
    """What the retrieval gap between the two models is worth: paired bootstrap intervals computed in this run."""
    compared = _get(metrics["align"], "moe_vs_single", default={})
    parts = []
    for ds, name in (("modality-bench", "modality benchmark"), ("iu-cxr", "IU chest X-ray")):
        r = _get(compared, ds, "text_to_image", "R@1", default=None)
        if r is None:
            continue
        parts.append(f"{name}: {100 * r['difference']:+.1f} points, 95 % interval {interval_points(r)} "
                     f"over {r['n']} test pairs (one hit = {100 / r['n']:.1f} %): {_verdict(r)}")
    if not parts:
        return ""
    return ("MoE minus one expert, text->image R@1, with a paired bootstrap interval over the test pairs: "
            + "; ".join(parts) + ".")


def _verdict(r: dict) -> str:
    return verdict(r, "MoE", "one expert")


def _comparison_table(metrics: dict) -> Table | None:
    compared = _get(metrics["align"], "moe_vs_single", default={})
    rows = [[ds, direction.replace("_to_", "->"), metric, _pct(r["a"]), _pct(r["b"]),
             f"{100 * r['difference']:+.1f}", interval_points(r), _verdict(r)]
            for ds, by_direction in compared.items() for direction in ("text_to_image", "image_to_text")
            for metric, r in _get(by_direction, direction, default={}).items()]
    if not rows:
        return None
    return Table("MoE vs one expert, pair by pair", ["dataset", "direction", "metric", "MoE %", "one expert %",
                 "difference (points)", "95 % interval", "verdict"], rows,
                 note="Both models are scored on the same test pairs. The interval comes from resampling those "
                      "pairs (paired percentile bootstrap, 10,000 resamples): a gap whose interval contains 0 "
                      "could come from the choice of test pairs alone. It does not cover seed-to-seed variation; "
                      "docs/align.md has the 3-seed experiment.")


def _align_sections(metrics: dict) -> list[Section]:
    moe, single = metrics["align"]["moe"], metrics["align"]["single"]
    models = (("MoE K=6", moe), ("one expert", single))
    rows = [[ds, direction.replace("_to_", "->"), name,
             *(_pct(_get(m["eval"][ds], "retrieval", direction, k)) for k in ("R@1", "R@5", "R@10")),
             _get(m["eval"][ds], "retrieval", direction, "median_rank"), _get(m["eval"][ds], "n")]
            for ds in ("modality-bench", "iu-cxr", "real-samples")
            for direction in ("text_to_image", "image_to_text") for name, m in models]
    retrieval = Table("Cross-modal retrieval on the test splits", ["dataset", "direction", "model", "R@1 %", "R@5 %",
                      "R@10 %", "median rank", "pairs"], rows,
                      note="R@K: share of queries whose paired item is among the K nearest. Chance R@1 = 1/pairs.")
    zs_rows = [[name, _pct(_get(e, "zero_shot", "labels", "accuracy")),
                _get(e, "zero_shot", "labels", "mean_auroc"),
                _pct(_get(e, "zero_shot", "modality", "accuracy")),
                *(_pct(_get(e, "linear_probe", "labels", f"{share}%", "accuracy")) for share in (1, 10, 100))]
               for name, e in ((name, m["eval"]["modality-bench"]) for name, m in models)]
    zero_shot = Table("Zero-shot classification and linear probe (modality benchmark)",
                      ["model", "finding acc. %", "finding mean AUROC", "modality acc. %", "probe 1 % labels",
                       "probe 10 %", "probe 100 %"], zs_rows,
                      note="Zero-shot: each class is a prompt ensemble; the nearest class embedding wins. Probe: "
                           "logistic regression on frozen global image embeddings with 1/10/100 % of the training labels.")
    train_rows = [[name, m["train"]["steps"], m["train"]["seconds"], m["train"]["samples_per_s"],
                   m["train"]["bad_samples"]] for name, m in models]
    training = Table("Training (same data, steps and seed)", ["model", "steps", "seconds", "samples/s", "bad samples"],
                     train_rows)
    figures = [Figure(path, caption) for ds, caption in (
        ("modality-bench", "Image-router confusion on held-out generated images (rows: true modality, "
                           "columns: expert chosen from the image alone)."),
        ("real-samples", "Image-router confusion on the real DICOM/JPEG/NIfTI sample images."))
        for path in _get(moe["eval"][ds], "figures", default=[]) if path.endswith("routing_confusion.png")]
    figures += [Figure(path, "Word-region attention of the MoE model: where each report word looks in its "
                             "image (as the paper's Fig. 3).")
                for path in _get(moe["eval"]["modality-bench"], "figures", default=[])
                if path.endswith("attention_maps.png")]
    name = _get(metrics, "budget", "align_model", default="medmoe-nano")
    backbone = {"medmoe-nano": "tiny Swin from random weights",
                "medmoe-effnet-nano": "EfficientNet-Lite0 with its ImageNet weights"}.get(name, "its image backbone")
    text = (f"{name} ({backbone}, frozen real MiniLM text encoder) trained on the generated modality benchmark "
            "plus the IU chest X-ray pairs (real Indiana University reports, rendered radiographs). The MoE model "
            "routes each pair to one of 6 experts by its report during training; an image router learns to "
            "predict that choice, so at test time the expert is picked from the image alone. The baseline is the "
            "same model with one expert.")
    comparison = _comparison_table(metrics)
    tables = [retrieval] + ([comparison] if comparison else []) + [zero_shot, training]
    return [Section("MedMoE: image-report alignment", text, tables, figures)]


def _scores(v: dict) -> list:
    """Dice %, HD95 mm and NSD % of a class (or the mean) in a segmentation report."""
    return [_pct(_get(v, "dice")), _get(v, "hd95"), _pct(_get(v, "nsd"))]


def _seg_sections(metrics: dict) -> list[Section]:
    seg = metrics["seg"]
    per_class = _get(seg["eval"], "per_class", default={})
    rows = [[name, *_scores(v), v.get("n", "")] for name, v in per_class.items()]
    rows.append(["mean", *_scores(_get(seg["eval"], "mean", default={})), ""])
    phantom = Table("Held-out phantoms (every organ labelled)", ["class", "Dice %", "HD95 mm", "NSD % (2 mm)", "cases"],
                    rows, note="Training data: three phantom 'datasets', each labelling a different subset of organs "
                               "(partial labels); the loss counts only the classes each dataset labels.")
    tables = [phantom]
    figures = []
    test = seg.get("real_ct_test") or {}
    if test:
        volumes = test.get("volumes_ml", {})
        test_rows = [[name, *_scores(v), _get(volumes, name, "reference_ml"),
                      _get(volumes, name, "predicted_ml")]
                     for name, v in _get(test, "per_class", default={}).items()]
        test_rows.append(["mean", *_scores(_get(test, "mean", default={})), "", ""])
        tables.append(Table(
            "Real CT never trained on (TotalSegmentator's DICOM series: 20 slices of 2 mm, upper abdomen, arms down)",
            ["class", "Dice %", "HD95 mm", "NSD % (2 mm)", "reference ml", "predicted ml"], test_rows,
            note="The classes scored are those some training dataset labels and this scan's label map shows. "
                 "Reference: TotalSegmentator's own model output shipped with its tests (not manual labels). "
                 "Two real CTs (one abdomen-pelvis, one arterial-phase chest) are all the real training data, "
                 "and this scan is a 40 mm slab, thinner than the training window (padded by its edge "
                 "slices): read these numbers as what two real scans buy, not as a benchmark."))
        if test.get("figure"):
            figures.append(Figure(test["figure"], "The unseen DICOM series: predicted contours (solid) and "
                                                  "TotalSegmentator's masks (dashed)."))
    real = seg["real_ct"]
    real_rows = [[name, _pct(v.get("dice")), _get(v, "hd95"), f"{real['volumes_ml'].get(name, float('nan')):.0f}"]
                 for name, v in real["metrics"].items()]
    tables.append(Table("A real training CT (TotalSegmentator example, abdomen-pelvis, 3 mm)", ["class", "Dice %",
                        "HD95 mm", "predicted volume ml"], real_rows,
                        note="This CT is one of the training datasets: the table shows the fit and the whole-CT "
                             "pipeline (resampling, sliding window, native-grid output) on a real scan, not "
                             "generalisation; the DICOM series above is the test."))
    figures.append(Figure(real["figure"], "Predicted contours (solid) and TotalSegmentator's masks (dashed) on the "
                                          "real training CT."))
    overlays = (sorted(Path(p) for p in _get(seg["eval"], "overlays", default=[]))
                or sorted((Path(metrics.get("out", ".")) / "seg" / "overlays").glob("*.png")))
    figures += [Figure(p, f"Held-out phantom {p.stem}: prediction (solid) vs reference (dashed).") for p in overlays[:2]]
    t = seg["train"]
    augmentation = _get(metrics, "budget", "seg_augmentation", default="light")
    text = (f"mome-nano (SwinUNETR encoder-decoder, experts on its decoder scales, a router guided by each class "
            f"prompt's MiniLM embedding, class-specific dynamic heads) trained {t['steps']} steps "
            f"({t['seconds']:.0f} s, augmentation '{augmentation}') on synthetic CT phantoms (three 'datasets', "
            f"each labelling a different subset of organs) plus two real CTs as two more datasets: "
            f"TotalSegmentator's abdomen-pelvis example (liver, spleen, kidneys, stomach, gallbladder, pancreas, "
            f"aorta labelled) and its chest CT of the aorta report (aorta and heart labelled), all partially "
            f"labelled. It is tested on the held-out phantoms and on the third real CT, a DICOM series it never "
            f"saw.")
    return [Section("MoME: text-prompted CT segmentation", text, tables, figures)]


def build_report(metrics: dict, path: str | Path) -> Path:
    path = Path(path)
    metrics = {**metrics, "out": str(path.parent)}
    rows = summary_rows(metrics)
    summary = Table("Headline numbers", ["metric", "MoE (K=6) / MoME", "one expert"], [list(r) for r in rows],
                    note=summary_note(metrics))
    timing = Table("Time per stage", ["stage", "seconds"], [[k, v] for k, v in metrics["timings_s"].items()])
    mode = "quick smoke run (tiny budgets: numbers are not meaningful)" if metrics["quick"] else "default run"
    intro = (f"Every number below was computed in this run ({mode}, device {metrics['device']}, seed "
             f"{metrics['seed']}) on medmoe's built-in offline data. Percentages are of the test split.")
    sections = [Section("Summary", "", [summary, timing]), *_align_sections(metrics), *_seg_sections(metrics),
                Section("Reproduce at scale", "The same commands train the paper-size models on real corpora:",
                        code=SCALE_UP)]
    return write_report(path, "medmoe demo report", intro, sections)
