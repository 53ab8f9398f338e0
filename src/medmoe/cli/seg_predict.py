"""`medmoe seg predict`: segment text-prompted classes in CTs with a saved MoME model.

Handlers import the library lazily (``medmoe --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

from medmoe.cli.arguments import add_command

logger = logging.getLogger(__name__)

PREDICT_EPILOG = """\
examples:
  # one CT (NIfTI or a DICOM series folder) -> one label map on the CT's own grid
  medmoe seg predict --model runs/mome/model --input ct.nii.gz --prompt liver --prompt spleen --out mask.nii.gz

  # every class the model knows, one binary mask per class (overlaps kept), statistics in the summary
  medmoe seg predict --model runs/mome/model --input ct.nii.gz --prompt all --per-class --out pred/

  # a folder of cases (NIfTI files and/or one sub-folder per DICOM series) -> pred/<case>.nii.gz + index.json
  medmoe seg predict --model runs/mome/model --input cases/ --prompt liver --out pred/

  # DICOM in, DICOM-SEG out (for PACS viewers), quick low-resolution run
  medmoe seg predict --model runs/mome/model --input series/ --prompt liver --prompt "liver tumor" \\
      --format dicom-seg --out liver_seg.dcm --fast

  medmoe seg classes              # the classes and the datasets that label them
  medmoe seg classes --dataset KiTS

