"""Where `medmoe seg predict` writes, decided and checked before the model is loaded.

Layout:

- one case, ``--out mask.nii.gz`` (or ``seg.dcm``): that file; per-class masks in ``mask/<class>.nii.gz``;
  probability maps ``mask_prob_<i>_<class>.nii.gz``; the summary where ``--summary`` says; an overlay
  ``mask.png`` (or where ``--overlay`` says).
- a folder ``--out OUT`` (required for a folder of cases): per case ``OUT/<case>.nii.gz`` (or
  ``OUT/<case>.dcm``), ``OUT/<case>/<class>.nii.gz``, ``OUT/<case>_prob_<i>_<class>.nii.gz``,
  ``OUT/<case>.json`` (summary), ``OUT/<case>.png`` (overlay); for a folder of cases also ``OUT/index.json``
  (or ``--summary``) over every case, failed ones included.

Every check that can fail without running the model runs here: a file where a folder is needed (and the
reverse), a parent that cannot be created or written, an output that exists (without ``overwrite``), an
output that would replace an input, DICOM-SEG asked for a NIfTI input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medmoe.errors import InvalidInputError
from medmoe.seg.cases import Case, CaseSet, nifti_stem

MASK_FORMATS = ("nifti", "dicom-seg")
_FILE_SUFFIXES = (".nii", ".nii.gz", ".dcm")


@dataclass
class CaseOutputs:
    """The files one case writes (None: not asked for)."""

    case: Case
    main: Path
    per_class: Path | None = None
    per_class_files: list[Path] = field(default_factory=list)
    probability_files: list[Path] = field(default_factory=list)
    summary: Path | None = None
    overlay: Path | None = None

    def files(self) -> list[Path]:
        """Every file this case writes."""
        out = [self.main, *self.per_class_files, *self.probability_files]
        return out + [p for p in (self.summary, self.overlay) if p is not None]


@dataclass
class OutputPlan:
    """All cases' outputs and, for a folder of cases, the index JSON."""

    cases: list[CaseOutputs]
    index: Path | None
    format: str
    folder: bool


def output_stem(path: Path) -> str:
    """The file name of an output without ``.nii.gz`` / ``.nii`` / ``.dcm`` (any case)."""
    return path.name[: -len(".dcm")] if path.name.lower().endswith(".dcm") else nifti_stem(path)


