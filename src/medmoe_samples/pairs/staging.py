"""Build a dataset folder next to its destination and swap it in only when it is complete."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from medmoe.data.manifest import ManifestRow, write_manifest
from medmoe.errors import InvalidInputError
from medmoe_samples.pairs.rows import MANIFEST_NAME


def check_replaceable(out: Path, name: str) -> None:
    """Fail early if ``out/name`` exists and is not a dataset this module wrote (it has no manifest)."""
    final = Path(out) / name
    if final.exists() and not (final / MANIFEST_NAME).is_file() and any(final.iterdir()):
        raise InvalidInputError(
            f"refusing to replace {final}: it is not empty and holds no {MANIFEST_NAME}; choose another --out"
        )


@contextmanager
def staged_dataset(out: Path, name: str) -> Iterator[tuple[Path, list[ManifestRow]]]:
    """Yield an empty staging folder (with ``images/``) and a list to fill with the pack's manifest rows; on
    success the rows are written to the folder's manifest and the folder replaces ``out/name``.

    A failed build leaves any previous ``out/name`` untouched and removes the staging folder.
    """
    check_replaceable(out, name)
    staging, old = out / f".{name}.partial", out / f".{name}.old"
    for leftover in (staging, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    (staging / "images").mkdir(parents=True)
    rows: list[ManifestRow] = []
    try:
        yield staging, rows
        write_manifest(rows, staging / MANIFEST_NAME)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = out / name
    if final.exists():
        final.rename(old)
    staging.rename(final)
    if old.exists():
        shutil.rmtree(old)


def run_tasks(
    fn: Callable[[Any], Any], tasks: Sequence[Any], workers: int, progress: bool, desc: str
) -> list[Any]:
    """``[fn(t) for t in tasks]``, in order, optionally over ``workers`` processes, with a progress bar.

    Results do not depend on ``workers``: every task carries its own seed.
    """
    bar = {"total": len(tasks), "desc": desc, "disable": not progress, "unit": "img"}
    if workers <= 1 or len(tasks) < 2 * workers:
        return list(tqdm(map(fn, tasks), **bar))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(fn, tasks, chunksize=max(1, min(32, len(tasks) // (8 * workers)))), **bar))
