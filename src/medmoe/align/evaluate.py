"""Evaluate a MedMoE model on a manifest: retrieval, zero-shot, linear probe, routing; JSON + PNG figures.

    >>> metrics = evaluate(model, "samples/modality-bench/manifest.csv", out="eval/metrics.json")
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from medmoe import distributed
from medmoe.align.figures import save_attention_figure, save_confusion_matrix
from medmoe.align.probe import linear_probe
from medmoe.align.retrieval import retrieval_metrics
from medmoe.align.zeroshot import MODALITY_PROMPTS, ZeroShotClassifier, classification_metrics, label_prompts
from medmoe.data.dataset import ImageReportDataset, collate_image_report
from medmoe.data.modalities import MODALITIES
from medmoe.data.shards import ShardDataset, looks_like_shards
from medmoe.errors import InvalidInputError
from medmoe.moe import confusion_matrix, expert_usage, routing_agreement
from medmoe.paths import write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class Embeddings:
    """Everything one pass over a dataset computes, on CPU.

    Attributes:
        image_embeds, text_embeds: (N, E) float32, L2-normalised (images routed by the image alone).
        expert_index: (N,) the image router's expert; router_probs: (N, K).
        modality: (N,) modality ids (-1 unknown); labels: per sample, its finding labels.
        reports, paths: per sample; indices: each sample's index in the dataset.
        bad: (path, reason) of the samples that could not be loaded.
    """

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    expert_index: torch.Tensor
    router_probs: torch.Tensor
    modality: torch.Tensor
    labels: list[list[str]] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.image_embeds.shape[0]


def model_image_size(model: nn.Module) -> int:
    return int(model.config.backbone.image_size)


def write_errors_csv(path: Path, bad: Sequence[tuple[str, str]]) -> Path:
    """Write the ``(path, reason)`` of unreadable samples as a CSV with a header; returns ``path``."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(bad)
    return path


def routed_batches(model: nn.Module, loader: DataLoader, device: str | torch.device, bar: tqdm | None,
                   bad: list[tuple[str, str]]) -> Iterator[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """Each batch of ``loader`` holding a readable image, with ``model.image_features`` of its images; every
    sample is counted on ``bar`` (when given) and the ``(path, reason)`` of each unreadable one added to ``bad``."""
    for batch in loader:
        bad += [(b.path, b.reason) for b in batch["bad"]]
        if bar is not None:
            bar.update(batch["images"].shape[0] + len(batch["bad"]))
        if batch["images"].shape[0]:
            yield batch, model.image_features(batch["images"].to(device))


def make_dataset(source: str | os.PathLike, split: str | None, image_size: int, *,
                 by_rank: bool = True) -> ImageReportDataset | ShardDataset:
    """The evaluation dataset of a manifest or a shard source (folder, pattern, URL): rows of ``split``
    (every row when the manifest has no split column; shard samples without a split are always kept).

    ``by_rank=False``: under torch.distributed a shard source is read whole on every rank (by default each
    rank reads its own share of the shards).
    """
    if looks_like_shards(source):
        dataset = ShardDataset(source, split=split, image_size=image_size, train=False, by_rank=by_rank)
        if dataset.num_samples == 0:
            raise InvalidInputError(f"{source}: no sample of split {split!r} in {len(dataset.shards)} shard(s)")
        return dataset
    dataset = ImageReportDataset(source, split=split, image_size=image_size, train=False)
    if len(dataset) == 0 and split is not None:
        all_rows = ImageReportDataset(source, split=None, image_size=image_size, train=False)
        if all(r.split is None for r in all_rows.rows):
            log.info("%s has no split column: evaluating every row", source)
            return all_rows
        raise InvalidInputError(f"{source}: no row in split {split!r}")
    return dataset


def dataset_size(dataset: ImageReportDataset | ShardDataset) -> int:
    """Pairs in a manifest dataset or a shard stream (its sample count)."""
    return dataset.num_samples if isinstance(dataset, ShardDataset) else len(dataset)


def _concat(parts: Sequence[Embeddings]) -> Embeddings:
    """One :class:`Embeddings` of ``parts`` in order (the shares of the ranks)."""
    tensors = ("image_embeds", "text_embeds", "expert_index", "router_probs", "modality")
    return Embeddings(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) if f.name in tensors
                         else [x for p in parts for x in getattr(p, f.name)] for f in fields(Embeddings)})


