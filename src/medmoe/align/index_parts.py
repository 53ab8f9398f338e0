"""Embedding a gallery in resumable chunks: each chunk's embeddings and items are one file under
``IDX/parts/``, written atomically, so an interrupted run restarts at the first missing chunk.

A chunk is ``chunk_size`` consecutive rows of a manifest, or one shard of a shard source. Under
``torch.distributed`` the chunks still missing are dealt out to the ranks (``todo[rank::world]``), each
rank writing its own parts; the folder must be one that every rank sees (as training checkpoints).

A part ``part-000012.npz`` holds ``images`` and ``reports`` (n, E) float32 (L2-normalised),
``experts`` (n,), ``modality`` (n,) and ``items`` / ``bad``: JSON text (no pickled object) with each item's
``id``, ``path``, ``report`` and each unreadable sample's ``path`` and ``reason``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, get_worker_info
from tqdm import tqdm

from medmoe.align.evaluate import routed_batches
from medmoe.data.dataset import ImageReportDataset, collate_image_report
from medmoe.data.shards import ShardDataset, looks_like_shards
from medmoe.errors import InvalidInputError

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 4096
PART_PATTERN = "part-{:06d}.npz"
_ARRAYS = ("images", "reports", "experts", "modality")  # a part's arrays; its items and bad are JSON text


class _WholeShard(ShardDataset):
    """A shard source read whole by this process (not split across ranks as ShardDataset does), each item
    carrying its sample key; loader workers take every workers-th sample."""

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for sample in self._samples(0, worker, workers):
            if isinstance(sample, tuple):
                item = self._decode(0, *sample)
                if isinstance(item, dict):
                    item["key"] = sample[1]
                yield item
            else:
                yield sample


@dataclass
class Gallery:
    """The items to index: a manifest dataset cut into row chunks, or shards (a chunk each).

    Attributes:
        source: the manifest or shard source as given; split: the rows kept (None: all).
        dataset: the manifest's :class:`ImageReportDataset` (None for shards); shards: shard URLs.
        chunk_size: rows per chunk of a manifest.
    """

    source: str
    split: str | None
    image_size: int
    chunk_size: int
    dataset: ImageReportDataset | None = None
    shards: list[str] | None = None

    @classmethod
    def open(cls, source: str | os.PathLike, image_size: int, *, split: str | None = None,
             chunk_size: int = DEFAULT_CHUNK_SIZE) -> Gallery:
        text = os.fspath(source)
        if chunk_size < 1:
            raise InvalidInputError(f"chunk size must be >= 1, got {chunk_size}")
        if looks_like_shards(text):
            shards = ShardDataset(text, split=split, image_size=image_size).shards
            return cls(text, split, image_size, chunk_size, shards=shards)
        if not os.path.isfile(text):
            raise InvalidInputError(f"{text}: no such manifest or shard source")
        dataset = ImageReportDataset(text, split=split, image_size=image_size, require_report=False)
        if len(dataset) == 0:
            raise InvalidInputError(f"{text}: no row" + (f" in split {split!r}" if split else ""))
        return cls(text, split, image_size, chunk_size, dataset=dataset)

    @property
    def num_chunks(self) -> int:
        return len(self.shards) if self.shards is not None else -(-len(self.dataset) // self.chunk_size)

    def chunk_size_of(self, chunk: int) -> int | None:
        """Rows in ``chunk`` (None for a shard, whose count is not known before reading it)."""
        return None if self.shards is not None else len(self.chunk_dataset(chunk))

    def chunk_dataset(self, chunk: int):
        if self.shards is not None:
            return _WholeShard([self.shards[chunk]], split=self.split, image_size=self.image_size,
                               require_report=False)
        start = chunk * self.chunk_size
        return Subset(self.dataset, range(start, min(len(self.dataset), start + self.chunk_size)))

    def item_id(self, item_index: int, key: str | None) -> str:
        """A manifest row's ``id`` column, else its 1-based data row in the file; a shard sample's key."""
        if key is not None:
            return key
        row = self.dataset.rows[item_index]
        return str(row.extra.get("id") or row.row or item_index + 1)

    def fingerprint(self) -> dict[str, Any]:
        """What the parts depend on besides the model: the source, its content, split and chunking."""
        content = ("\n".join(self.shards) if self.shards is not None
                   else hashlib.sha256(Path(self.source).read_bytes()).hexdigest())
        return {"source": str(Path(self.source).resolve()) if "://" not in self.source and "{" not in self.source
                else self.source, "content": hashlib.sha256(content.encode()).hexdigest()[:16],
                "split": self.split, "chunk_size": self.chunk_size if self.shards is None else None,
                "chunks": self.num_chunks, "image_size": self.image_size}


def model_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer of the model (16 hex digits): what its embeddings depend on,
    whatever folder it was loaded from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def part_path(folder: Path, chunk: int) -> Path:
    return folder / "parts" / PART_PATTERN.format(chunk)


def finished_chunks(folder: Path, num_chunks: int) -> list[int]:
    return [c for c in range(num_chunks) if part_path(folder, c).is_file()]


@torch.no_grad()
def embed_chunk(model: nn.Module, gallery: Gallery, chunk: int, *, batch_size: int, device: torch.device,
                workers: int = 0, bar: tqdm | None = None) -> dict[str, Any]:
    """Embed one chunk: its items' image and report embeddings, routed expert, ids, paths, reports."""
    loader = DataLoader(gallery.chunk_dataset(chunk), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate_with_keys)
    images, reports, experts, modality = [], [], [], []
    items: list[dict[str, str]] = []
    bad: list[tuple[str, str]] = []
    for batch, features in routed_batches(model, loader, device, bar, bad):
        images.append(features["image_embeds"].float().cpu())
        experts.append(features["expert_index"].cpu())
        texts = batch["reports"]
        embedded = model.encode_text([t or " " for t in texts]).float().cpu()
        # an item without a report gets a zero vector: found by no image->text search
        reports.append(embedded * torch.tensor([bool(t) for t in texts], dtype=torch.float32)[:, None])
        modality.append(batch["modality"].cpu())
        items += [{"id": gallery.item_id(index, key), "path": path, "report": text} for index, key, path, text
                  in zip(batch["index"].tolist(), batch["keys"], batch["paths"], texts)]
    dim = int(model.config.embed_dim)
    return {"images": _cat(images, (0, dim), np.float32), "reports": _cat(reports, (0, dim), np.float32),
            "experts": _cat(experts, (0,), np.int64), "modality": _cat(modality, (0,), np.int64),
            "items": items, "bad": [{"path": path, "reason": reason} for path, reason in bad]}


