"""Manifests: the one table format every data source is converted into.

A manifest is a CSV (``.csv``) or JSON-lines (``.jsonl`` / ``.ndjson``) file, one row per image:

========== ======== ==============================================================================
column     required meaning
========== ======== ==============================================================================
image      yes      path of the image file, relative to the manifest's directory (absolute allowed)
report     yes      report or caption text (may be empty for label-only evaluation rows)
modality   no       ``xray``, ``ct``, ``mri``, ``ultrasound``, ``pathology``, ``fundus`` or a synonym
labels     no       finding labels: ``"|"``-separated in CSV, a list of strings in JSONL
dataset    no       source corpus name, e.g. ``mimic-cxr``
split      no       ``train``, ``val`` or ``test`` (``validate`` / ``validation`` / ``valid`` -> ``val``)
========== ======== ==============================================================================

Other columns are kept in :attr:`ManifestRow.extra` and written back. Example CSV::

    image,report,modality,labels,dataset,split
    files/p10/s1/a.jpg,"FINDINGS: No effusion.",xray,No Finding,mimic-cxr,train

In memory, :func:`read_manifest` resolves ``image`` to an absolute path; :func:`write_manifest` writes
paths relative to the new manifest's directory, so a manifest and its images can be moved together.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from medmoe.data.readers.safety import require_regular_file
from medmoe.errors import CorruptFileError, InvalidInputError, MissingFileError
from medmoe.paths import write_text_atomic

COLUMNS = ("image", "report", "modality", "labels", "dataset", "split")
SPLITS = ("train", "val", "test")
_SPLIT_SYNONYMS = {
    "train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
    "validation": "val", "dev": "val", "test": "test", "testing": "test",
}
LABEL_SEPARATOR = "|"
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class ManifestRow:
    """One image-report pair.

    Attributes:
        image: image path; absolute after :func:`read_manifest`, or relative to the manifest directory.
        report: raw report text (cleaning happens when the dataset loads it).
        modality: modality as written (normalised by the dataset; see ``medmoe.data.modalities``).
        labels: finding labels.
        dataset: source corpus.
        split: ``train`` / ``val`` / ``test`` when recognised, otherwise the value as written.
        extra: further columns, kept for the round trip.
        row: 1-based data row number in the file it was read from (0 for rows built in memory).
    """

    image: str
    report: str = ""
    modality: str | None = None
    labels: list[str] = field(default_factory=list)
    dataset: str | None = None
    split: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    row: int = field(default=0, compare=False)


def normalize_split(value: str | None) -> str | None:
    """``"validate"`` -> ``"val"`` etc.; None for empty; an unknown value is returned unchanged
    (``medmoe data check`` reports it)."""
    text = _blank(value)
    return None if text is None else _SPLIT_SYNONYMS.get(text.lower(), text)


def manifest_format(path: str | os.PathLike) -> str:
    """``"csv"`` or ``"jsonl"`` from the file name.

    Raises:
        InvalidInputError: any other suffix.
    """
    name = os.fspath(path).lower()
    fmt = next((fmt for suffix, fmt in _FORMATS.items() if name.endswith(suffix)), None)
    if fmt is None:
        raise InvalidInputError(f"{os.fspath(path)}: manifest must end in .csv, .jsonl or .ndjson")
    return fmt


def _blank(value: object) -> str | None:
    if value is None:
        return None
    return str(value).strip() or None


class _RowError(ValueError):
    """One row's value is unusable; the caller adds the row and line."""