@torch.no_grad()
def embed_dataset(model: nn.Module, dataset: ImageReportDataset, *, batch_size: int = 32, device: str = "cpu",
                  workers: int = 0, progress: bool = True, max_items: int | None = None,
                  encode_reports: bool = True, across_ranks: bool = False) -> Embeddings:
    """Embed every (image, report) pair of ``dataset`` (bad samples skipped, listed in ``bad``).

    ``encode_reports=False`` skips the text tower (label-only sets: ``text_embeds`` is then ``(N, 0)``).
    ``max_items`` keeps that many evenly spaced rows of a manifest, or the first that many samples of a
    shard stream (write shards with ``--shuffle-seed`` so that a prefix is representative).

    ``across_ranks=True`` (every rank calls it, under torch.distributed): every rank returns the embeddings
    of the whole set, in the order one process gives. A manifest's rows are split into one contiguous block
    per rank and the blocks are gathered; a stream (give it with ``by_rank=False``, see :func:`make_dataset`)
    is embedded whole on every rank.
    """
    model = model.to(device).eval()
    if isinstance(dataset, torch.utils.data.IterableDataset):
        source, total = dataset, getattr(dataset, "num_samples", None)  # any stream; ShardDataset counts
        across_ranks = False  # read whole by every rank: nothing to gather
    else:
        indices = list(range(len(dataset)))
        if max_items is not None and max_items < len(dataset):
            # Evenly spaced rows: manifests are often sorted by modality or class, so a prefix would not do.
            indices = np.linspace(0, len(dataset) - 1, max_items).round().astype(int).tolist()
        across_ranks = across_ranks and distributed.is_distributed()
        if across_ranks:
            indices = np.array_split(np.asarray(indices, dtype=int), distributed.world_size())[distributed.rank()].tolist()
        source, total = torch.utils.data.Subset(dataset, indices), len(indices)
    loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_image_report)
    width = model.config.embed_dim
    # each field starts from an empty block of its shape: a set with no readable sample concatenates too
    parts: dict[str, list[torch.Tensor]] = {
        "image_embeds": [torch.empty(0, width)],
        "text_embeds": [torch.empty(0, width if encode_reports else 0)],
        "expert_index": [torch.empty(0, dtype=torch.long)],
        "router_probs": [torch.empty(0, model.num_experts)],
        "modality": [torch.empty(0, dtype=torch.long)]}
    out = Embeddings(*(torch.empty(0) for _ in range(5)))
    if max_items is not None and total is not None:
        total = min(total, max_items)
    bar = tqdm(total=total, desc="embed", unit="pair", disable=not progress, leave=False)
    for batch in loader:
        out.bad += [(b.path, b.reason) for b in batch["bad"]]
        if max_items is not None and len(out.indices) + batch["images"].shape[0] > max_items:
            keep = max(0, max_items - len(out.indices))
            batch = {k: (v[:keep] if k != "bad" else v) for k, v in batch.items()}
        bar.update(batch["images"].shape[0] + len(batch["bad"]))
        if batch["images"].shape[0] == 0:
            if max_items is not None and len(out.indices) >= max_items:
                break
            continue
        features = model.image_features(batch["images"].to(device))
        parts["image_embeds"].append(features["image_embeds"].float().cpu())
        parts["expert_index"].append(features["expert_index"].cpu())
        parts["router_probs"].append(features["router_probs"].float().cpu())
        parts["text_embeds"].append(model.encode_text(batch["reports"]).float().cpu() if encode_reports
                                    else torch.empty(batch["images"].shape[0], 0))
        parts["modality"].append(batch["modality"].cpu())
        out.labels += batch["labels"]
        out.reports += batch["reports"]
        out.paths += batch["paths"]
        out.indices += batch["index"].tolist()
    bar.close()
    for name, blocks in parts.items():
        setattr(out, name, torch.cat(blocks))
    for path, reason in out.bad:
        log.warning("skipped %s: %s", path, reason)
    if across_ranks:
        out = _concat(distributed.all_gather_objects(out))
    if len(out) == 0:
        raise InvalidInputError("no sample of the dataset could be loaded; see the logged bad samples")
    return out


