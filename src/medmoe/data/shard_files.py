"""Tar shard files: writing them from a manifest, listing them, reading their samples.

A shard is an uncompressed tar whose members are grouped by key (the file name up to its first dot)::

    000000042.png    the image after reading (windowed, 8-bit PNG or JPEG, optionally downsized)
    000000042.txt    the raw report (UTF-8)
    000000042.json   {"index", "source", "modality", "labels", "dataset", "split", "row"}

Shards written by other tools (UniMed, the MedMoE code: ``key.jpg`` + ``key.txt`` + optional ``key.cls``)
read too: ``.json`` is optional. ``index.json`` in the output directory lists the shards and their
sample counts. Uncompressed tars allow random access: :func:`scan_shard` records where each member's
bytes are, :func:`read_members` reads them back.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from medmoe.data.dataset import BadSample
from medmoe.data.manifest import ManifestRow, normalize_split, read_manifest
from medmoe.data.readers import read_image
from medmoe.errors import CorruptFileError, InvalidInputError

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
SHARD_FORMAT = "medmoe-shards/1"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "dcm", "nii", "nii.gz")
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


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


def member_key(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a tar member name, None for hidden files (``.DS_Store``...)."""
    base = os.path.basename(name)
    if not base or base.startswith("."):
        return None
    stem, _, ext = base.partition(".")
    folder = os.path.dirname(name)
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


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
                parsed = member_key(member.name) if member.isfile() else None
                if parsed is None:
                    continue
                if parsed[0] != key:
                    if key is not None and group:
                        yield key, group
                    key, group = parsed[0], {}
                handle = tar.extractfile(member)
                group[parsed[1]] = handle.read() if handle else b""
    except _TAR_ERRORS as err:
        raise CorruptFileError(f"{path}: unreadable tar shard ({type(err).__name__}: {err})") from err
    if key is not None and group:
        yield key, group


def scan_shard(path: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """``(key, {extension: (byte offset, size)})`` per sample, reading only the tar headers.

    Raises:
        CorruptFileError: unreadable tar, or a compressed one (no random access).
    """
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                parsed = member_key(member.name) if member.isfile() else None
                if parsed is None:
                    continue
                if not samples or samples[-1][0] != parsed[0]:
                    samples.append((parsed[0], {}))
                samples[-1][1][parsed[1]] = (member.offset_data, member.size)
    except _TAR_ERRORS as err:
        raise CorruptFileError(
            f"{path}: cannot index tar shard ({type(err).__name__}: {err}); random access needs uncompressed tar"
        ) from err
    return samples


def read_members(handle, members: dict[str, tuple[int, int]]) -> dict[str, bytes]:
    """Read the members :func:`scan_shard` located from an open binary file."""
    out = {}
    for ext, (offset, size) in members.items():
        handle.seek(offset)
        data = handle.read(size)
        if len(data) != size:
            raise CorruptFileError(f"{getattr(handle, 'name', 'shard')}: member .{ext} is truncated")
        out[ext] = data
    return out
