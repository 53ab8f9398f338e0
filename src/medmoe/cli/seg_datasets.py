"""`medmoe seg build-samples | import | check`: datalists from downloaded CT datasets, their checks, sample data."""

from __future__ import annotations

import argparse
import json

from medmoe.cli.arguments import add_command

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


# medmoe.seg.importers.IMPORT_FORMATS, listed here so that building the parser imports no library code
IMPORT_FORMATS = ("msd", "nnunet", "totalsegmentator", "btcv", "amos", "kits", "word", "flare22", "abdomenct1k",
                  "ctorg", "lits", "folders")


def add_dataset_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``build-samples``, ``import`` and ``check`` on the ``medmoe seg`` group."""
    build = add_command(sub, "build-samples", run_build_samples)
    build.add_argument("--out", required=True, help="output folder (phantoms/ and totalseg/ with datalists)")
    build.add_argument("--quick", action="store_true", help="a few phantoms per dataset (smoke runs, tests)")
    build.add_argument("--seed", type=int, default=0, help="phantom seed (same seed, same files)")
    build.add_argument("--no-real", action="store_true", help="skip the TotalSegmentator examples")
    build.add_argument("--totalseg-sdist", default=None, metavar="PATH",
                       help="the totalsegmentator-2.18.0.tar.gz sdist (default $MEDMOE_TOTALSEG_SDIST, else "
                            ".cache/totalsegmentator-2.18.0.tar.gz, which `make setup` downloads)")
    build.add_argument("--no-progress", action="store_true")

    imp = add_command(sub, "import", run_import, epilog=IMPORT_EPILOG)
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

    check = add_command(sub, "check", run_check, keep_lines=True)
    check.add_argument("datalist", metavar="DATALIST", help="datalist JSON")
    check.add_argument("--workers", type=int, default=0, metavar="N", help="processes reading files (default 0: this one)")
    check.add_argument("--json", default=None, metavar="PATH", help="also write the per-case report as JSON")
    check.add_argument("--errors-only", action="store_true", help="list only cases with errors or warnings")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_import(args: argparse.Namespace) -> int:
    """write (or extend) a datalist from a downloaded CT dataset (MSD, nnU-Net, TotalSegmentator, ...)

    Find the cases of a downloaded CT segmentation dataset and write them as datalist entries
    with the dataset name the class template knows; the dataset's own label list (where it
    ships one) is checked against that label map first.
    """
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


def run_check(args: argparse.Namespace) -> int:
    """read every file of a datalist: shapes, affines, label values, spacing, duplicates

    Open every image and label of a datalist and check that each pair shares shape and affine,
    that label values are in the dataset's label map, that spacing and orientation are
    plausible, and that no CT appears twice (across datasets or splits, by voxel content).
    Prints a per-case table; exit status 1 when any case has an error.
    """
    from medmoe.seg.check import check_datalist, format_report

    report = check_datalist(args.datalist, workers=args.workers, progress=not args.no_progress)
    for line in format_report(report, errors_only=args.errors_only):
        print(line)
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return 1 if report.n_errors else 0


def run_build_samples(args: argparse.Namespace) -> int:
    """write synthetic CT phantoms and the real TotalSegmentator examples"""
    from medmoe.paths import check_output_dir
    from medmoe_samples.ct.build import build_ct_samples

    check_output_dir(args.out)

    paths = build_ct_samples(args.out, seed=args.seed, quick=args.quick, real=not args.no_real,
                             sdist=args.totalseg_sdist, progress=not args.no_progress)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0
