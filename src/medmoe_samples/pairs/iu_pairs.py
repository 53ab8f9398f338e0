"""IU chest X-ray pairs (dataset ``iu-cxr``): each real report with a radiograph rendered from its MeSH terms.

The report text is the real, cleaned FINDINGS + IMPRESSION; the image shows what the curated MeSH terms
say (cardiomegaly and its degree, effusion side and size, opacity / nodule / granuloma / atelectasis with
side and zone, lung volumes), drawn by the same renderer as the modality benchmark's X-rays. Labels are the
parsed tags (:attr:`MeshFinding.tag`); a report whose terms name nothing drawable (e.g. only spine
findings) gets an empty label list and a chest without drawn findings. A finding without a side in its
term keeps a side-less tag and is drawn on a side chosen by the seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medmoe.errors import InvalidInputError
from medmoe_samples.pairs.drawing import save_png
from medmoe_samples.pairs.iu_reports import IUReport, MeshFinding, read_iu_reports, report_findings
from medmoe_samples.pairs.render_xray import ChestFindings, LungLesion, render_chest_xray
from medmoe_samples.pairs.rows import DatasetCounts, assign_splits, sample_row
from medmoe_samples.pairs.staging import run_tasks, staged_dataset

logger = logging.getLogger(__name__)

DATASET = "iu-cxr"
_STREAM = 2
_HEART_RATIO = {"borderline": (0.51, 0.54), "mild": (0.55, 0.59), "moderate": (0.6, 0.65),
                "severe": (0.66, 0.72), "massive": (0.68, 0.74), "marked": (0.66, 0.72)}
_EFFUSION_HEIGHT = {"small": (0.11, 0.17), "moderate": (0.2, 0.28), "large": (0.32, 0.42)}
_PATTERNS = {"streaky": "streaky", "interstitial": "interstitial", "reticular": "interstitial",
             "round": "round", "patchy": "patchy", "diffuse": "confluent", "multiple": "patchy"}


def _uniform(rng: np.random.Generator, modifiers: tuple[str, ...], table: dict, default: tuple[float, float]) -> float:
    known = next((m for m in modifiers if m in table), None)
    return float(rng.uniform(*table.get(known, default)))


def chest_findings_from_mesh(findings: list[MeshFinding], rng: np.random.Generator) -> ChestFindings:
    """Turn parsed MeSH findings into what the chest renderer draws; degrees come from the modifiers.

    Args:
        findings: parsed findings of one report.
        rng: random generator for the free parameters (degree within a modifier's range, side if unstated).

    Returns:
        The renderer's findings.
    """
    ratio, effusions, lesions, inflation = None, [], [], 0.0
    for f in findings:
        side = f.side or ("left" if rng.random() < 0.5 else "right")
        if f.kind == "cardiomegaly":
            ratio = _uniform(rng, f.modifiers, _HEART_RATIO, (0.56, 0.64))
        elif f.kind == "effusion":
            effusions.append((side, _uniform(rng, f.modifiers, _EFFUSION_HEIGHT, (0.14, 0.3))))
        elif f.kind in ("opacity", "nodule", "granuloma", "atelectasis"):
            mild = any(m in ("mild", "small", "minimal") for m in f.modifiers)
            severity = float(rng.uniform(0.3, 0.55) if mild else rng.uniform(0.55, 0.95))
            pattern = next((_PATTERNS[m] for m in f.modifiers if m in _PATTERNS), None)
            pattern = pattern or ("patchy" if rng.random() < 0.6 else "confluent")
            count = int(rng.integers(2, 4)) if f.kind in ("nodule", "granuloma") and "multiple" in f.modifiers else 1
            lesions += [LungLesion(f.kind, side, f.zone, severity, pattern) for _ in range(count)]
        elif f.kind == "low_lung_volumes":
            inflation = -float(rng.uniform(0.06, 0.12))
        elif f.kind == "hyperinflation":
            inflation = float(rng.uniform(0.06, 0.12))
    return ChestFindings(heart_ratio=ratio, effusions=tuple(effusions), lesions=tuple(lesions), inflation=inflation)


def _render_one(task: tuple[str, str, tuple[str, ...], int, int]) -> str:
    images_dir, uid, mesh_major, seed, size = task
    report = IUReport(uid, "", "", mesh_major)
    rng = np.random.default_rng([_STREAM, seed, int(uid.removeprefix("CXR"))])
    image = render_chest_xray(chest_findings_from_mesh(report_findings(report), rng), rng, size)
    name = f"{uid}.png"
    save_png(image, Path(images_dir) / name)
    return f"images/{name}"


def build_iu_pairs(
    out: Path,
    seed: int = 0,
    limit: int | None = None,
    size: int = 224,
    workers: int = 1,
    progress: bool = True,
    archive: Path | None = None,
) -> DatasetCounts:
    """Generate ``out/iu-cxr/`` from the IU reports.

    Args:
        out: parent folder.
        seed: non-negative seed: fixes the images, the split and the subsample.
        limit: keep only this many reports (a seeded random subsample), or None for all.
        size: image side in pixels.
        workers: processes that render in parallel.
        progress: show a progress bar.
        archive: the reports ``.tgz``; None reads it from the installed torchxrayvision package.

    Returns:
        Row counts; ``skipped`` counts reports without FINDINGS or IMPRESSION text.
    """
    if seed < 0 or (limit is not None and limit < 1):
        raise InvalidInputError(f"seed={seed} (expected >= 0), limit={limit} (expected None or >= 1)")
    reports = read_iu_reports(archive)
    usable = [r for r in reports if r.text]
    skipped = len(reports) - len(usable)
    logger.info("IU reports: %d read, %d without findings/impression text skipped", len(reports), skipped)
    select_rng = np.random.default_rng([_STREAM, seed])
    if limit is not None and limit < len(usable):
        keep = np.sort(select_rng.choice(len(usable), size=limit, replace=False))
        usable = [usable[i] for i in keep]
    splits = assign_splits(len(usable), select_rng)
    with staged_dataset(Path(out), DATASET) as (folder, rows):
        tasks = [(str(folder / "images"), r.uid, r.mesh_major, seed, size) for r in usable]
        paths = run_tasks(_render_one, tasks, workers, progress, desc=DATASET)
        rows += [
            sample_row(path, r.text, "xray", tuple(sorted({f.tag for f in report_findings(r)})), DATASET, split)
            for path, r, split in zip(paths, usable, splits)
        ]
    counts = DatasetCounts.from_rows(rows, skipped=skipped)
    logger.info("%s: %d pairs written to %s", DATASET, counts.total, Path(out) / DATASET)
    return counts
