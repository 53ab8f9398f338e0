"""The modality benchmark: generated image-report pairs over six modalities (dataset ``modality-bench``).

Each modality's findings live at the scale typical of it (see the ``case_*`` modules), and reports within a
modality differ by finding, side and size, so retrieval has to read the findings and not only the modality.
Every image has its own random stream, keyed by (seed, modality, index): the pack is identical for a seed
whatever the number of workers, and a smaller pack is a prefix of a larger one per modality.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medmoe.data.modalities import MODALITIES
from medmoe.errors import InvalidInputError
from medmoe_samples.pairs.case import PairMaker
from medmoe_samples.pairs.case_ct import make_ct_case
from medmoe_samples.pairs.case_fundus import make_fundus_case
from medmoe_samples.pairs.case_mri import make_mri_case
from medmoe_samples.pairs.case_pathology import make_pathology_case
from medmoe_samples.pairs.case_ultrasound import make_ultrasound_case
from medmoe_samples.pairs.case_xray import make_xray_case
from medmoe_samples.pairs.drawing import save_png
from medmoe_samples.pairs.rows import DatasetCounts, assign_splits, sample_row
from medmoe_samples.pairs.staging import run_tasks, staged_dataset

logger = logging.getLogger(__name__)

DATASET = "modality-bench"
CASE_MAKERS: dict[str, PairMaker] = {
    "xray": make_xray_case,
    "ct": make_ct_case,
    "mri": make_mri_case,
    "ultrasound": make_ultrasound_case,
    "pathology": make_pathology_case,
    "fundus": make_fundus_case,
}
_STREAM = 1  # keeps these random streams apart from the other packs' for the same seed


def case_rng(seed: int, modality: str, index: int) -> np.random.Generator:
    """The random generator of one benchmark image."""
    return np.random.default_rng([_STREAM, seed, MODALITIES.index(modality), index])


def _render_one(task: tuple[str, str, int, int, int]) -> tuple[str, str, tuple[str, ...]]:
    images_dir, modality, index, seed, size = task
    case = CASE_MAKERS[modality](case_rng(seed, modality, index), size)
    name = f"{modality}_{index:05d}.png"
    save_png(case.image, Path(images_dir) / name)
    return f"images/{name}", case.report, case.labels


def build_modality_bench(
    out: Path,
    seed: int = 0,
    n_per_modality: int = 300,
    modalities: tuple[str, ...] = MODALITIES,
    size: int = 224,
    workers: int = 1,
    progress: bool = True,
) -> DatasetCounts:
    """Generate ``out/modality-bench/`` (PNG images + ``manifest.csv``).

    Args:
        out: parent folder.
        seed: non-negative seed; the same seed gives the same files byte for byte.
        n_per_modality: images per modality across the train/val/test splits (70/15/15).
        modalities: which of :data:`MODALITIES` to generate.
        size: image side in pixels.
        workers: processes that render in parallel.
        progress: show a progress bar.

    Returns:
        Row counts per split and modality.
    """
    unknown = set(modalities) - set(CASE_MAKERS)
    if unknown or n_per_modality < 1 or seed < 0:
        raise InvalidInputError(
            f"modalities {sorted(unknown)} unknown (expected {MODALITIES}), n_per_modality={n_per_modality} "
            f"(expected >= 1), seed={seed} (expected >= 0)"
        )
    with staged_dataset(Path(out), DATASET) as (folder, rows):
        tasks = [(str(folder / "images"), m, i, seed, size) for m in modalities for i in range(n_per_modality)]
        results = run_tasks(_render_one, tasks, workers, progress, desc=DATASET)
        for modality in modalities:
            splits = assign_splits(n_per_modality, np.random.default_rng([_STREAM, seed, MODALITIES.index(modality)]))
            block = [r for t, r in zip(tasks, results) if t[1] == modality]
            rows += [sample_row(path, report, modality, labels, DATASET, split)
                     for (path, report, labels), split in zip(block, splits)]
    counts = DatasetCounts.from_rows(rows)
    logger.info("%s: %d pairs written to %s", DATASET, counts.total, Path(out) / DATASET)
    return counts