outputs: label value i = i-th prompt (later prompts win overlaps; --per-class keeps them). Each case's JSON
summary gives per class the voxel count, volume (ml) and mean/std HU inside the mask. Nothing is computed
until every input, prompt and output path has been checked. Exit status: 0 all cases written, 1 an error or
at least one failed case (listed at the end; the other cases are still written).
"""



def add_predict_command(sub: argparse._SubParsersAction) -> None:
    """Register ``predict`` on the ``medmoe seg`` group."""
    predict = add_command(sub, "predict", run_predict, epilog=PREDICT_EPILOG)
    io = predict.add_argument_group("input and output")
    io.add_argument("--model", required=True, metavar="DIR", help="a saved model directory (config.json + model.safetensors)")
    io.add_argument("--input", required=True, metavar="PATH",
                    help="a CT: .nii/.nii.gz file or a folder with one DICOM series; or a folder of cases "
                         "(NIfTI files and/or sub-folders holding one DICOM series each)")
    io.add_argument("--out", required=True, metavar="PATH",
                    help="one case: a .nii.gz (or .dcm) file, or a folder; several cases: a folder "
                         "(<case>.nii.gz, <case>.json, index.json)")
    io.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse)")
    cls = predict.add_argument_group("classes")
    cls.add_argument("--prompt", action="append", default=[], metavar="CLASS",
                     help="a class to segment (repeat; names, synonyms, typos resolve; see `medmoe seg classes`); "
                          "'all' = every class of the model")
    cls.add_argument("--allow-free-text", action="store_true",
                     help="accept prompts that name no template class (embedded as unseen classes the model was "
                          "not trained on) instead of refusing them")
    what = predict.add_argument_group("what to write")
    what.add_argument("--format", choices=("nifti", "dicom-seg"), default=None,
                      help="nifti: a label map (default); dicom-seg: a DICOM Segmentation with one segment per "
                           "class (DICOM input only; default when --out ends in .dcm)")
    what.add_argument("--per-class", action="store_true",
                      help="also one binary mask per class, <out>/<case>/<class>.nii.gz (overlaps kept)")
    what.add_argument("--probabilities", action="store_true",
                      help="also one float32 probability map per class next to the output")
    what.add_argument("--summary", default=None, metavar="JSON",
                      help="one case: write its JSON summary here (with a folder --out: <out>/<case>.json by "
                           "default); folder of cases: the index JSON (default <out>/index.json)")
    what.add_argument("--overlay", nargs="?", const=True, default=None, metavar="PNG",
                      help="an overlay PNG of CT slices with the masks: next to each output, or at PNG (one case)")
    speed = predict.add_argument_group("speed and device")
    speed.add_argument("--device", default="auto", metavar="DEVICE",
                       help="where the model runs: auto (CUDA if available, else CPU; default), cpu, cuda, cuda:N")
    speed.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                       help="GPU autocast: auto = bf16 where native, else fp16 (default); CPU always runs fp32")
    speed.add_argument("--fast", action="store_true",
                       help="low resolution (like TotalSegmentator --fast): run at twice the model's spacing "
                            "with overlap 0.25 (18.9x faster on a 192x160x128 CT at 1.5 mm, less on a CT of few "
                            "windows; docs/results.md); the model sees organs at half the size it was "
                            "trained on, so masks are coarse and small organs are often lost (docs/seg.md)")
    speed.add_argument("--fast-factor", type=float, default=2.0, metavar="F",
                       help="with --fast: how much coarser than the model's spacing (default 2)")
    speed.add_argument("--overlap", type=float, default=None, metavar="F",
                       help="sliding-window overlap in [0, 1) (default 0.5; 0.25 with --fast)")
    speed.add_argument("--sw-batch-size", type=int, default=1, metavar="N", help="windows per forward pass (default 1)")
    pred = predict.add_argument_group("prediction")
    pred.add_argument("--threshold", type=float, default=0.5, metavar="P", help="probability threshold (default 0.5)")
    pred.add_argument("--no-postprocess", action="store_true",
                      help="skip the clean-up (largest component per organ, lesions inside their organ)")
    pred.add_argument("--allow-non-ct", action="store_true", help="skip the CT modality and HU-range checks")
    pred.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check_settings(args: argparse.Namespace) -> None:
    from medmoe.errors import InvalidInputError

    if not 0.0 < args.threshold < 1.0:
        raise InvalidInputError(f"--threshold {args.threshold}: expected a probability in (0, 1)")
    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise InvalidInputError(f"--overlap {args.overlap}: expected a fraction in [0, 1)")
    if args.sw_batch_size < 1:
        raise InvalidInputError(f"--sw-batch-size {args.sw_batch_size}: expected >= 1")
    if not args.fast_factor >= 1.0:
        raise InvalidInputError(f"--fast-factor {args.fast_factor}: expected >= 1 (how much coarser than the model)")


@dataclass
class PredictJob:
    """What ``seg predict`` will do, decided before the model is loaded.

    Attributes:
        cases: the input cases (:func:`medmoe.seg.cases.find_cases`).
        plan: the output paths of each case (:func:`medmoe.seg.outputs.plan_outputs`).
        prompts: the prompts, in label order.
        classes: the template class of each prompt (None: free text).
        device: where the model runs.
        amp_dtype: the autocast dtype (None: fp32).
    """

    cases: Any
    plan: Any
    prompts: list[str]
    classes: list[str | None]
    device: Any
    amp_dtype: Any

    @property
    def single(self) -> bool:
        """One case (a file or a DICOM series), not a folder of cases."""
        return not self.cases.folder


def run_predict(args: argparse.Namespace) -> int:
    """segment prompted classes in CTs (NIfTI file, DICOM series folder or a folder of cases)

    Segment text-prompted classes in CT volumes with a saved MoME model; masks come back on
    each CT's own voxel grid (shape, spacing, orientation and affine of the input).
    """
    job = plan_predict(args)
    from medmoe.saved_model import load_model

    logger.info("segmenting %d class(es) in %d case(s) on %s (%s%s)", len(job.prompts), len(job.cases.cases),
                job.device, str(job.amp_dtype).replace("torch.", "") if job.amp_dtype else "fp32",
                ", fast" if args.fast else "")
    model = load_model(args.model, device=str(job.device))  # the family was checked with the config
    done, failed = _predict_cases(args, job, model)
    if job.plan.index is not None:
        index = {"input": str(args.input), "out": str(args.out), "model": str(args.model), "prompts": job.prompts,
                 "classes": job.classes, "format": job.plan.format, "device": str(job.device), "fast": bool(args.fast),
                 "cases": done, "failed": failed, "ignored": [str(p) for p in job.cases.ignored]}
        job.plan.index.parent.mkdir(parents=True, exist_ok=True)
        job.plan.index.write_text(json.dumps(index, indent=2) + "\n")
    _print_outcome(args, job, done)
    if failed:
        print(f"{len(failed)} case(s) failed:", file=sys.stderr)
        for row in failed:
            print(f"  {row['case']}: {row['error']}", file=sys.stderr)
        return 1
    return 0


def plan_predict(args: argparse.Namespace) -> PredictJob:
    """Everything that can fail without the model, checked first: prompts, settings, input, model config,
    output paths, device (light imports only: MONAI alone takes seconds to import)."""
    from medmoe.devices import autocast_dtype, resolve_device
    from medmoe.errors import InvalidInputError
    from medmoe.registry import describe_family
    from medmoe.saved_model import read_model_config
    from medmoe.seg.cases import find_cases
    from medmoe.seg.classes import ClassTemplate
    from medmoe.seg.outputs import plan_outputs
    from medmoe.seg.prompts import (
        ALL_CLASSES,
        check_prompts,
        class_file_name,
        model_class_names,
        resolve_prompt_list,
    )

    check_prompts(args.prompt)
    _check_settings(args)
    cases = find_cases(args.input)
    model_type, fields = read_model_config(args.model)
    if model_type != "mome":
        raise InvalidInputError(f"--model {args.model}: holds a {describe_family(model_type)} model; seg predict needs "
                                f"a {describe_family('mome')} model")
    template = ClassTemplate.default()
    model_classes, source = model_class_names(fields, template)
    prompts, classes = resolve_prompt_list(args.prompt, template, model_classes=model_classes,
                                           allow_free_text=args.allow_free_text)
    if any(p.strip().lower() == ALL_CLASSES for p in args.prompt):
        logger.info("--prompt all: %d classes, %s", len(model_classes), source)
    names = [c or p for c, p in zip(classes, prompts)]
    plan = plan_outputs(cases, args.out, class_files=[class_file_name(n) for n in names], fmt=args.format,
                        per_class=args.per_class, probabilities=args.probabilities, summary=args.summary,
                        overlay=args.overlay, overwrite=args.overwrite)
    device = resolve_device(args.device)
    if args.fast:
        _warn_fast(args.fast_factor, fields.get("spacing"))
    return PredictJob(cases, plan, prompts, classes, device, autocast_dtype(device, args.amp))


def _warn_fast(factor: float, trained: list | None) -> None:
    logger.warning("--fast: running at %gx the model's spacing%s: expect coarser masks and small structures "
                   "to be missed", factor,
                   f" ({' x '.join(f'{float(s) * factor:g}' for s in trained)} mm instead of "
                   f"{' x '.join(f'{float(s):g}' for s in trained)})" if trained else "")


def _predict_cases(args: argparse.Namespace, job: PredictJob, model) -> tuple[list[dict], list[dict]]:
    """Segment and save each case of ``job``: (rows of the cases written, rows of those that failed).

    A failing case of a folder is reported and skipped; with one case the error is raised.
    """
    from tqdm.auto import tqdm

    from medmoe.data.volumes import read_ct
    from medmoe.errors import MedMoEError

    done: list[dict] = []
    failed: list[dict] = []
    bar = tqdm(job.plan.cases, desc="cases", unit="case", disable=job.single or args.no_progress)
    for item in bar:
        case = item.case
        bar.set_postfix_str(case.name)
        try:
            info = _predict_case(args, job, model, item, read_ct(case.path, check_ct=not args.allow_non_ct))
        except Exception as err:
            if job.single:
                raise
            reason = str(err) if isinstance(err, MedMoEError) else f"{type(err).__name__}: {err}"
            logger.debug("case %s failed", case.name, exc_info=True)
            tqdm.write(f"medmoe: case {case.name} failed: {reason}", file=sys.stderr)
            failed.append({"case": case.name, "input": str(case.path), "error": reason})
            continue
        done.append({"case": case.name, "input": str(case.path), "output": str(item.main),
                     "summary": str(item.summary) if item.summary else None,
                     "per_class": str(item.per_class) if item.per_class else None,
                     "classes": {r["class"] or r["prompt"]: {k: r.get(k) for k in ("voxels", "volume_ml", "mean_hu")}
                                 for r in info["classes"]},
                     "seconds": info.get("total_seconds")})
        if job.single:
            _print_classes(info)
    return done, failed


def _predict_case(args: argparse.Namespace, job: PredictJob, model, item, volume) -> dict:
    """Segment ``volume`` (case ``item`` of the plan), write its outputs and return what was saved."""
    from medmoe.seg.predict import predict_volume, save_prediction

    prediction = predict_volume(
        model, volume, job.prompts, threshold=args.threshold, overlap=args.overlap,
        sw_batch_size=args.sw_batch_size, device=job.device, amp=args.amp, fast=args.fast,
        fast_factor=args.fast_factor, postprocess=not args.no_postprocess, return_probabilities=args.probabilities,
        progress=job.single and not args.no_progress, allow_free_text=args.allow_free_text)
    prediction.meta.update(model=str(args.model), case=item.case.name)
    if item.overlay is not None:
        from medmoe.seg.overlay import save_overlay

        save_overlay(volume.array, volume.affine, prediction.masks, prediction.names, item.overlay,
                     title=f"{item.case.name}: {', '.join(prediction.names[:6])}"
                           f"{' ...' if len(prediction.names) > 6 else ''}")
        prediction.meta["overlay"] = str(item.overlay)
    return save_prediction(prediction, item.main, probabilities=args.probabilities, summary=item.summary,
                           per_class=item.per_class)


def _print_outcome(args: argparse.Namespace, job: PredictJob, done: list[dict]) -> None:
    plan = job.plan
    if job.single and done:
        extra = [p for p in (plan.cases[0].summary, plan.cases[0].per_class, plan.cases[0].overlay) if p]
        print(f"wrote {plan.cases[0].main}" + "".join(f" and {p}" for p in extra))
    elif not job.single:
        for row in done:
            found = sum(1 for c in row["classes"].values() if c["voxels"])
            print(f"{row['case']:24s} {found:3d}/{len(job.prompts)} classes found  -> {row['output']}")
        print(f"wrote {len(done)} of {len(plan.cases)} case(s) to {args.out} (index {plan.index})")


def _print_classes(info: dict) -> None:
    print(f"{'':3s}  {'prompt':28s} {'class':28s} {'volume':>12s} {'mean HU':>9s}")
    for row in info["classes"]:
        hu = "" if row.get("mean_hu") is None else f"{row['mean_hu']:9.1f}"
        print(f"{row['label_value']:3d}  {row['prompt'][:28]:28s} {str(row['class'])[:28]:28s} "
              f"{row['volume_ml']:9.1f} ml {hu:>9s}")
