"""WebDataset-style tar shards: writing them from a manifest and streaming them in training.

A shard is an uncompressed tar whose members are grouped by key (the file name up to its first dot)::

    000000042.png    the image after reading (windowed, 8-bit PNG or JPEG, optionally downsized)
    000000042.txt    the raw report (UTF-8)
    000000042.json   {"index", "source", "modality", "labels", "dataset", "split", "row"}

Shards written by other tools (UniMed, the MedMoE code: ``key.jpg`` + ``key.txt`` + optional ``key.cls``)
stream too: ``.json`` is optional, a ``.cls`` value becomes the sample's label. ``index.json`` in the
output directory lists the shards and their sample counts.

:class:`ShardDataset` gives each DDP rank and DataLoader worker its own subset of shards (or, when there
are fewer shards than readers, every reader its own stride of samples), so that together they see every
sample exactly once per epoch.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from tqdm.auto import tqdm

from medmoe.data.dataset import BadSample, build_item, sample_generator
from medmoe.data.manifest import ManifestRow, normalize_split, read_manifest
from medmoe.data.readers import decode_image, read_image
from medmoe.data.transforms import ImageTransform
from medmoe.errors import CorruptFileError, InvalidInputError

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
SHARD_FORMAT = "medmoe-shards/1"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "dcm", "nii", "nii.gz")


@dataclass
class ShardWriteResult:
    """Outcome of :func:`write_shards`."""

    shards: list[str]
    samples: int
    bad: list[BadSample]


def _encode(image: np.ndarray, fmt: str, max_size: int | None) -> bytes:
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    pil = Image.fromarray(pixels)
    if max_size and max(pil.size) > max_size:
        scale = max_size / max(pil.size)
        pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.BILINEAR)
    buffer = io.BytesIO()
    if fmt == "png":
        pil.save(buffer, format="PNG", compress_level=1)
    else:
        pil.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    manifest: str | os.PathLike | Sequence[ManifestRow],
    out_dir: str | os.PathLike,
    *,
    per_shard: int = 1000,
    split: str | None = None,
    image_format: str = "png",
    max_size: int | None = None,
    prefix: str = "shard",
    progress: bool = False,
) -> ShardWriteResult:
    """Read every row's image through the real reader and write tar shards.

    Rows whose image cannot be read are skipped, logged and returned in ``bad``. Each shard is written to
    a temporary name and renamed, so an interrupted run leaves no half shard behind.

    Args:
        manifest: manifest path or rows (absolute image paths).
        out_dir: output directory (created); gets ``{prefix}-000000.tar``... and ``index.json``.
        per_shard: samples per shard.
        split: only rows of this split.
        image_format: ``"png"`` (lossless 8-bit) or ``"jpg"`` (smaller).
        max_size: downsize images whose longer side exceeds this (keeps shards small; None keeps size).
        prefix: shard file name prefix.
        progress: tqdm progress bar.
    """
    if per_shard < 1:
        raise InvalidInputError(f"per_shard must be >= 1, got {per_shard}")
    if image_format not in ("png", "jpg"):
        raise InvalidInputError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    rows = read_manifest(manifest) if isinstance(manifest, str | os.PathLike) else list(manifest)
    wanted = normalize_split(split)
    rows = [r for r in rows if wanted is None or normalize_split(r.split) == wanted]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    bad: list[BadSample] = []
    tar: tarfile.TarFile | None = None
    tmp_name = ""
    count = 0
    written = 0

    def close_shard() -> None:
        nonlocal tar, count
        if tar is None:
            return
        tar.close()
        final = out / f"{prefix}-{len(shards):06d}.tar"
        os.replace(tmp_name, final)
        shards.append({"name": final.name, "count": count})
        tar, count = None, 0

    try:
        for index, row in enumerate(tqdm(rows, desc="sharding", unit="sample", disable=not progress)):
            try:
                image, meta = read_image(row.image)
                encoded = _encode(image, image_format, max_size)
            except Exception as err:
                bad.append(BadSample(index, row.image, f"{type(err).__name__}: {err}"))
                logger.warning("skipping %s: %s", row.image, err)
                continue
            if tar is None:
                fd, tmp_name = tempfile.mkstemp(prefix=f".{prefix}-", suffix=".tar.tmp", dir=out)
                os.close(fd)
                tar = tarfile.open(tmp_name, "w", format=tarfile.USTAR_FORMAT)
            key = f"{index:09d}"
            metadata = {
                "index": index,
                "source": row.image,
                "modality": row.modality or meta.modality,
                "labels": row.labels,
                "dataset": row.dataset,
                "split": row.split,
                "row": row.row,
            }
            _add_member(tar, f"{key}.{image_format}", encoded)
            _add_member(tar, f"{key}.txt", row.report.encode("utf-8"))
            _add_member(tar, f"{key}.json", json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
            count += 1
            written += 1
            if count >= per_shard:
                close_shard()
        close_shard()
    finally:
        if tar is not None:
            tar.close()
            os.unlink(tmp_name)
    index_data = {"format": SHARD_FORMAT, "shards": shards, "samples": written, "bad": len(bad), "split": wanted}
    (out / INDEX_NAME).write_text(json.dumps(index_data, indent=1))
    logger.info("wrote %d samples in %d shards to %s (%d bad rows skipped)", written, len(shards), out, len(bad))
    return ShardWriteResult(shards=[str(out / s["name"]) for s in shards], samples=written, bad=bad)


def list_shards(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard files from a directory (its ``*.tar``), a glob pattern, a single file or a list, sorted.

    Raises:
        InvalidInputError: nothing matched.
    """
    if isinstance(source, str | os.PathLike):
        text = os.fspath(source)
        if os.path.isdir(text):
            found = sorted(glob.glob(os.path.join(text, "*.tar")))
        elif any(ch in text for ch in "*?["):
            found = sorted(glob.glob(text))
        else:
            found = [text]
    else:
        found = sorted(os.fspath(s) for s in source)
    if not found:
        raise InvalidInputError(f"no shards found in {source!r} (expected .tar files)")
    return found