def routing_report(emb: Embeddings, num_experts: int) -> dict[str, Any]:
    """Usage per expert, and (with modality labels) the confusion matrix and agreement.

    ``agreement_identity`` scores expert e as modality e (what label-supervised routing aims at);
    ``agreement`` uses the best one-to-one modality -> expert mapping (routes learned without labels).
    """
    out: dict[str, Any] = {"usage": expert_usage(emb.expert_index, num_experts, dtype=torch.float64).tolist()}
    known = emb.modality >= 0
    if bool(known.any()):
        matrix = confusion_matrix(emb.modality, emb.expert_index, len(MODALITIES), num_experts)
        present = matrix.sum(axis=1) > 0
        agreement, mapping = routing_agreement(matrix[present])
        names = [m for m, p in zip(MODALITIES, present) if p]
        out.update(
            confusion=matrix.tolist(), modalities=list(MODALITIES), n_labelled=int(known.sum()),
            agreement=agreement, mapping={names[r]: e for r, e in mapping.items()},
            agreement_identity=routing_agreement(matrix, match="identity")[0],
        )
    return out


def zero_shot_report(model: nn.Module, emb: Embeddings, *, templates: Sequence[str] | None = None,
                     min_count: int = 2) -> dict[str, Any]:
    """Zero-shot on the finding labels (classes seen at least ``min_count`` times) and on the modality."""
    def scores(prompts: dict[str, Sequence[str]]) -> np.ndarray:
        return ZeroShotClassifier.from_prompts(model, prompts).logits(emb.image_embeds).numpy()

    out: dict[str, Any] = {}
    counts = Counter(label for s in emb.labels for label in s)
    classes = sorted(c for c, n in counts.items() if n >= min_count)
    if len(classes) >= 2:
        prompts = label_prompts(classes, templates) if templates else label_prompts(classes)
        out["labels"] = classification_metrics(scores(prompts), emb.labels, classes)
    present = sorted({int(m) for m in emb.modality.tolist() if m >= 0})
    if len(present) >= 2:
        names = [MODALITIES[m] for m in present]
        targets = [MODALITIES[m] if m >= 0 else "" for m in emb.modality.tolist()]
        prompts = {n: MODALITY_PROMPTS[n] for n in names}
        out["modality"] = classification_metrics(scores(prompts), targets, names)
    return out


