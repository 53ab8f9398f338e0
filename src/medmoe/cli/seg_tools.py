"""`medmoe seg predict | classes | eval | build-samples | import | check`: registered on the `medmoe seg` group by ``cli/seg.py``.

Handlers import the library lazily (``medmoe --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from medmoe.cli.arguments import add_seg_eval_arguments
from medmoe.cli.seg_benchmark import (
    add_benchmark_command,
    add_eval_spacing_argument,
    eval_spacing_lines,
    eval_spacing_of,
)

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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``predict``, ``classes``, ``eval``, ``build-samples``, ``import`` and ``check`` on the ``medmoe seg``
    group."""
    predict = sub.add_parser(
        "predict", help="segment prompted classes in CTs (NIfTI file, DICOM series folder or a folder of cases)",
        description="Segment text-prompted classes in CT volumes with a saved MoME model; masks come back on\n"
                    "each CT's own voxel grid (shape, spacing, orientation and affine of the input).",
        epilog=PREDICT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
                            "with overlap 0.25, ~6x faster; the model sees organs at half the size it was "
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
    predict.set_defaults(func=run_predict)

    classes = sub.add_parser(
        "classes", help="list the class template: names, prompts, synonyms, datasets that label each class",
        description="The classes `medmoe seg predict --prompt` accepts (names, synonyms and small typos\n"
                    "resolve), with the datasets that label each; or one dataset's label map.",
        epilog="examples:\n  medmoe seg classes\n  medmoe seg classes --dataset BTCV\n"
               "  medmoe seg classes --model runs/mome/model --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    classes.add_argument("--dataset", default=None, metavar="NAME",
                         help="only this dataset's label map (label id -> class); names and aliases resolve")
    classes.add_argument("--model", default=None, metavar="DIR",
                         help="only the classes of this saved model (what --prompt all segments)")
    classes.add_argument("--json", action="store_true", help="print JSON instead of a table")
    classes.set_defaults(func=run_classes)

    ev = sub.add_parser("eval", help="Dice, HD95, NSD and tumour detection of a model on a datalist split")
    ev.add_argument("--model", required=True, help="a saved model directory")
    ev.add_argument("--data", required=True, help="datalist JSON")
    ev.add_argument("--out", required=True, help="metrics JSON to write")
    ev.add_argument("--split", default="test", choices=("training", "validation", "test"))
    ev.add_argument("--class", dest="classes", action="append", default=None, metavar="CLASS",
                    help="only these classes (repeat; default: every class each dataset labels)")
    ev.add_argument("--overlays", default=None, metavar="DIR", help="write one overlay PNG per case here")
    add_seg_eval_arguments(ev, max_cases_help="evaluate only the first N cases")
    add_eval_spacing_argument(ev)
    ev.set_defaults(func=run_eval)
    add_benchmark_command(sub)

    build = sub.add_parser("build-samples", help="write synthetic CT phantoms and the real TotalSegmentator examples")
    build.add_argument("--out", required=True, help="output folder (phantoms/ and totalseg/ with datalists)")
    build.add_argument("--quick", action="store_true", help="a few phantoms per dataset (smoke runs, tests)")
    build.add_argument("--seed", type=int, default=0, help="phantom seed (same seed, same files)")
    build.add_argument("--no-real", action="store_true", help="skip the TotalSegmentator examples")
    build.add_argument("--totalseg-sdist", default=None, metavar="PATH",
                       help="the totalsegmentator-2.18.0.tar.gz sdist (default $MEDMOE_TOTALSEG_SDIST, else "
                            ".cache/totalsegmentator-2.18.0.tar.gz, which `make setup` downloads)")
    build.add_argument("--no-progress", action="store_true")
    build.set_defaults(func=run_build_samples)
    _add_import(sub)
    _add_check(sub)


IMPORT_EPILOG = """\
formats (the layout each dataset is downloaded in; docs/data.md says where to get it):
  msd               Medical Segmentation Decathlon task: dataset.json, imagesTr/, labelsTr/, imagesTs/
  nnunet            nnU-Net v2 raw dataset: dataset.json (channel_names, labels, file_ending), imagesTr/<case>_0000
  totalsegmentator  TotalSegmentator v2: meta.csv, sXXXX/ct.nii.gz, sXXXX/segmentations/<class>.nii.gz
  btcv              BTCV RawData: Training/img/img0001.nii.gz, Training/label/label0001.nii.gz
  amos              AMOS22: dataset.json, imagesTr/, labelsTr/, imagesVa/, labelsVa/ (CT cases only)
  kits              KiTS19/21/23: case_XXXXX/imaging.nii.gz + segmentation.nii.gz (or aggregated_MAJ_seg)
  word              WORD: imagesTr/, labelsTr/, imagesVal/, labelsVal/, imagesTs/, labelsTs/
  flare22           FLARE22Train: images/FLARE22_Tr_0001_0000.nii.gz, labels/FLARE22_Tr_0001.nii.gz
  abdomenct1k       AbdomenCT-1K: Image/ (or AbdomenCT-1K-ImagePart*/) Case_00001_0000.nii.gz, Mask/
  ctorg             CT-ORG: OrganSegmentations/volume-N.nii.gz + labels-N.nii.gz
  lits              LiTS: volume-N.nii + segmentation-N.nii (Training Batch 1/2), test-volume-N.nii
  folders           anything else: images/, labels/ and labels.yaml (dataset name, label id -> class)

examples:
  medmoe seg import msd data/Task03_Liver --out data/datalist.json
  medmoe seg import totalsegmentator data/Totalsegmentator_dataset_v201 --out data/datalist.json --append
  medmoe seg import kits data/kits19 --dataset KiTS19 --out data/datalist.json --append
  medmoe seg check data/datalist.json --workers 4
"""


# medmoe.seg.importers.FORMATS, listed here so that building the parser imports no library code
IMPORT_FORMATS = ("msd", "nnunet", "totalsegmentator", "btcv", "amos", "kits", "word", "flare22", "abdomenct1k",
                  "ctorg", "lits", "folders")


def _add_import(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser(
        "import", help="write (or extend) a datalist from a downloaded CT dataset (MSD, nnU-Net, TotalSegmentator, ...)",
        description="Find the cases of a downloaded CT segmentation dataset and write them as datalist entries\n"
                    "with the dataset name the class template knows; the dataset's own label list (where it\n"
                    "ships one) is checked against that label map first.",
        epilog=IMPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("format", choices=IMPORT_FORMATS, metavar="FORMAT", help=f"one of: {', '.join(IMPORT_FORMATS)}")
    imp.add_argument("root", metavar="ROOT", help="the dataset's folder, as downloaded and unpacked")
    imp.add_argument("--out", required=True, metavar="JSON", help="the datalist to write")
    imp.add_argument("--append", action="store_true", help="add the dataset to an existing datalist")
    imp.add_argument("--dataset", default=None, metavar="NAME",
                     help="dataset name to write (msd, nnunet, kits, folders; default: found from the folder / "
                          "dataset.json; kits: KiTS19 or KiTS)")
    imp.add_argument("--labels", default=None, metavar="YAML", help="folders: the label YAML (default ROOT/labels.yaml)")
    imp.add_argument("--cache", default=None, metavar="DIR",
                     help="totalsegmentator: where the per-case label maps combined from the class masks go "
                          "(default: <datalist folder>/totalsegmentator_labels)")
    imp.add_argument("--workers", type=int, default=0, metavar="N", help="totalsegmentator: processes combining masks")
    imp.add_argument("--no-progress", action="store_true", help="no progress bars")
    imp.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medmoe.seg.importers import import_dataset, write_datalist

    out = Path(args.out)
    if out.exists() and not args.append:
        from medmoe.errors import InvalidInputError

        raise InvalidInputError(f"--out {out}: exists; pass --append to add the dataset to it")
    cache = args.cache or out.parent / "totalsegmentator_labels"
    imported = import_dataset(args.format, args.root, dataset=args.dataset, labels=args.labels, cache=cache,
                              workers=args.workers, progress=not args.no_progress)
    written = write_datalist(imported, out, append=args.append)
    for note in imported.notes:
        print(note)
    counts = ", ".join(f"{n} {split}" for split, n in written.items())
    print(f"{'appended' if args.append else 'wrote'} {imported.dataset}: {counts} case(s) -> {out}")
    print(f"next: medmoe seg check {out}")
    return 0


def _add_check(sub: argparse._SubParsersAction) -> None:
    check = sub.add_parser(
        "check", help="read every file of a datalist: shapes, affines, label values, spacing, duplicates",
        description="Open every image and label of a datalist and check that each pair shares shape and affine,\n"
                    "that label values are in the dataset's label map, that spacing and orientation are\n"
                    "plausible, and that no CT appears twice (across datasets or splits, by voxel content).\n"
                    "Prints a per-case table; exit status 1 when any case has an error.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("datalist", metavar="DATALIST", help="datalist JSON")
    check.add_argument("--workers", type=int, default=0, metavar="N", help="processes reading files (default 0: this one)")
    check.add_argument("--json", default=None, metavar="PATH", help="also write the per-case report as JSON")
    check.add_argument("--errors-only", action="store_true", help="list only cases with errors or warnings")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from medmoe.seg.check import check_datalist, format_report

    report = check_datalist(args.datalist, workers=args.workers, progress=not args.no_progress)
    for line in format_report(report, errors_only=args.errors_only):
        print(line)
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return 1 if report.n_errors else 0


def _device(name: str | None):
    import torch

    return torch.device(name) if name else None


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


def run_predict(args: argparse.Namespace) -> int:
    # light imports only until every check has passed (MONAI alone takes seconds to import)
    from medmoe.devices import autocast_dtype, resolve_device
    from medmoe.errors import InvalidInputError, MedMoEError
    from medmoe.hub import describe_family, read_model_config
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

    # Everything that can fail without the model fails first: prompts, settings, input, model config,
    # output paths, device. Then the model is loaded once for all cases.
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
    amp_dtype = autocast_dtype(device, args.amp)
    if args.fast:
        trained = fields.get("spacing")
        logger.warning("--fast: running at %gx the model's spacing%s: expect coarser masks and small structures "
                       "to be missed", args.fast_factor,
                       f" ({' x '.join(f'{float(s) * args.fast_factor:g}' for s in trained)} mm instead of "
                       f"{' x '.join(f'{float(s):g}' for s in trained)})" if trained else "")
    from tqdm.auto import tqdm

    from medmoe.data.volumes import read_ct
    from medmoe.hub import load_model
    from medmoe.seg.predict import predict_volume, save_prediction

    single = not cases.folder
    first = read_ct(cases.cases[0].path, check_ct=not args.allow_non_ct) if single else None
    logger.info("segmenting %d class(es) in %d case(s) on %s (%s%s)", len(prompts), len(cases.cases), device,
                str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32", ", fast" if args.fast else "")
    model = load_model(args.model, device=str(device))  # the family was checked with the config above

    done: list[dict] = []
    failed: list[dict] = []
    bar = tqdm(plan.cases, desc="cases", unit="case", disable=single or args.no_progress)
    for item in bar:
        case = item.case
        bar.set_postfix_str(case.name)
        try:
            volume = first if single else read_ct(case.path, check_ct=not args.allow_non_ct)
            first = None
            prediction = predict_volume(
                model, volume, prompts, threshold=args.threshold, overlap=args.overlap,
                sw_batch_size=args.sw_batch_size, device=device, amp=args.amp, fast=args.fast,
                fast_factor=args.fast_factor,
                postprocess=not args.no_postprocess, return_probabilities=args.probabilities,
                progress=single and not args.no_progress, allow_free_text=args.allow_free_text)
            prediction.meta.update(model=str(args.model), case=case.name)
            if item.overlay is not None:
                from medmoe.seg.overlay import save_overlay

                save_overlay(volume.array, volume.affine, prediction.masks, prediction.names, item.overlay,
                             title=f"{case.name}: {', '.join(prediction.names[:6])}"
                                   f"{' ...' if len(prediction.names) > 6 else ''}")
                prediction.meta["overlay"] = str(item.overlay)
            del volume
            info = save_prediction(prediction, item.main, probabilities=args.probabilities, summary=item.summary,
                                   per_class=item.per_class)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # a bad case of a folder is reported and skipped
            if single:
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
        if single:
            _print_classes(info)
    if plan.index is not None:
        index = {"input": str(args.input), "out": str(args.out), "model": str(args.model), "prompts": prompts,
                 "classes": classes, "format": plan.format, "device": str(device), "fast": bool(args.fast),
                 "cases": done, "failed": failed, "ignored": [str(p) for p in cases.ignored]}
        plan.index.parent.mkdir(parents=True, exist_ok=True)
        plan.index.write_text(json.dumps(index, indent=2) + "\n")
    if single and done:
        extra = [p for p in (plan.cases[0].summary, plan.cases[0].per_class, plan.cases[0].overlay) if p]
        print(f"wrote {plan.cases[0].main}" + "".join(f" and {p}" for p in extra))
    elif not single:
        for row in done:
            found = sum(1 for c in row["classes"].values() if c["voxels"])
            print(f"{row['case']:24s} {found:3d}/{len(prompts)} classes found  -> {row['output']}")
        print(f"wrote {len(done)} of {len(plan.cases)} case(s) to {args.out} (index {plan.index})")
    if failed:
        print(f"{len(failed)} case(s) failed:", file=sys.stderr)
        for row in failed:
            print(f"  {row['case']}: {row['error']}", file=sys.stderr)
        return 1
    return 0


def _print_classes(info: dict) -> None:
    print(f"{'':3s}  {'prompt':28s} {'class':28s} {'volume':>12s} {'mean HU':>9s}")
    for row in info["classes"]:
        hu = "" if row.get("mean_hu") is None else f"{row['mean_hu']:9.1f}"
        print(f"{row['label_value']:3d}  {row['prompt'][:28]:28s} {str(row['class'])[:28]:28s} "
              f"{row['volume_ml']:9.1f} ml {hu:>9s}")


def run_classes(args: argparse.Namespace) -> int:
    from medmoe.hub import read_model_config
    from medmoe.seg.classes import ClassTemplate
    from medmoe.seg.prompts import model_class_names

    template = ClassTemplate.default()
    if args.dataset:
        name = template.dataset_name(args.dataset)
        labels = template.label_map(name)
        labelled = template.labelled_classes(name)
        derived = [c for c in labelled if c not in labels.values()]
        if args.json:
            print(json.dumps({"dataset": name, "labels": {str(k): v for k, v in labels.items()},
                              "labelled_classes": labelled}, indent=2))
            return 0
        print(f"{name}: label id -> class")
        for label_id, cls in labels.items():
            print(f"{label_id:5d}  {cls}")
        if derived:
            print(f"also labelled (unions of labelled parts): {', '.join(derived)}")
        return 0
    names, source = list(template.names), "every class of the class template"
    if args.model:
        _, fields = read_model_config(args.model)
        names, source = model_class_names(fields, template)
    labelled_by: dict[str, list[str]] = {n: [] for n in template.names}
    for dataset in template.datasets:
        for cls in template.labelled_classes(dataset):
            labelled_by[cls].append(dataset)
    rows = []
    for n in names:
        info = template.info(n)
        rows.append({"name": n, "display": info.display, "prompt": template.prompt(n), "kind": info.kind,
                     "parent": info.parent, "parts": list(info.parts), "synonyms": list(info.synonyms),
                     "datasets": labelled_by[n]})
    if args.json:
        print(json.dumps({"source": source, "prompt_template": template.prompt_template, "classes": rows}, indent=2))
        return 0
    print(f"{len(rows)} classes ({source}); prompt: {template.prompt_template!r}. Names, display names, synonyms "
          "and small typos resolve.")
    print(f"{'class':30s} {'kind':7s} other names; datasets that label it")
    for row in rows:
        others = [row["display"]] if row["display"] != row["name"].replace("_", " ") else []
        others += row["synonyms"]
        labelled = f"labelled by {', '.join(row['datasets'])}" if row["datasets"] else "labelled by no dataset"
        print(f"{row['name']:30s} {row['kind']:7s} {', '.join(others) + '; ' if others else ''}{labelled}")
    print(f"datasets: {', '.join(template.datasets)} (label maps: medmoe seg classes --dataset NAME)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from medmoe.hub import load_model
    from medmoe.paths import check_output_file
    from medmoe.seg.evaluate import evaluate

    check_output_file(args.out)
    if args.overlays:
        from medmoe.paths import check_output_dir

        check_output_dir(args.overlays, "--overlays")
    model = load_model(args.model, device=args.device, family="mome")
    report = evaluate(model, args.data, split=args.split, classes=args.classes, out=args.out,
                      overlay_dir=args.overlays, nsd_tolerance_mm=args.nsd_tolerance, threshold=args.threshold,
                      overlap=args.overlap, sw_batch_size=args.sw_batch_size, device=_device(args.device),
                      max_cases=args.max_cases, progress=not args.no_progress, eval_spacing=eval_spacing_of(args))

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
    for line in eval_spacing_lines(report):
        print(line)
    if report["bad"]:
        print(f"{len(report['bad'])} case(s) skipped:", file=sys.stderr)
        for row in report["bad"]:
            print(f"  {row['path']}: {row['reason']}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


def run_build_samples(args: argparse.Namespace) -> int:
    from medmoe.paths import check_output_dir
    from medmoe_samples.ct.build import build_ct_samples

    check_output_dir(args.out)

    paths = build_ct_samples(args.out, seed=args.seed, quick=args.quick, real=not args.no_real,
                             sdist=args.totalseg_sdist, progress=not args.no_progress)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0
