"""``build_samples``: write the built-in sample packs (modality benchmark, IU chest X-ray pairs, real images)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from medmoe.data.modalities import MODALITIES
from medmoe.errors import InvalidInputError
from medmoe_samples.pairs.iu_pairs import DATASET as IU_DATASET
from medmoe_samples.pairs.iu_pairs import build_iu_pairs
from medmoe_samples.pairs.modality_bench import DATASET as BENCH_DATASET
from medmoe_samples.pairs.modality_bench import build_modality_bench
from medmoe_samples.pairs.real_samples import DATASET as REAL_DATASET
from medmoe_samples.pairs.real_samples import build_real_samples
from medmoe_samples.pairs.rows import DatasetCounts
from medmoe_samples.pairs.staging import check_replaceable

logger = logging.getLogger(__name__)

# Short names accepted by ``which`` -> dataset (folder) names.
PACKS = {"modality": BENCH_DATASET, "iu": IU_DATASET, "real": REAL_DATASET}
DEFAULT_N_PER_MODALITY = 300
QUICK_N_PER_MODALITY = 30
QUICK_IU_LIMIT = 200


def default_workers() -> int:
    """Processes used for rendering when none are requested: the CPU count, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def build_samples(
    out: str | Path,
    seed: int = 0,
    which: tuple[str, ...] | list[str] = tuple(PACKS),
    n_per_modality: int | None = None,
    iu_limit: int | None = None,
    quick: bool = False,
    modalities: tuple[str, ...] = MODALITIES,
    size: int = 224,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, DatasetCounts]:
    """Build the sample packs under ``out``: ``out/<dataset>/manifest.csv`` + ``out/<dataset>/images/``.

    Args:
        out: destination folder (created if needed). Existing packs are replaced; a folder in the way that
            is not a pack (no manifest) makes this fail before anything is written.
        seed: non-negative seed; identical seeds give identical manifests and image bytes.
        which: short names of the packs to build, from :data:`PACKS` (``modality``, ``iu``, ``real``).
        n_per_modality: modality-benchmark images per modality; default 300, or 30 with ``quick``.
        iu_limit: IU reports to use (a seeded subsample); default all 3,927 with text, or 200 with ``quick``.
        quick: small sizes for tests and smoke runs.
        modalities: modalities of the benchmark.
        size: side of the generated images in pixels.
        workers: rendering processes; default :func:`default_workers`.
        progress: show progress bars.

    Returns:
        Dataset name -> counts (total, per split, per modality, skipped sources).

    Example:
        >>> counts = build_samples("samples", which=("modality",), quick=True)  # doctest: +SKIP
        >>> counts["modality-bench"].total
        180
    """
    unknown = [w for w in which if w not in PACKS]
    if unknown or not which:
        raise InvalidInputError(f"unknown sample packs {unknown or which!r}; expected some of {list(PACKS)}")
    if seed < 0:
        raise InvalidInputError(f"seed {seed} must be >= 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for short in which:
        check_replaceable(out, PACKS[short])
    workers = default_workers() if workers is None else max(1, int(workers))
    if n_per_modality is None:
        n_per_modality = QUICK_N_PER_MODALITY if quick else DEFAULT_N_PER_MODALITY
    if iu_limit is None and quick:
        iu_limit = QUICK_IU_LIMIT

    builders = {"modality": lambda: build_modality_bench(out, seed, n_per_modality, tuple(modalities), size,
                                                         workers, progress),
                "iu": lambda: build_iu_pairs(out, seed, iu_limit, size, workers, progress),
                "real": lambda: build_real_samples(out)}
    counts: dict[str, DatasetCounts] = {}
    for short in dict.fromkeys(which):
        start = time.perf_counter()
        counts[PACKS[short]] = builders[short]()
        logger.info("built %s in %.1f s", PACKS[short], time.perf_counter() - start)
    return counts
