"""Helpers shared by the dataset adapters."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medmoe.data.manifest import ManifestRow
from medmoe.errors import CorruptFileError, InvalidInputError, MissingFileError

logger = logging.getLogger(__name__)


@dataclass
class ImportResult:
    """Manifest rows built by an adapter and the source entries it left out, by reason."""

    source: str
    rows: list[ManifestRow] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, what: str) -> None:
        self.skipped.setdefault(reason, []).append(what)

    def extend(self, other: ImportResult) -> None:
        """Add ``other``'s rows and skipped entries to these."""
        self.rows += other.rows
        for reason, items in other.skipped.items():
            self.skipped.setdefault(reason, []).extend(items)

    def log(self) -> ImportResult:
        """Log the skipped entries (one warning per reason) and return self."""
        for reason, paths in self.skipped.items():
            if paths:  # one warning per kind of skipped row, with a count and a few examples
                logger.warning("%s: skipped %d row(s) with %s: %s", self.source, len(paths), reason,
                               _examples(paths, 3))
        logger.info("%s: %d rows", self.source, len(self.rows))
        return self

    def split_counts(self) -> dict[str, int]:
        return dict(Counter(row.split or "none" for row in self.rows))


def require_dir(root: str | os.PathLike, source: str) -> Path:
    """``root`` as a Path, which must be an existing directory."""
    path = Path(root)
    if not path.is_dir():
        raise MissingFileError(f"{path}: {source} root directory not found")
    return path


def find_first(root: Path, names: list[str], what: str, *, required: bool = True) -> Path | None:
    """The first of ``names`` (relative to ``root``; glob patterns allowed) that is a file.

    Raises:
        MissingFileError: none exists and ``required``; the message names ``what``, ``root`` and every
            name looked for.
    """
    hits = (hit for name in names
            for hit in (sorted(root.glob(name)) if any(ch in name for ch in "*?[") else [root / name]))
    found = next((hit for hit in hits if hit.is_file()), None)
    if found is None and required:
        raise MissingFileError(f"{root}: cannot find {what} (looked for {', '.join(names)} under {root})")
    return found


def pick_column(rows: list[dict[str, str]], candidates: list[str], path: Path, what: str) -> str:
    """The first of ``candidates`` that is a column of ``rows`` (the table read from ``path``).

    Raises:
        CorruptFileError: none is; the message names the candidates and the columns found.
    """
    if not rows:
        return candidates[0]
    columns = list(rows[0])
    for name in candidates:
        if name in columns:
            return name
    raise CorruptFileError(f"{path}: no {what} column (expected one of {candidates}; found {columns})")


def existing_path(candidates: list[Path]) -> Path:
    """The first of ``candidates`` that is a file, else the first candidate (reported as missing)."""
    return next((c for c in candidates if c.is_file()), candidates[0])


def read_csv_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file, gzipped or not, as dicts keyed by the header."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    except (OSError, UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile) as err:
        raise CorruptFileError(f"{path}: cannot read CSV table ({type(err).__name__}: {err})") from err


def require_columns(rows: list[dict[str, str]], columns: list[str], path: Path) -> None:
    if rows and (missing := [c for c in columns if c not in rows[0]]):
        raise CorruptFileError(f"{path}: missing column(s) {missing}; found {list(rows[0])}")


def stable_hash(key: str) -> int:
    """A 64-bit hash of ``key``, the same on every machine and run (SHA-1's first 8 bytes)."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")


def positive_labels(record: dict[str, str], columns: list[str]) -> list[str]:
    """The ``columns`` of ``record`` marked positive (1.0); blank, uncertain and other values are not."""
    labels = []
    for column in columns:
        try:
            if float(record.get(column) or "nan") == 1.0:
                labels.append(column)
        except ValueError:
            continue
    return labels


def hash_split(key: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """A stable train/val/test assignment from a key (the same on every machine and run).

    Args:
        key: what must stay together (a report id, a patient id).
        fractions: train, val, test shares summing to 1.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise InvalidInputError(f"split fractions must be three non-negative shares summing to 1, got {fractions}")
    value = stable_hash(key) / 2**64
    if value < fractions[0]:
        return "train"
    return "val" if value < fractions[0] + fractions[1] else "test"


def _examples(items: list[str], count: int) -> str:
    """The first ``count`` of ``items``, comma-separated, with ``, ...`` when there are more."""
    return ", ".join(items[:count]) + (", ..." if len(items) > count else "")


def require_some_image(result: ImportResult, table: Path, reason: str = "missing image") -> None:
    """Fail when ``table`` named images but none of them exists (a layout the paths do not fit).

    Raises:
        MissingFileError: no row was kept and every entry was skipped for ``reason``; the message names
            the table and the first paths looked for.
    """
    missing = result.skipped.get(reason, [])
    if missing and not result.rows and len(missing) == sum(len(v) for v in result.skipped.values()):
        raise MissingFileError(
            f"{table}: none of the {len(missing)} images it names exists (looked for {_examples(missing, 2)})"
        )