def distributed_position() -> tuple[int, int]:
    """(rank, world size) from an initialised torch.distributed group, else env RANK / WORLD_SIZE."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise InvalidInputError(f"RANK / WORLD_SIZE must be integers ({err})") from err
    if not 0 <= rank < world:
        raise InvalidInputError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


def iter_tar_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` for each group of consecutive members sharing a key.

    Raises:
        CorruptFileError: the tar itself is unreadable (a bad member is the reader's problem, not this).
    """
    key: str | None = None
    group: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                if base.startswith("."):
                    continue
                stem, _, ext = base.partition(".")
                member_key = f"{os.path.dirname(member.name)}/{stem}" if os.path.dirname(member.name) else stem
                if member_key != key:
                    if key is not None and group:
                        yield key, group
                    key, group = member_key, {}
                handle = tar.extractfile(member)
                group[ext.lower()] = handle.read() if handle else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise CorruptFileError(f"{path}: unreadable tar shard ({type(err).__name__}: {err})") from err
    if key is not None and group:
        yield key, group


class ShardDataset(IterableDataset):
    """Stream image-report samples from tar shards; items are the same dicts as
    :class:`~medmoe.data.dataset.ImageReportDataset` (or :class:`BadSample`).

    Readers are the DDP ranks (torch.distributed if initialised, else env ``RANK`` / ``WORLD_SIZE``) times
    the DataLoader workers. With at least as many shards as readers each reader gets whole shards
    (``shard i -> reader i mod R``); otherwise every reader scans all shards and keeps every R-th sample.
    Either way each sample is read by exactly one reader. Ranks may then get different sample counts when
    shard sizes differ; keep shards equal-sized (``write_shards`` does, except the last) for DDP.

    Args:
        source: directory of shards, glob pattern, shard file or list of shard files.
        split: keep samples whose metadata split is this (samples without metadata are kept).
        image_size, train, seed, transform, require_report: as for ImageReportDataset.
        shuffle: shuffle the shard order each epoch by (seed, epoch) (default: ``train``).

    Example:
        >>> ds = ShardDataset("shards/", train=True)
        >>> loader = DataLoader(ds, batch_size=32, num_workers=2, collate_fn=collate_image_report)
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        split: str | None = None,
        image_size: int = 224,
        train: bool = False,
        seed: int = 0,
        transform: ImageTransform | None = None,
        require_report: bool = True,
        shuffle: bool | None = None,
    ) -> None:
        super().__init__()
        self.shards = list_shards(source)
        self.split = normalize_split(split)
        self.transform = transform or ImageTransform(image_size=image_size, train=train)
        self.seed = seed
        self.epoch = 0
        self.require_report = require_report
        self.shuffle = self.transform.train if shuffle is None else shuffle

    def set_epoch(self, epoch: int) -> None:
        """Select the shard order and augmentation stream of ``epoch``."""
        self.epoch = int(epoch)

    def reader_position(self) -> tuple[int, int]:
        """(this reader's id, number of readers) over ranks x DataLoader workers."""
        rank, world = distributed_position()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def epoch_shards(self) -> list[str]:
        """All shards in this epoch's order (the same on every reader)."""
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def __iter__(self) -> Iterator[dict[str, Any] | BadSample]:
        reader, readers = self.reader_position()
        order = self.epoch_shards()
        if len(order) >= readers:
            mine, stride = order[reader::readers], 1
        else:
            mine, stride = order, readers
        position = 0
        for shard in mine:
            try:
                samples = iter_tar_samples(shard)
                for key, members in samples:
                    if stride > 1:
                        take = position % stride == reader
                        position += 1
                        if not take:
                            continue
                    item = self._item(shard, key, members)
                    if item is not None:
                        yield item
            except CorruptFileError as err:
                logger.warning("%s", err)
                yield BadSample(-1, shard, str(err))

    def _item(self, shard: str, key: str, members: dict[str, bytes]) -> dict[str, Any] | BadSample | None:
        name = f"{shard}#{key}"
        meta: dict[str, Any] = {}
        index = zlib.crc32(f"{os.path.basename(shard)}/{key}".encode()) & 0x7FFFFFFF
        try:
            if "json" in members:
                meta = json.loads(members["json"].decode("utf-8"))
                index = int(meta.get("index", index))
            if self.split is not None and meta.get("split") is not None and normalize_split(meta["split"]) != self.split:
                return None
            ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
            if ext is None:
                return BadSample(index, name, f"no image member (have {sorted(members)})")
            image, image_meta = decode_image(members[ext], f"{name}.{ext}")
            labels = meta.get("labels") or []
            if not labels and "cls" in members:
                labels = [members["cls"].decode("utf-8").strip()]
            item = build_item(
                image=image,
                image_modality=image_meta.modality,
                raw_report=members.get("txt", b"").decode("utf-8", errors="replace"),
                row_modality=meta.get("modality"),
                labels=[str(v) for v in labels],
                index=index,
                path=str(meta.get("source") or name),
                transform=self.transform,
                generator=sample_generator(self.seed, self.epoch, index) if self.transform.train else None,
                require_report=self.require_report,
            )
        except Exception as err:  # any failure is a bad sample, never a dead run
            item = BadSample(index, name, f"{type(err).__name__}: {err}")
        if isinstance(item, BadSample):
            logger.warning("bad sample %s: %s", item.path, item.reason)
        return item
