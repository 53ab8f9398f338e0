"""Experiment: what each standard remedy does for mome-nano on a real CT it never trained on.

Trains the MoME part of ``medmoe demo`` (its default budget: mome-nano, 6 mm voxels, 64 x 32 x 32 patches, soft
labels, batch 2, AdamW lr 2e-3, 30 warm-up steps, 300 steps, seed 0) on the demo's training datalist: the
three partially labelled phantom datasets plus the two real training CTs of the TotalSegmentator 2.18.0 pack
(``example-ct``: the 3 mm abdomen-pelvis example, liver, spleen, kidneys, stomach, gallbladder, pancreas,
aorta; ``aorta-report``: the 1.5 mm arterial-phase chest CT, aorta and heart). Once per variant, each
switching one remedy on over the same baseline, with the same data, steps and seed:

    light     baseline: intensity scale +-10 % and shift +-0.05 (of the HU window), each with p 0.5
    contrast  + gamma 0.7-1.5 (p 0.3), Gaussian noise sd 0.03 (p 0.15), Gaussian smoothing 0.5-1 voxel (p 0.15)
    spatial   + rotation +-15 degrees about each axis and scaling +-15 % (p 0.3), from a 1.25x larger crop
    edge      + patch centres on the body's outer surface (arms, table, air are as often in a patch as an organ)
    strong    all three (the ``strong`` preset)

The settings are the presets of ``medmoe.seg.transforms.Augmentation`` (nnU-Net's ranges), fixed before this
experiment ran; nothing is tuned on the DICOM series. Foreground handling is the same in every variant: the
CT is cropped to the body (HU above the window's bottom) before patches are drawn, and the body outside the
labelled organs is one of the patch-centre groups.

Every variant is evaluated with ``medmoe.seg.evaluate.evaluate`` (the library's whole-CT prediction: resample
to 6 mm, sliding window with overlap 0.25, probabilities back to the native grid, threshold 0.5, largest
component) on

- the DICOM series (TotalSegmentator's 20-slice 2 mm example, upper abdomen with the arms down), never
  trained on, on the classes some training dataset labels and its label map shows;
- the phantom validation split (2 cases per phantom dataset, scored on the classes each labels);
- the phantom test split (12 held-out phantoms, every class labelled): the sanity check.

``--seed S`` (S != 0) runs the variants again with another seed, stored as ``<variant>-seed<S>`` next to the
seed-0 results in the same ``--out``: the size of seed-to-seed differences, to read the variants' gaps by.

Rule for the demo's default, fixed before the run: ``strong`` (the standard remedies together) unless its
mean Dice on the phantom validation split is more than 0.05 below the ``light`` baseline's; then the variant
with the best phantom-validation mean Dice. The DICOM numbers play no part in it.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/exp_seg_real_ct.py --out runs/exp-seg-real-ct \\
        --json docs/seg-real-ct.json                    # about 5 min per variant on one core
    ... --eval-only                                     # re-evaluate the saved models (e.g. after a predict change)

Prints the results as JSON (and writes them to ``--json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import medmoe  # noqa: E402
from medmoe.demo.budget import FULL  # noqa: E402
from medmoe.demo.pipeline import (  # noqa: E402
    evaluate_real_test,
    evaluate_seg,
    real_test_datalist,
    seg_training_datalist,
    train_seg,
)
from medmoe.seg.transforms import Augmentation  # noqa: E402
from medmoe_samples.ct.phantom_pack import build_phantom_pack  # noqa: E402
from medmoe_samples.ct.totalseg import build_totalseg_pack  # noqa: E402

VARIANTS: dict[str, Augmentation] = {
    "light": Augmentation(),
    "contrast": Augmentation(contrast=True),
    "spatial": Augmentation(spatial=True),
    "edge": Augmentation(edge_patches=True),
    "strong": Augmentation.named("strong"),
}
ORGANS = ("liver", "spleen", "kidney_right", "kidney_left", "stomach", "gallbladder", "pancreas", "aorta")
RULE_MARGIN = 0.05


def build_data(root: Path, seed: int) -> tuple[Path, Path]:
    phantoms = root / "phantoms" / "datalist.json"
    if not phantoms.is_file():
        build_phantom_pack(phantoms.parent, seed=seed, progress=False)
    real = root / "totalseg" / "datalist.json"
    if not real.is_file() or "aorta-report" not in json.loads(real.read_text()).get("label_maps", {}):
        build_totalseg_pack(real.parent)
    return phantoms, real


def _scores(report: dict) -> dict:
    per_class = {c: {m: v.get(m) for m in ("dice", "hd95", "nsd")} for c, v in report["per_class"].items()}
    return {"per_class": per_class, "mean": report["mean"], "cases": len(report["cases"]), "bad": report["bad"]}


def _organ_mean(per_class: dict) -> float | None:
    values = [per_class[o]["dice"] for o in ORGANS if o in per_class and per_class[o]["dice"] is not None]
    return round(sum(values) / len(values), 4) if values else None


def run_key(name: str, seed: int) -> str:
    return name if seed == 0 else f"{name}-seed{seed}"


def run_variant(name: str, args, seg_data: Path, test_data: Path, classes: list[str]) -> dict:
    budget = dataclasses.replace(FULL, seg_steps=args.steps)
    key = run_key(name, args.seed)
    run_dir = args.out / "runs" / key  # the variants share the preprocessed CTs in OUT/runs/cache
    eval_dir = args.out / "eval" / key
    model_dir = run_dir / "model"
    result: dict = {"variant": name, "seed": args.seed, "augmentation": dataclasses.asdict(VARIANTS[name])}
    if args.eval_only:
        if not model_dir.is_dir():
            raise SystemExit(f"--eval-only: {model_dir} missing")
        info_path = eval_dir / "train.json"
        result["train"] = json.loads(info_path.read_text()) if info_path.is_file() else None
    else:
        model_dir, info = train_seg(seg_data, run_dir, budget, seed=args.seed, device="cpu", progress=False,
                                    augmentation=VARIANTS[name])
        eval_dir.mkdir(parents=True, exist_ok=True)
        (eval_dir / "train.json").write_text(json.dumps(info, indent=1))
        result["train"] = info
    start = time.perf_counter()
    dicom = evaluate_real_test(model_dir, test_data, classes, eval_dir, budget, device="cpu", progress=False)
    result["dicom"] = {**_scores(dicom), "volumes_ml": dicom["volumes_ml"], "figure": dicom["figure"]}
    val = evaluate_seg(model_dir, seg_data, eval_dir, budget, device="cpu", progress=False,
                       split="validation", overlays=False)
    result["phantom_validation"] = _scores(val)
    test = evaluate_seg(model_dir, seg_data, eval_dir, budget, device="cpu", progress=False, overlays=False)
    result["phantom_test"] = {**_scores(test), "mean_8_organs": _organ_mean(_scores(test)["per_class"])}
    result["eval_seconds"] = round(time.perf_counter() - start, 1)
    return result


def default_by_rule(results: dict) -> dict:
    val = {name: r["phantom_validation"]["mean"]["dice"] for name, r in results.items() if name in VARIANTS}
    if "strong" in val and "light" in val and val["strong"] is not None and val["light"] is not None:
        if val["strong"] >= val["light"] - RULE_MARGIN:
            return {"choice": "strong", "phantom_validation_dice": val}
    ranked = sorted((v, n) for n, v in val.items() if v is not None)
    return {"choice": ranked[-1][1] if ranked else None, "phantom_validation_dice": val}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/exp-seg-real-ct"))
    parser.add_argument("--data", type=Path, default=None, help="pack folder (default OUT/data)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=FULL.seg_steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-only", action="store_true", help="evaluate the models saved under OUT")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; expected {list(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    phantoms, real = build_data(args.data or args.out / "data", args.seed)
    seg_data = seg_training_datalist(phantoms, real, args.out / "seg-train.json")
    test_data, classes = real_test_datalist(real, seg_data, args.out / "seg-real-test.json")
    results_path = args.out / "results.json"
    old = json.loads(results_path.read_text()) if results_path.is_file() else {}
    previous = old.get("variants", {})
    command = ("OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/exp_seg_real_ct.py "
               f"--out {args.out} --variants {','.join(names)} --steps {args.steps} --seed {args.seed}"
               + (f" --json {args.json}" if args.json else "") + (" --eval-only" if args.eval_only else ""))
    commands = [c for c in old.get("commands", [old["command"]] if "command" in old else []) if c != command]
    results: dict = {}
    for name in names:
        key = run_key(name, args.seed)
        start = time.perf_counter()
        results[key] = run_variant(name, args, seg_data, test_data, classes)
        results[key]["wall_seconds"] = round(time.perf_counter() - start, 1)
        print(f"[{key}] DICOM Dice " + ", ".join(f"{c} {v['dice']}" for c, v in results[key]["dicom"]["per_class"].items())
              + f"; phantom validation {results[key]['phantom_validation']['mean']['dice']}, test 8 organs "
              f"{results[key]['phantom_test']['mean_8_organs']}", flush=True)
        doc = {**old, "variants": {**previous, **results}}
        results_path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    variants = {**previous, **results}
    doc = {
        "experiment": "mome-nano (medmoe demo's MoME budget) on phantoms + two real CTs, one remedy at a time; "
                      "evaluated on the TotalSegmentator DICOM series (never trained on) and the phantoms",
        "commands": [*commands, command],
        "settings": {"model": "mome-nano", "steps": args.steps, "batch_size": FULL.seg_batch,
                     "lr": FULL.seg_lr, "warmup_steps": FULL.seg_warmup, "spacing_mm": FULL.seg_spacing,
                     "patch": FULL.seg_patch, "soft_labels": FULL.seg_soft_labels, "overlap": FULL.seg_overlap,
                     "dicom_classes": classes, "threads": torch.get_num_threads(),
                     "torch": torch.__version__, "python": platform.python_version(), "medmoe": medmoe.__version__},
        "rule": f"demo default: strong unless its phantom-validation mean Dice is more than {RULE_MARGIN} below "
                "light's, then the best phantom-validation mean Dice; DICOM numbers not used",
        "default_by_rule": default_by_rule(variants),
        "variants": variants,
    }
    text = json.dumps(doc, indent=1, default=str)
    results_path.write_text(text + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
