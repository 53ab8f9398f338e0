"""Run the papers' protocols on the sets found under a root: zero-shot top-1 accuracy and linear probes.

    >>> result = run_zeroshot_suite(model, "/data/medmoe-eval")
    >>> result["sets"]["rsna-pneumonia"]["accuracy"]     # top-1 accuracy on the set's test images, 0..1
    >>> result["mean_accuracy"], result["missing"]        # mean over the sets run; {set: why it was not run}

Images are embedded by :func:`medmoe.align.evaluate.embed_dataset` (routed by the image alone) and scored
with :class:`~medmoe.align.zeroshot.ZeroShotClassifier` (a class is the mean of its prompts' embeddings)
and :func:`~medmoe.align.zeroshot.classification_metrics`; probes use :func:`medmoe.align.probe.linear_probe`.
A set whose folder is absent or whose layout is broken is listed under ``missing`` with the reason; only
finding no set at all is an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from medmoe.align.evaluate import Embeddings, embed_dataset, model_image_size
from medmoe.align.probe import linear_probe
from medmoe.align.suites.sets import PROBE_SETS, ZEROSHOT_SETS, EvalSet, select_sets
from medmoe.align.zeroshot import ZeroShotClassifier, classification_metrics
from medmoe.data.adapters import import_source
from medmoe.data.dataset import ImageReportDataset
from medmoe.data.manifest import ManifestRow
from medmoe.errors import InvalidInputError, MedMoEError, MissingFileError

log = logging.getLogger(__name__)


def find_set_folder(spec: EvalSet, root: Path) -> tuple[str, Path] | None:
    """``(source, folder)`` of the first layout of ``spec`` whose folder exists under ``root``: the public
    release's folders first, then the alternatives'; None when there is none."""
    for source, folders in ((spec.source, spec.folders), *spec.alternatives):
        folder = next((root / name for name in folders if (root / name).is_dir()), None)
        if folder is not None:
            return source, folder
    return None


def load_set(spec: EvalSet, root: Path, *, splits: tuple[str, ...] = ("train", "test"),
             cache_dir: str | os.PathLike | None = None, progress: bool = False) -> list[ManifestRow]:
    """The rows of ``spec`` under ``root`` in ``splits`` whose one label is a class of the set.

    Raises:
        MedMoEError: the folder is missing (:class:`~medmoe.errors.MissingFileError`) or the
            adapter refuses its layout.
    """
    found = find_set_folder(spec, root)
    if found is None:
        names = [*spec.folders, *(name for _, folders in spec.alternatives for name in folders)]
        raise MissingFileError(f"{root}: no folder {' or '.join(names)} for {spec.name}")
    source, folder = found
    options = dict(spec.options) if source == spec.source else {}
    if spec.writes_pngs and source == spec.source:
        options.update(cache_dir=cache_dir, splits=splits)
    result = import_source(source, folder, progress=progress, **options)
    classes = set(spec.classes)
    return [r for r in result.rows if r.split in splits and len(r.labels) == 1 and r.labels[0] in classes]


def embed_rows(model: nn.Module, rows: list[ManifestRow], *, batch_size: int = 32, device: str = "cpu",
               workers: int = 0, progress: bool = True, max_items: int | None = None) -> Embeddings:
    """Image embeddings of label-only rows (unreadable images skipped and listed in ``bad``; their empty
    reports are not encoded)."""
    dataset = ImageReportDataset(rows, image_size=model_image_size(model), train=False, require_report=False)
    return embed_dataset(model, dataset, batch_size=batch_size, device=device, workers=workers, progress=progress,
                         max_items=max_items, encode_reports=False)


def _collect(specs: list[EvalSet], root: Path, splits: tuple[str, ...], cache_dir, progress: bool
             ) -> tuple[dict[str, dict[str, list[ManifestRow]]], dict[str, str]]:
    """``{set: {split: rows}}`` of the sets whose every split in ``splits`` has rows, and the reasons
    the others are missing."""
    if not root.is_dir():
        raise InvalidInputError(f"{root}: not a folder (the benchmark root holds one folder per test set)")
    found: dict[str, dict[str, list[ManifestRow]]] = {}
    missing: dict[str, str] = {}
    for spec in specs:
        try:
            rows = load_set(spec, root, splits=splits, cache_dir=cache_dir, progress=progress)
        except MedMoEError as err:
            missing[spec.name] = str(err)
            log.warning("%s: not evaluated (%s)", spec.name, err)
            continue
        by_split = {s: [r for r in rows if r.split == s] for s in splits}
        empty = [s for s, r in by_split.items() if not r]
        if empty:
            missing[spec.name] = f"no labelled {' / '.join(empty)} image of {spec.classes}"
            log.warning("%s: not evaluated (%s)", spec.name, missing[spec.name])
            continue
        found[spec.name] = by_split
    if not found:
        reasons = "; ".join(f"{name}: {why}" for name, why in missing.items())
        raise InvalidInputError(f"{root}: none of the evaluation sets was found ({reasons})")
    return found, missing


def _run_each(specs: list[EvalSet], found: dict, missing: dict[str, str], evaluate: Callable[[EvalSet, dict], dict],
              desc: str, progress: bool) -> dict[str, dict[str, Any]]:
    """``evaluate(spec, rows by split)`` for each found set; a set none of whose images reads (or that a
    probe cannot fit) joins ``missing`` instead of ending the suite."""
    results: dict[str, dict[str, Any]] = {}
    for spec in tqdm([s for s in specs if s.name in found], desc=desc, unit="set", disable=not progress):
        try:
            results[spec.name] = evaluate(spec, found[spec.name])
        except InvalidInputError as err:
            missing[spec.name] = str(err)
            log.warning("%s: not evaluated (%s)", spec.name, err)
    if not results:
        reasons = "; ".join(f"{name}: {why}" for name, why in missing.items())
        raise InvalidInputError(f"no evaluation set could be evaluated ({reasons})")
    return results


def run_zeroshot_suite(model: nn.Module, root: str | os.PathLike, sets: str | Sequence[str] | None = None, *,
                       batch_size: int = 32, device: str = "cpu", workers: int = 0, progress: bool = True,
                       cache_dir: str | os.PathLike | None = None, max_items: int | None = None) -> dict[str, Any]:
    """Zero-shot top-1 accuracy on the test split of each set found under ``root``.

    Args:
        model: a MedMoE model.
        root: the folder holding one folder per set (see :data:`~medmoe.align.suites.sets.EVAL_SETS`).
        sets: names of the sets to run (default the nine of the paper's Table 1).
        cache_dir: where sets stored as arrays (MRNet, MedMNIST) write their PNGs (default inside each set).
        max_items: evaluate at most that many evenly spaced test images per set (quick checks).

    Returns:
        ``{"suite": "zeroshot", "root", "sets": {name: {"accuracy", "n", "n_unreadable", "classes",
        "column", "mean_auroc"}}, "missing": {name: reason}, "mean_accuracy"}``; accuracies are fractions
        (0..1), the mean is over the sets evaluated; ``mean_auroc`` (one-vs-rest, not in the paper's
        table) is kept for reference.

    Raises:
        InvalidInputError: ``root`` is not a folder, an unknown set name, or no set could be evaluated.
    """
    root = Path(root)
    specs = select_sets(sets, ZEROSHOT_SETS)
    found, missing = _collect(specs, root, ("test",), cache_dir, progress)

    def evaluate(spec: EvalSet, rows: dict[str, list[ManifestRow]]) -> dict[str, Any]:
        emb = embed_rows(model, rows["test"], batch_size=batch_size, device=device, workers=workers,
                         progress=progress, max_items=max_items)
        classifier = ZeroShotClassifier.from_prompts(model, {c: list(p) for c, p in spec.prompts.items()})
        metrics = classification_metrics(classifier.logits(emb.image_embeds).numpy(), emb.labels, spec.classes)
        log.info("%s: zero-shot top-1 %.4f on %d images", spec.name, metrics["accuracy"], metrics["n_accuracy"])
        return {"column": spec.column, "accuracy": metrics["accuracy"], "n": metrics["n_accuracy"],
                "n_unreadable": len(emb.bad), "classes": spec.classes, "mean_auroc": metrics["mean_auroc"]}

    results = _run_each(specs, found, missing, evaluate, "zero-shot sets", progress)
    return {"suite": "zeroshot", "root": str(root), "sets": results, "missing": missing,
            "mean_accuracy": float(np.mean([r["accuracy"] for r in results.values()]))}


def run_probe_suite(model: nn.Module, root: str | os.PathLike, sets: str | Sequence[str] | None = None, *,
                    fractions: Sequence[float] = (0.01, 0.1, 1.0), seeds: Sequence[int] = (0, 1, 2),
                    batch_size: int = 32, device: str = "cpu", workers: int = 0, progress: bool = True,
                    cache_dir: str | os.PathLike | None = None, max_items: int | None = None) -> dict[str, Any]:
    """Linear probes (logistic regression on frozen image embeddings) at ``fractions`` of the training labels.

    Each fraction below 1 is drawn (stratified) once per seed and the accuracies are averaged; the full
    training set is the same for every seed, so it is fitted once.

    Args:
        sets: names of the sets (default the four of the paper's Table 2).
        seeds: seeds of the subsamples.
        max_items: at most that many evenly spaced train and test images per set (quick checks).

    Returns:
        ``{"suite": "probe", "root", "sets": {name: {"column", "n_train", "n_test", "fractions": {"1%":
        {"accuracy" (mean over seeds), "std", "runs", "n_train"}}}}, "missing", "seeds"}``.

    Raises:
        InvalidInputError: no seed, ``root`` is not a folder, an unknown set name, or no set could be
            evaluated.
    """
    if not seeds:
        raise InvalidInputError("the probe suite needs at least one seed")
    root = Path(root)
    specs = select_sets(sets, PROBE_SETS)
    found, missing = _collect(specs, root, ("train", "test"), cache_dir, progress)
    options = {"batch_size": batch_size, "device": device, "workers": workers, "progress": progress,
               "max_items": max_items}

    def evaluate(spec: EvalSet, rows: dict[str, list[ManifestRow]]) -> dict[str, Any]:
        train, test = embed_rows(model, rows["train"], **options), embed_rows(model, rows["test"], **options)
        train_x, test_x = train.image_embeds.numpy(), test.image_embeds.numpy()
        train_y, test_y = [s[0] for s in train.labels], [s[0] for s in test.labels]
        per_fraction: dict[str, dict[str, Any]] = {}
        for fraction in fractions:
            runs = [linear_probe(train_x, train_y, test_x, test_y, fractions=(fraction,), seed=seed)
                    for seed in (seeds if fraction < 1 else seeds[:1])]
            name = next(iter(runs[0]))
            accuracies = [r[name]["accuracy"] for r in runs]
            per_fraction[name] = {"accuracy": float(np.mean(accuracies)), "std": float(np.std(accuracies)),
                                  "runs": accuracies, "n_train": runs[0][name]["n_train"]}
        return {"column": spec.column, "n_train": len(train), "n_test": len(test), "fractions": per_fraction}

    results = _run_each(specs, found, missing, evaluate, "probe sets", progress)
    return {"suite": "probe", "root": str(root), "sets": results, "missing": missing, "seeds": list(seeds)}
