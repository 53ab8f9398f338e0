"""Zero-shot classification of every image of a folder, a manifest or shards, written to a CSV.

    >>> prompts = class_prompts("effusion,pneumothorax,normal")        # default templates per class
    >>> result = zero_shot_folder(model, "scans/", prompts, "preds.csv")
    >>> result.n, result.errors[:1]
    (118, [('scans/broken.dcm', 'CorruptFileError: ...')])

Each image is routed and embedded by the image alone (:meth:`MedMoE.image_features`). A class is the mean of
its prompts' text embeddings (:class:`~medmoe.align.zeroshot.ZeroShotClassifier`); the probabilities are
``softmax(logit_scale * cosine)`` over the classes, with the model's own (trained) logit scale, as CLIP
turns cosines into probabilities. Unreadable images are listed (``<out>.errors.csv``), never fatal.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm import tqdm

from medmoe.align.evaluate import model_image_size, routed_batches, write_errors_csv
from medmoe.align.zeroshot import ZeroShotClassifier, label_prompts
from medmoe.data.dataset import ImageReportDataset, collate_image_report
from medmoe.data.manifest import ManifestRow
from medmoe.data.shards import ShardDataset, looks_like_shards
from medmoe.devices import resolve_device
from medmoe.errors import InvalidInputError

log = logging.getLogger(__name__)

# What the readers of medmoe.data.readers open; files without a suffix are kept when they are DICOM.
IMAGE_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima", ".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".jpe", ".tif",
                  ".tiff", ".bmp")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
FIXED_COLUMNS = ("path", "top_class", "top_prob", "expert", "expert_prob")


@dataclass
class ZeroShotResult:
    """What :func:`zero_shot_folder` did.

    Attributes:
        out: the predictions CSV; errors_out: the CSV of unreadable images (None when every image read).
        n: images classified; classes: the class columns, in order.
        counts: images per top class; errors: ``(path, reason)`` of the unreadable images.
    """

    out: Path
    n: int
    classes: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)
    errors_out: Path | None = None


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(IMAGE_SUFFIXES):
        return True
    if "." in name:
        return False
    try:  # DICOM files often have no suffix: the preamble says what they are
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder`` (recursively, sorted; hidden files and folders skipped).

    Raises:
        InvalidInputError: ``folder`` is not a folder or holds no image file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(f"{root}: not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")
                  and _is_image_file(Path(dirpath) / f)]
    if not found:
        raise InvalidInputError(f"{root}: no image file (DICOM, NIfTI, PNG, JPEG, TIFF, BMP) in it or below it")
    return found


def image_dataset(source: str | os.PathLike, image_size: int, split: str | None = None) -> Dataset | IterableDataset:
    """The images of a folder (every readable file below it), a manifest (its rows, of ``split`` when
    given) or shards, as :class:`ImageReportDataset` items; reports are optional here.

    Raises:
        InvalidInputError: the source does not exist, or a folder holds no image.
    """
    text = os.fspath(source)
    if os.path.isdir(text) and not looks_like_shards(text):
        rows = [ManifestRow(image=str(p.resolve())) for p in list_images(text)]
        return ImageReportDataset(rows, image_size=image_size, require_report=False)
    if looks_like_shards(text):
        return ShardDataset(text, split=split, image_size=image_size, require_report=False)
    if not os.path.isfile(text):
        raise InvalidInputError(f"{text}: no such folder or manifest")
    if not text.lower().endswith(MANIFEST_SUFFIXES):
        raise InvalidInputError(f"{text}: expected a folder of images, a manifest ({', '.join(MANIFEST_SUFFIXES)}) "
                                "or shards")
    return ImageReportDataset(text, split=split, image_size=image_size, require_report=False)


def class_prompts(classes: str | Sequence[str] | None = None, classes_file: str | os.PathLike | None = None
                  ) -> dict[str, list[str]]:
    """The prompt ensemble of each class, from a comma-separated list or a file (exactly one of them).

    A YAML or JSON file maps each class to its prompts (``{effusion: ["pleural effusion.", ...]}``; a single
    string is one prompt); a text file holds one class per line (blank lines and ``#`` comments skipped).
    Classes given by name get the default templates of :func:`~medmoe.align.zeroshot.label_prompts`.

    Raises:
        InvalidInputError: neither or both given, an unreadable or malformed file, fewer than two classes,
            a repeated class, or a class named like a fixed column of the CSV.
    """
    if (classes is None) == (classes_file is None):
        raise InvalidInputError("give the classes either as a comma-separated list or as a file, not both")
    if classes_file is not None:
        return _read_classes_file(Path(classes_file))
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else [str(c) for c in classes]
    return label_prompts(_check_names([c for c in names if c], "--classes"))


def _check_names(names: list[str], where: str) -> list[str]:
    if len(names) < 2:
        raise InvalidInputError(f"{where}: zero-shot needs at least two classes, got {names}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidInputError(f"{where}: class(es) {repeated} given more than once")
    clash = [n for n in names if n in FIXED_COLUMNS]
    if clash:
        raise InvalidInputError(f"{where}: class name(s) {clash} clash with the CSV columns {list(FIXED_COLUMNS)}")
    return names


def _read_classes_file(path: Path) -> dict[str, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such classes file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"{path}: cannot read the classes file ({err})") from None
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        return label_prompts(_check_names([n for n in names if n], str(path)))
    import yaml

    try:  # YAML reads JSON too
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        reason = str(err).replace("\n", " ")
        raise InvalidInputError(f"{path}: not valid {path.suffix[1:].upper()} ({reason})") from None
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"{path}: expected a mapping {{class: [prompts, ...]}}, got {type(data).__name__}")
    prompts: dict[str, list[str]] = {}
    for name, value in data.items():
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise InvalidInputError(f"{path}: class {name!r} needs a prompt or a list of non-empty prompts")
        prompts[str(name)] = [v.strip() for v in value]
    _check_names(list(prompts), str(path))
    return prompts


@torch.no_grad()
def zero_shot_folder(model: nn.Module, source: str | os.PathLike, prompts: Mapping[str, Sequence[str]],
                     out: str | os.PathLike, *, split: str | None = None, batch_size: int = 32,
                     device: str | torch.device = "cpu",
                     workers: int = 0, progress: bool = True) -> ZeroShotResult:
    """Classify every image of ``source`` (folder, manifest or shards) and write the predictions CSV.

    The CSV has one row per readable image, in the source's order: ``path``, ``top_class``, ``top_prob``,
    ``expert`` (the image router's expert) and ``expert_prob`` (its routing probability), then one column
    per class holding its probability. Unreadable images go to ``<out stem>.errors.csv`` (``path``,
    ``reason``); a stale errors file of an earlier run is removed when every image reads.

    Args:
        model: a MedMoE model; prompts: ``{class: [prompt, ...]}`` (see :func:`class_prompts`).
        split: rows of a manifest or shards to keep (default all).
        device: ``cpu``, ``cuda[:N]`` or ``auto`` (a GPU when present).
    """
    device = resolve_device(device)
    model = model.to(device).eval()
    names = _check_names(list(prompts), "classes")
    classifier = ZeroShotClassifier.from_prompts(model, prompts)
    scale = float(model.logit_scale)
    dataset = image_dataset(source, model_image_size(model), split)
    total = getattr(dataset, "num_samples", None) if isinstance(dataset, IterableDataset) else len(dataset)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_image_report)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    result = ZeroShotResult(out=out, n=0, classes=names, counts=dict.fromkeys(names, 0))
    with open(tmp, "w", newline="", encoding="utf-8") as f, \
            tqdm(total=total, desc="zero-shot", unit="image", disable=not progress) as bar:
        writer = csv.writer(f)
        writer.writerow([*FIXED_COLUMNS, *names])
        for batch, features in routed_batches(model, loader, device, bar, result.errors):
            probs = (scale * classifier.logits(features["image_embeds"])).softmax(dim=-1).cpu()
            experts = features["expert_index"].cpu().tolist()
            expert_probs = features["router_probs"].float().max(dim=-1).values.cpu().tolist()
            for path, p, expert, expert_prob in zip(batch["paths"], probs.tolist(), experts, expert_probs):
                top = max(range(len(names)), key=p.__getitem__)
                result.counts[names[top]] += 1
                writer.writerow([path, names[top], f"{p[top]:.6f}", expert, f"{expert_prob:.6f}",
                                 *(f"{v:.6f}" for v in p)])
            result.n += len(experts)
    tmp.replace(out)
    errors_out = out.with_name(f"{out.stem}.errors.csv")
    if result.errors:
        result.errors_out = write_errors_csv(errors_out, result.errors)
    elif errors_out.exists():
        errors_out.unlink()
    log.info("%d images classified into %s (%d unreadable)", result.n, out, len(result.errors))
    return result