def _labels(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(LABEL_SEPARATOR) if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return [str(v).strip() for v in value if str(v).strip()]
    raise _RowError("has 'labels' that are neither a list of strings nor a '|'-separated string")


def _row_from_record(record: dict, row: int, base: Path) -> ManifestRow:
    image = _blank(record.get("image"))
    if image is None:
        raise _RowError("has no 'image' value")
    report = record.get("report")
    # An empty extra cell means "absent": CSV cannot tell the two apart.
    extra = {
        k: v if isinstance(v, str) else json.dumps(v)
        for k, v in record.items()
        if k not in COLUMNS and k is not None and v not in (None, "")
    }
    return ManifestRow(
        image=image if os.path.isabs(image) else os.path.normpath(os.path.join(base, image)),
        report="" if report is None else str(report),
        modality=_blank(record.get("modality")),
        labels=_labels(record.get("labels")),
        dataset=_blank(record.get("dataset")),
        split=normalize_split(record.get("split")),
        extra=extra,
        row=row,
    )


@dataclass(frozen=True)
class ManifestProblem:
    """A manifest row that cannot be read: ``row`` is 1-based among data rows, ``line`` the file's line."""

    row: int
    line: int
    detail: str

    def __str__(self) -> str:
        return f"line {self.line} (row {self.row}) {self.detail}"


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by surrogateescape


def _undecodable(text: str) -> str | None:
    """A description of the first byte of ``text`` that was not UTF-8, or None when there is none."""
    found = _UNDECODABLE.search(text)
    if found is None:
        return None
    return f"is not UTF-8 text (byte 0x{ord(found.group()) - 0xDC00:02x} at character {found.start() + 1}); save the manifest as UTF-8"


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Read a CSV or JSONL manifest; image paths come back absolute.

    Raises:
        MissingFileError: ``path`` does not exist.
        InvalidInputError: unsupported suffix.
        CorruptFileError: unreadable file or missing ``image`` / ``report`` columns, or a malformed row: a
            CSV row with more or fewer fields than the header (unquoted commas), bytes that are not UTF-8,
            a line that is not a JSON object, a row without an image. The message names the file, the row
            and the line of the first, and counts the others (:func:`scan_manifest` lists them all).
    """
    rows, problems = scan_manifest(path)
    if problems:
        more = (f" (and {len(problems) - 1} more malformed row(s); `medmoe data check` lists them all)"
                if len(problems) > 1 else "")
        raise CorruptFileError(f"{os.fspath(path)}: {problems[0]}{more}")
    return rows


def scan_manifest(path: str | os.PathLike) -> tuple[list[ManifestRow], list[ManifestProblem]]:
    """Read every row of a manifest that can be read, and describe every one that cannot.

    ``medmoe data check`` reports all malformed rows this way instead of stopping at the first.

    Returns:
        ``(rows, problems)``: the good rows (image paths absolute) and one :class:`ManifestProblem` per
        malformed row, in file order.

    Raises:
        MissingFileError / InvalidInputError: as :func:`read_manifest`.
        CorruptFileError: the file cannot be read at all (not a regular file, an OS error, a CSV header
            without ``image`` / ``report`` or with bytes that are not UTF-8, a CSV syntax error).
    """
    path = Path(path)
    fmt = manifest_format(path)
    if not path.exists():
        raise MissingFileError(f"{path}: manifest not found")
    require_regular_file(path, "manifest file")
    base = path.resolve().parent
    try:
        text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    except OSError as err:
        raise CorruptFileError(f"{path}: cannot read manifest ({err.strerror or err})") from err
    return {"csv": _scan_csv, "jsonl": _scan_jsonl}[fmt](text, path, base)


def _scan_csv(text: str, path: Path, base: Path) -> tuple[list[ManifestRow], list[ManifestProblem]]:
    rows: list[ManifestRow] = []
    problems: list[ManifestProblem] = []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fields = reader.fieldnames or []
        bad_header = _undecodable(",".join(fields))
        if bad_header:
            raise CorruptFileError(f"{path}: line 1 (the header): {bad_header}")
        missing = [c for c in ("image", "report") if c not in fields]
        if missing:
            raise CorruptFileError(f"{path}: CSV manifest lacks column(s) {missing}; header is {fields}")
        for number, record in enumerate(reader, start=1):
            line = reader.line_num
            values = [v for k, v in record.items() if k is not None]
            extra = record.get(None) or []
            if extra or any(v is None for v in values):
                count = sum(v is not None for v in values) + len(extra)
                problems.append(ManifestProblem(number, line, (
                    f"has {count} field(s) where the header has {len(fields)} (a value holding commas, quotes or line "
                    "breaks must be quoted)")))
                continue
            bad_text = next((d for d in map(_undecodable, values) if d), None)
            if bad_text:
                problems.append(ManifestProblem(number, line, bad_text))
                continue
            _add_row(rows, problems, record, number, line, base)
    except csv.Error as err:
        raise CorruptFileError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from err
    return rows, problems


def _scan_jsonl(text: str, path: Path, base: Path) -> tuple[list[ManifestRow], list[ManifestProblem]]:
    rows: list[ManifestRow] = []
    problems: list[ManifestProblem] = []
    number = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        number += 1
        bad_text = _undecodable(line)
        if bad_text:
            problems.append(ManifestProblem(number, line_no, bad_text))
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            reason = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
            problems.append(ManifestProblem(number, line_no, f"is not valid JSON ({reason})"))
            continue
        if not isinstance(record, dict):
            problems.append(ManifestProblem(number, line_no, "is not a JSON object"))
        elif "report" not in record:
            problems.append(ManifestProblem(number, line_no, "lacks the 'report' key"))
        else:
            _add_row(rows, problems, record, number, line_no, base)
    return rows, problems


def _add_row(rows: list[ManifestRow], problems: list[ManifestProblem], record: dict, number: int, line: int,
             base: Path) -> None:
    try:
        rows.append(_row_from_record(record, number, base))
    except _RowError as err:
        problems.append(ManifestProblem(number, line, str(err)))


def _relative_image(image: str, base: Path) -> str:
    if not os.path.isabs(image):
        return image.replace(os.sep, "/")
    try:
        return os.path.relpath(image, base).replace(os.sep, "/")
    except ValueError:  # different drive on Windows
        return image


def write_manifest(rows: Iterable[ManifestRow], path: str | os.PathLike) -> Path:
    """Write rows as CSV or JSONL (by suffix), atomically: a reader never sees a half-written file.

    Absolute image paths are written relative to the manifest's directory; relative ones are taken to be
    relative to it already.

    Returns:
        The manifest path.
    """
    path = Path(path)
    fmt = manifest_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    rows = list(rows)
    extra_keys = sorted({k for r in rows for k in r.extra})
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS) + extra_keys, lineterminator="\n")
    if fmt == "csv":
        writer.writeheader()
    for r in rows:
        record = {
            "image": _relative_image(r.image, base),
            "report": r.report,
            "modality": r.modality,
            "labels": list(r.labels),
            "dataset": r.dataset,
            "split": r.split,
        }
        if fmt == "csv":  # the csv module writes None as an empty cell
            writer.writerow({**record, "labels": LABEL_SEPARATOR.join(r.labels),
                             **{k: r.extra.get(k, "") for k in extra_keys}})
        else:
            buffer.write(json.dumps({**record, **r.extra}, ensure_ascii=False) + "\n")
    write_text_atomic(path, buffer.getvalue())
    return path