def plan_outputs(cases: CaseSet, out: str | os.PathLike, *, class_files: Sequence[str], fmt: str | None = None,
                 per_class: bool = False, probabilities: bool = False, summary: str | os.PathLike | None = None,
                 overlay: str | os.PathLike | bool | None = None, overwrite: bool = False) -> OutputPlan:
    """Decide every output path and check them all before any inference.

    Args:
        cases: the input's cases (:func:`medmoe.seg.cases.find_cases`).
        out: ``--out``: a ``.nii.gz`` / ``.dcm`` file (one case only) or a folder.
        class_files: the K per-class file stems (:func:`medmoe.seg.predict.class_file_name` of each class).
        fmt: ``nifti`` or ``dicom-seg`` (default: from ``out``'s suffix, else ``nifti``).
        per_class: one binary NIfTI per class.
        probabilities: one probability map per class.
        summary: the summary JSON of one case, or the index JSON of a folder of cases.
        overlay: True for an overlay PNG next to each output, or the PNG path (one case only).
        overwrite: replace existing outputs instead of refusing.

    Raises:
        InvalidInputError: with one line naming the path and the problem.
    """
    out = Path(out)
    file_out = str(out).lower().endswith(_FILE_SUFFIXES)  # a file (.nii, .nii.gz, .dcm) rather than a folder
    n = len(cases.cases)
    if fmt is not None and fmt not in MASK_FORMATS:
        raise InvalidInputError(f"--format {fmt!r}: expected one of {MASK_FORMATS}")
    suffix_fmt = ("dicom-seg" if str(out).lower().endswith(".dcm") else "nifti") if file_out else None
    fmt = fmt or suffix_fmt or "nifti"
    ext = ".dcm" if fmt == "dicom-seg" else ".nii.gz"
    if suffix_fmt is not None and suffix_fmt != fmt:
        raise InvalidInputError(f"--out {out}: --format {fmt} writes a {ext} file, not {out.name}")
    if cases.folder and file_out:
        raise InvalidInputError(f"--out {out}: the input is a folder of {n} case(s); --out must be a folder "
                                f"(one {ext} per case is written there)")
    if fmt == "dicom-seg":
        nifti = [c.path.name for c in cases.cases if c.kind != "dicom"]
        if nifti:
            raise InvalidInputError(
                f"--format dicom-seg needs DICOM series input (a DICOM-SEG references the source slices); "
                f"{', '.join(nifti[:5])}{' ...' if len(nifti) > 5 else ''} {'is' if len(nifti) == 1 else 'are'} "
                "NIfTI: use --format nifti")
    if file_out and out.is_dir():
        raise InvalidInputError(f"--out {out}: is a folder; name a file ({ext}) "
                                "or drop the suffix to write into a folder")
    if not file_out and out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out}: is a file, but a folder is needed here (it holds the outputs)")
    if isinstance(overlay, str | os.PathLike) and n > 1:
        raise InvalidInputError("--overlay PATH names one PNG; for a folder of cases give --overlay alone "
                                "(one PNG per case in --out)")
    plans = []
    for case in cases.cases:
        if file_out:
            main, base = out, out.parent / output_stem(out)
            summary_path = Path(summary) if summary else None
        else:
            main, base = out / f"{case.name}{ext}", out / case.name
            summary_path = Path(summary) if summary and not cases.folder else out / f"{case.name}.json"
        plan = CaseOutputs(case=case, main=main, summary=summary_path)
        if per_class:
            plan.per_class = base
            plan.per_class_files = [base / f"{name}.nii.gz" for name in class_files]
        if probabilities:
            plan.probability_files = [main.with_name(f"{output_stem(main)}_prob_{i + 1}_{name}.nii.gz")
                                      for i, name in enumerate(class_files)]
        if overlay:
            plan.overlay = Path(overlay) if isinstance(overlay, str | os.PathLike) else base.with_name(base.name + ".png")
        plans.append(plan)
    index = (Path(summary) if summary else out / "index.json") if cases.folder else None
    _check(plans, index, cases, out, overwrite)
    return OutputPlan(cases=plans, index=index, format=fmt, folder=not file_out)


def _check(plans: list[CaseOutputs], index: Path | None, cases: CaseSet, out: Path, overwrite: bool) -> None:
    files = [p for plan in plans for p in plan.files()] + ([index] if index is not None else [])
    resolved = [p.resolve() for p in files]
    if len(set(resolved)) != len(resolved):
        seen: set[Path] = set()
        twice = next(p for p in resolved if p in seen or seen.add(p))
        raise InvalidInputError(f"{twice}: two outputs would be written to the same file (e.g. --summary or "
                                "--overlay pointing at another output)")
    inputs = {c.path.resolve() for c in cases.cases}
    series = [c.path.resolve() for c in cases.cases if c.kind == "dicom"]
    if cases.folder and out.resolve() == Path(cases.cases[0].path).resolve().parent:
        raise InvalidInputError(f"--out {out}: is the input folder; write the predictions to another folder (the "
                                "next run would take them for cases)")
    for p in resolved:
        if p in inputs or any(s in p.parents for s in series):
            raise InvalidInputError(f"{p}: the output would overwrite or land inside an input; choose another --out")
    folders = {p.parent for p in files} | {plan.per_class for plan in plans if plan.per_class is not None}
    for folder in sorted(folders):
        _check_folder(folder)
    for plan in plans:
        if plan.per_class is not None and plan.per_class.exists() and not plan.per_class.is_dir():
            raise InvalidInputError(f"{plan.per_class}: is a file, but the per-class masks need a folder there")
    for p in files:
        if p.is_dir():
            raise InvalidInputError(f"{p}: is a folder, but an output file is written there")
    exist = [p for p in files if p.exists()]
    if exist and not overwrite:
        more = f" and {len(exist) - 3} more" if len(exist) > 3 else ""
        raise InvalidInputError(f"{len(exist)} output file(s) exist ({', '.join(map(str, exist[:3]))}{more}); pass "
                                "--overwrite to replace them")


def _check_folder(folder: Path) -> None:
    """The folder exists and is writable, or can be created: its nearest existing ancestor is a writable folder."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise InvalidInputError(f"{folder}: cannot create this folder, {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        action = "write in" if probe == folder else f"create {folder} in"
        raise InvalidInputError(f"{folder}: cannot {action} {probe} (permission denied)")