def probe_report(train: Embeddings, test: Embeddings, fractions: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Linear probes on the finding label (single-label samples) and on the modality."""
    out: dict[str, Any] = {}
    targets = {"labels": lambda e: [s[0] if len(s) == 1 else None for s in e.labels],
               "modality": lambda e: [MODALITIES[m] if m >= 0 else None for m in e.modality.tolist()]}
    for name, target in targets.items():
        ytr, yte = target(train), target(test)
        itr = [i for i, y in enumerate(ytr) if y is not None]
        ite = [i for i, y in enumerate(yte) if y is not None]
        if len({ytr[i] for i in itr}) < 2 or not ite:
            continue
        out[name] = linear_probe(train.image_embeds[itr].numpy(), [ytr[i] for i in itr],
                                 test.image_embeds[ite].numpy(), [yte[i] for i in ite], fractions=fractions, seed=seed)
    return out


def evaluate(model: nn.Module, manifest: str | os.PathLike, *, split: str | None = "test",
             out: str | os.PathLike | None = None, probe_split: str | None = "train",
             probe_fractions: Sequence[float] = (0.01, 0.1, 1.0), batch_size: int = 32, device: str = "cpu",
             workers: int = 0, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 1024, figures: bool = True,
             attention_examples: int = 4, max_items: int | None = None, progress: bool = True,
             seed: int = 0, per_item: bool = False) -> dict[str, Any]:
    """Every evaluation of the issue on one manifest.

    Args:
        model: a MedMoE model.
        manifest: manifest path.
        split: rows to evaluate (``test``); every row when the manifest has no splits.
        out: metrics JSON path; figures go to ``<out stem>_figures/`` next to it.
        probe_split: rows the linear probe trains on (None or an empty split skips the probe).
        probe_fractions: fractions of those rows (1 %, 10 %, 100 %).
        max_items: cap on evaluated (and probe-training) rows, for quick checks.
        per_item: also keep each pair's image path and retrieval ranks under ``"items"``, so two models can
            be compared item by item (:func:`medmoe.align.compare.compare_retrieval`).

    Returns:
        ``{"n", "bad_samples", "retrieval", "zero_shot", "linear_probe", "routing", "figures"}`` and
        ``"items"`` when ``per_item``.
    """
    size = model_image_size(model)
    dataset = make_dataset(manifest, split, size)
    embed = functools.partial(embed_dataset, model, batch_size=batch_size, device=device, workers=workers,
                              progress=progress, max_items=max_items)
    emb = embed(dataset)
    metrics: dict[str, Any] = {"manifest": str(manifest), "split": split, "n": len(emb), "bad_samples": len(emb.bad)}
    metrics["retrieval"] = retrieval_metrics(emb.image_embeds, emb.text_embeds,
                                             labels=emb.labels if any(emb.labels) else None, ks=ks,
                                             chunk_size=chunk_size, per_item=per_item)
    if per_item:
        ranks = metrics["retrieval"].pop("ranks")
        metrics["items"] = {"paths": list(emb.paths), **{f"{d}_rank": r for d, r in ranks.items()}}
    metrics["zero_shot"] = zero_shot_report(model, emb)
    metrics["routing"] = routing_report(emb, model.num_experts)
    if probe_split:
        # not make_dataset: a manifest without splits must not fall back to probing on its test rows
        dataset_type = ShardDataset if looks_like_shards(manifest) else ImageReportDataset
        train = dataset_type(manifest, split=probe_split, image_size=size, train=False)
        if dataset_size(train) and split != probe_split:
            metrics["linear_probe"] = probe_report(embed(train), emb, probe_fractions, seed)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if figures:
            metrics["figures"] = _figures(model, dataset, emb, metrics, out, attention_examples, device)
        write_text_atomic(out, json.dumps(metrics, indent=2) + "\n")
        log.info("metrics written to %s", out)
    return metrics


def _figures(model: nn.Module, dataset: ImageReportDataset, emb: Embeddings, metrics: dict, out: Path,
             examples: int, device: str) -> list[str]:
    folder = out.with_name(f"{out.stem}_figures")
    written = []
    if "confusion" in metrics["routing"]:
        matrix = np.asarray(metrics["routing"]["confusion"])
        rows = matrix.sum(axis=1) > 0
        names = [m for m, keep in zip(MODALITIES, rows) if keep]
        written.append(str(save_confusion_matrix(matrix[rows], names, folder / "routing_confusion.png")))
    if examples > 0:
        items = (_stream_examples(dataset, examples) if isinstance(dataset, torch.utils.data.IterableDataset)
                 else [dataset[dataset_index] for dataset_index in _examples(emb, examples)])
        items = [it for it in items if isinstance(it, dict)]
        if items:
            images = torch.stack([it["image"] for it in items]).to(device)
            reports = [it["report"] for it in items]
            written.append(str(save_attention_figure(model, images, reports, folder / "attention_maps.png")))
    return written


def _stream_examples(dataset: torch.utils.data.IterableDataset, count: int, look: int = 256) -> list[dict]:
    """Up to ``count`` items among the first ``look`` of a stream, one per modality first."""
    first: dict[int, dict] = {}
    rest: list[dict] = []
    for n, item in enumerate(dataset):
        if n >= look or len(first) >= count:
            break
        if not isinstance(item, dict):
            continue
        if item["modality"] in first:
            rest.append(item)
        else:
            first[item["modality"]] = item
    return (list(first.values()) + rest)[:count]


def _examples(emb: Embeddings, count: int) -> list[int]:
    """Dataset indices of up to ``count`` examples, one per modality first."""
    # the first item of each modality, in the order the modalities first appear
    chosen = sorted(np.unique(emb.modality.numpy(), return_index=True)[1].tolist())[:count]
    chosen += [i for i in range(len(emb)) if i not in chosen][: count - len(chosen)]
    return [emb.indices[i] for i in chosen]
