"""Validate a manifest row by row before a run spends hours discovering its problems."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from medmoe.data.manifest import SPLITS, scan_manifest
from medmoe.data.modalities import MODALITIES, try_normalize_modality
from medmoe.data.readers import read_image
from medmoe.data.readers.safety import require_regular_file
from medmoe.data.reports import clean_report

# Problem kinds, in the order the summary lists them.
PROBLEM_KINDS = ("malformed row", "missing file", "unreadable image", "empty report", "unknown modality", "bad split")


@dataclass(frozen=True)
class RowProblem:
    """One problem of one manifest row (``row`` is 1-based, the first data row being 1)."""

    row: int
    path: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.path}: {self.kind}: {self.detail}"


@dataclass
class CheckResult:
    """What :func:`check_manifest` found."""

    manifest: str
    n_rows: int
    problems: list[RowProblem] = field(default_factory=list)

    @property
    def bad_rows(self) -> int:
        return len({p.row for p in self.problems})

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Number of problems of each kind (kinds with none are omitted)."""
        found = Counter(p.kind for p in self.problems)
        return {kind: found[kind] for kind in PROBLEM_KINDS if found[kind]}

    def summary(self) -> str:
        text = f"{self.manifest}: {self.n_rows} rows, {self.n_rows - self.bad_rows} ok, {self.bad_rows} bad"
        if self.problems:
            text += " (" + ", ".join(f"{n} {kind}" for kind, n in self.counts().items()) + ")"
        return text


def check_row_fields(row) -> list[tuple[str, str]]:
    """Problems that need no file access: report, modality and split values."""
    problems = []
    if not clean_report(row.report) and not row.labels:
        # Rows with labels but no report are valid label-only evaluation rows (zero-shot, linear probe).
        problems.append(("empty report", "report is empty after cleaning and the row has no labels"))
    if row.modality and try_normalize_modality(row.modality) is None:
        problems.append(("unknown modality", f"{row.modality!r} is not one of {list(MODALITIES)} or a synonym"))
    if row.split is not None and row.split not in SPLITS:
        problems.append(("bad split", f"{row.split!r} is not one of {list(SPLITS)}"))
    return problems


def check_manifest(path: str | os.PathLike, *, read_images: bool = True, progress: bool = False) -> CheckResult:
    """Check every row of a manifest.

    Args:
        path: the manifest.
        read_images: decode every image with the real reader (slow on big corpora); False only checks
            that the files exist.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`CheckResult` listing every problem with its row and path. A row that cannot be parsed (a
        CSV row with the wrong number of fields, bytes that are not UTF-8, a JSONL line that is not a JSON
        object) is a ``malformed row`` problem naming its line; the check goes on past it.

    Raises:
        MissingFileError / CorruptFileError / InvalidInputError: the manifest itself cannot be read.
    """
    rows, malformed = scan_manifest(path)
    result = CheckResult(manifest=os.fspath(path), n_rows=len(rows) + len(malformed))
    for problem in malformed:
        result.problems.append(RowProblem(problem.row, os.fspath(path), "malformed row",
                                          f"line {problem.line} {problem.detail}"))
    for row in tqdm(rows, desc="checking", unit="row", disable=not progress):
        for kind, detail in check_row_fields(row):
            result.problems.append(RowProblem(row.row, row.image, kind, detail))
        if not os.path.exists(row.image):
            result.problems.append(RowProblem(row.row, row.image, "missing file", "no such file"))
        elif read_images or not os.path.isfile(row.image):
            try:
                require_regular_file(row.image, "image file")  # a folder, a FIFO, a device: never opened
                if read_images:
                    read_image(row.image)
            except Exception as err:  # every reader failure is a finding, not a crash of the check
                detail = str(err).removeprefix(f"{row.image}: ")
                result.problems.append(RowProblem(row.row, row.image, "unreadable image", detail))
    result.problems.sort(key=lambda p: (p.row, PROBLEM_KINDS.index(p.kind)))
    return result