def _cat(tensors: list[torch.Tensor], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    return torch.cat(tensors).numpy().astype(dtype) if tensors else np.zeros(empty_shape, dtype)


def _collate_with_keys(samples):
    keys = [s.get("key") for s in samples if isinstance(s, dict)]
    return {**collate_image_report(samples), "keys": keys}


def write_part(folder: Path, chunk: int, part: dict[str, Any]) -> Path:
    """Write a chunk's part atomically (a temporary file renamed into place)."""
    path = part_path(folder, chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **{name: part[name] for name in _ARRAYS}, items=np.asarray(json.dumps(part["items"])),
             bad=np.asarray(json.dumps(part["bad"])))
    os.replace(tmp, path)
    return path


def read_part(path: Path) -> dict[str, Any]:
    """A part written by :func:`write_part` (no pickle)."""
    try:
        with np.load(path) as data:
            return {**{name: data[name] for name in _ARRAYS}, "items": json.loads(str(data["items"])),
                    "bad": json.loads(str(data["bad"]))}
    except (OSError, ValueError, KeyError) as err:
        raise InvalidInputError(f"{path}: unreadable index part ({err}); delete it to embed that chunk again") from None


def merge_parts(folder: Path, num_chunks: int) -> dict[str, Any]:
    """All parts in chunk order, concatenated."""
    missing = [c for c in range(num_chunks) if not part_path(folder, c).is_file()]
    if missing:
        raise InvalidInputError(f"{folder}: index parts of chunk(s) {missing[:5]} missing; run the build again")
    parts = [read_part(part_path(folder, c)) for c in range(num_chunks)]
    return {**{name: np.concatenate([p[name] for p in parts]) for name in _ARRAYS},
            "items": [item for p in parts for item in p["items"]], "bad": [b for p in parts for b in p["bad"]]}
