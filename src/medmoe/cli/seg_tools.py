"""`medmoe seg predict | eval | build-samples`: registered on the `medmoe seg` group by ``cli/seg.py``.

Handlers import the library lazily (``medmoe --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``predict``, ``eval`` and ``build-samples`` on the ``medmoe seg`` sub-command group."""
    predict = sub.add_parser("predict", help="segment prompted classes in a CT (NIfTI file or DICOM series folder)")
    predict.add_argument("--model", required=True, help="a saved model directory (config.json + model.safetensors)")
    predict.add_argument("--input", required=True, help="CT as .nii/.nii.gz or a folder holding one DICOM series")
    predict.add_argument("--prompt", action="append", default=[], metavar="CLASS",
                         help="a class to segment (repeat; label value i = i-th prompt, later prompts win overlaps)")
    predict.add_argument("--out", required=True, help="output label map (.nii.gz), on the input's grid and affine")
    predict.add_argument("--probabilities", action="store_true",
                         help="also write one probability map per class next to --out")
    predict.add_argument("--summary", default=None, help="write a JSON summary (volume in ml per class)")
    predict.add_argument("--overlay", default=None, help="write an overlay PNG of the prediction")
    predict.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    predict.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    predict.add_argument("--sw-batch-size", type=int, default=1, help="windows per forward pass")
    predict.add_argument("--device", default=None, help="where windows run, e.g. cuda:0 (default: cpu)")
    predict.add_argument("--no-postprocess", action="store_true", help="skip largest-component / lesion clean-up")
    predict.add_argument("--allow-non-ct", action="store_true", help="skip the CT modality and HU-range checks")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.set_defaults(func=run_predict)

    ev = sub.add_parser("eval", help="Dice, HD95, NSD and tumour detection of a model on a datalist split")
    ev.add_argument("--model", required=True, help="a saved model directory")
    ev.add_argument("--data", required=True, help="datalist JSON")
    ev.add_argument("--out", required=True, help="metrics JSON to write")
    ev.add_argument("--split", default="test", choices=("training", "validation", "test"))
    ev.add_argument("--class", dest="classes", action="append", default=None, metavar="CLASS",
                    help="only these classes (repeat; default: every class each dataset labels)")
    ev.add_argument("--overlays", default=None, metavar="DIR", help="write one overlay PNG per case here")
    ev.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD boundary tolerance in mm (default 2)")
    ev.add_argument("--overlap", type=float, default=0.5)
    ev.add_argument("--threshold", type=float, default=0.5)
    ev.add_argument("--sw-batch-size", type=int, default=1)
    ev.add_argument("--device", default=None)
    ev.add_argument("--max-cases", type=int, default=None, help="evaluate only the first N cases")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=run_eval)

    build = sub.add_parser("build-samples", help="write synthetic CT phantoms and the real TotalSegmentator examples")
    build.add_argument("--out", required=True, help="output folder (phantoms/ and totalseg/ with datalists)")
    build.add_argument("--quick", action="store_true", help="a few phantoms per dataset (smoke runs, tests)")
    build.add_argument("--seed", type=int, default=0, help="phantom seed (same seed, same files)")
    build.add_argument("--no-real", action="store_true", help="skip the TotalSegmentator examples")
    build.add_argument("--no-download", action="store_true",
                       help="fail instead of downloading the TotalSegmentator tarball from PyPI when absent")
    build.add_argument("--no-progress", action="store_true")
    build.set_defaults(func=run_build_samples)


def _device(name: str | None):
    import torch

    return torch.device(name) if name else None


def run_predict(args: argparse.Namespace) -> int:
    from medmoe.hub import load_model
    from medmoe.data.volumes import read_ct
    from medmoe.seg.predict import check_prompts, predict_volume, save_prediction

    # Cheap checks first: a bad prompt list or input fails before the model is loaded.
    check_prompts(args.prompt)
    volume = read_ct(args.input, check_ct=not args.allow_non_ct)
    model = load_model(args.model, device=args.device)
    prediction = predict_volume(
        model, volume, args.prompt, threshold=args.threshold, overlap=args.overlap,
        sw_batch_size=args.sw_batch_size, device=_device(args.device), postprocess=not args.no_postprocess,
        return_probabilities=args.probabilities, progress=not args.no_progress)
    prediction.meta["model"] = str(args.model)
    info = save_prediction(prediction, args.out, probabilities=args.probabilities, summary=args.summary)
    if args.overlay:
        from medmoe.seg.overlay import save_overlay

        names = [c or p for c, p in zip(prediction.classes, prediction.prompts)]
        save_overlay(volume.array, volume.affine, prediction.masks, names, args.overlay, title=str(args.input))
    for row in info["classes"]:
        print(f"{row['label_value']:3d}  {row['prompt']:28s} {str(row['class']):28s} {row['volume_ml']:10.1f} ml")
    print(f"wrote {args.out}" + (f" and {args.summary}" if args.summary else ""))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from medmoe.hub import load_model
    from medmoe.seg.evaluate import evaluate

    model = load_model(args.model, device=args.device)
    report = evaluate(model, args.data, split=args.split, classes=args.classes, out=args.out,
                      overlay_dir=args.overlays, nsd_tolerance_mm=args.nsd_tolerance, threshold=args.threshold,
                      overlap=args.overlap, sw_batch_size=args.sw_batch_size, device=_device(args.device),
                      max_cases=args.max_cases, progress=not args.no_progress)

    def fmt(v):
        return "   n/a" if v is None else f"{v:6.3f}"

    print(f"{'class':28s} {'dice':>6s} {'hd95':>7s} {'nsd':>6s}  n")
    for name, row in report["per_class"].items():
        hd = "    n/a" if row["hd95"] is None else f"{row['hd95']:7.1f}"
        print(f"{name:28s} {fmt(row['dice'])} {hd} {fmt(row['nsd'])}  {row['n']}")
    mean = report["mean"]
    print(f"{'mean':28s} {fmt(mean['dice'])} {'':7s} {fmt(mean['nsd'])}")
    for name, det in report["tumour_detection"].items():
        print(f"{name}: sensitivity {fmt(det['sensitivity'])}, specificity {fmt(det['specificity'])} "
              f"(tp {det['tp']} fn {det['fn']} tn {det['tn']} fp {det['fp']})")
    if report["bad"]:
        print(f"{len(report['bad'])} case(s) skipped:", file=sys.stderr)
        for row in report["bad"]:
            print(f"  {row['path']}: {row['reason']}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


def run_build_samples(args: argparse.Namespace) -> int:
    from medmoe.seg.samples import build_samples

    paths = build_samples(args.out, seed=args.seed, quick=args.quick, real=not args.no_real,
                          download=not args.no_download, progress=not args.no_progress)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0
