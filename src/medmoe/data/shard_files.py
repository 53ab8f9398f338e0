"""Tar shard files: writing them from a manifest, listing them, reading their samples.

A shard is an uncompressed tar whose members are grouped by key (the file name up to its first dot)::

    000000042.png    the image after reading (windowed, 8-bit PNG or JPEG, optionally downsized)
    000000042.txt    the raw report (UTF-8)
    000000042.json   {"index", "source", "modality", "labels", "dataset", "split", "row"}

Shards written by other tools (UniMed, the MedMoE code: ``key.jpg`` + ``key.txt`` + optional ``key.cls``)
read too: ``.json`` is optional. ``index.json`` in the output directory lists the shards and their
sample counts (per split too), which is what defines a training epoch without reading the shards.

A shard source is a folder of ``.tar`` files, a glob, a brace pattern (``corpus/shard-{000000..000999}.tar``),
a list, or remote URLs as WebDataset opens them: ``http(s)://`` (through ``curl``), ``pipe:COMMAND``, and any
other scheme through fsspec (``s3://``, ``gs://``... with the matching fsspec backend installed). Reading a
shard is WebDataset's streaming tar reader; medmoe adds only what it needs on top: errors that name the
shard, and sample counts.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import re
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import braceexpand
import numpy as np
from PIL import Image
from tqdm.auto import tqdm
from webdataset.gopen import gopen, gopen_schemes
from webdataset.tariterators import base_plus_ext

from medmoe.data.dataset import BadSample
from medmoe.data.manifest import ManifestRow, normalize_split, read_manifest
from medmoe.data.readers import read_image
from medmoe.errors import CorruptFileError, InvalidInputError, MedMoEError
from medmoe.limits import MAX_MEMBER_BYTES_ENV, limit

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
    shuffle_seed: int | None = None,
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
        shuffle_seed: write the rows in an order permuted by this seed (None keeps the manifest order).
            Streaming reads shards sequentially, so a manifest sorted by dataset or modality would give
            one-source batches; shuffling once here mixes every shard. Metadata ``index`` stays the row's
            manifest position.
        progress: tqdm progress bar.
    """
    if per_shard < 1:
        raise InvalidInputError(f"per_shard must be >= 1, got {per_shard}")
    if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
        raise InvalidInputError(f"max_size must be a positive number of pixels or None, got {max_size!r}")
    if image_format not in ("png", "jpg"):
        raise InvalidInputError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    rows = read_manifest(manifest) if isinstance(manifest, str | os.PathLike) else list(manifest)
    wanted = normalize_split(split)
    positions = [i for i, r in enumerate(rows) if wanted is None or normalize_split(r.split) == wanted]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(positions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    bad: list[BadSample] = []
    tar: tarfile.TarFile | None = None
    tmp_name = ""
    count = 0
    written = 0
    splits: dict[str, int] = {}

    def close_shard() -> None:
        nonlocal tar, count, splits
        if tar is None:
            return
        tar.close()
        final = out / f"{prefix}-{len(shards):06d}.tar"
        os.replace(tmp_name, final)
        shards.append({"name": final.name, "count": count, "splits": splits})
        tar, count, splits = None, 0, {}

    try:
        for index in tqdm(positions, desc="sharding", unit="sample", disable=not progress):
            row = rows[index]
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
            row_split = normalize_split(row.split) or ""
            splits[row_split] = splits.get(row_split, 0) + 1
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


_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^pipe:")


def is_remote(url: str) -> bool:
    """Whether a shard location is a URL or a ``pipe:`` command rather than a local path."""
    return bool(_URL.match(url)) and not url.startswith("file://")


def _expand_one(text: str) -> list[str]:
    names = list(braceexpand.braceexpand(text)) if "{" in text else [text]
    if any(is_remote(n) for n in names):
        return names
    found: list[str] = []
    for name in names:
        name = name.removeprefix("file://")
        if os.path.isdir(name):
            found += sorted(glob.glob(os.path.join(name, "*.tar")))
        elif any(ch in name for ch in "*?["):
            found += sorted(glob.glob(name))
        elif os.path.isfile(name):
            found.append(name)
        else:
            raise InvalidInputError(f"shard {name!r}: no such file or folder")
    return found


def list_shards(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard locations from a folder (its ``*.tar``), a glob, a brace pattern, a URL or a list of these.

    Brace patterns (``shard-{000000..000099}.tar``) expand as in WebDataset; local matches are sorted,
    the order of a pattern or list is kept.

    Raises:
        InvalidInputError: nothing matched, or a local path in a pattern or list does not exist.
    """
    items = [source] if isinstance(source, str | os.PathLike) else list(source)
    found = [url for item in items for url in _expand_one(os.fspath(item))]
    if not found:
        raise InvalidInputError(f"no shards found in {source!r} (expected .tar files)")
    return found


def looks_like_shards(source: str | os.PathLike) -> bool:
    """Whether ``--data`` names shards (a folder of ``.tar``, a ``.tar`` file, pattern or URL) and not a manifest."""
    text = os.fspath(source)
    if is_remote(text) or "{" in text or text.endswith(".tar"):
        return True
    if os.path.isdir(text):
        return bool(glob.glob(os.path.join(text, "*.tar")))
    return any(ch in text for ch in "*?[") and any(n.endswith(".tar") for n in glob.glob(text))


def open_shard(url: str) -> BinaryIO:
    """A binary stream of one shard: a local file, WebDataset's ``gopen`` for the schemes it knows
    (``http(s)`` through curl, ``pipe:``, ``gs``...), fsspec for the others (``s3://``, ``az://``...).

    Raises:
        MissingFileError / CorruptFileError: the shard cannot be opened (naming it and why).
    """
    from medmoe.data.readers import MissingFileError

    if not is_remote(url):
        path = url.removeprefix("file://")
        if not os.path.isfile(path):
            raise MissingFileError(f"{path}: no such shard")
        return open(path, "rb")
    scheme = url.split(":", 1)[0].lower()
    try:
        if scheme in gopen_schemes:
            return gopen(url, "rb")
        import fsspec

        return fsspec.open(url, "rb").open()
    except FileNotFoundError as err:
        tool = {"http": "curl", "https": "curl", "gs": "gsutil"}.get(scheme, "the command")
        raise CorruptFileError(f"{url}: cannot open ({err}); is {tool} installed?") from err
    except ImportError as err:
        raise CorruptFileError(f"{url}: no fsspec backend for {scheme}:// ({err})") from err
    except Exception as err:  # noqa: BLE001 - any opener failure names the shard
        raise CorruptFileError(f"{url}: cannot open shard ({type(err).__name__}: {err})") from err


def member_key(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a tar member name, None for hidden files (``.DS_Store``...)."""
    base = os.path.basename(name)
    if not base or base.startswith("."):
        return None
    stem, _, ext = base.partition(".")
    folder = os.path.dirname(name)
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _member_problem(info: tarfile.TarInfo, allowed: int) -> str | None:
    """Why a tar member may not be read (None when it may): only regular files within the size limit."""
    if info.issparse():
        return f"a GNU sparse file claiming {info.size:,} bytes"
    if not info.isreg():
        kinds = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character "
                 "device", tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO"}
        return kinds.get(info.type, f"a special member (type {info.type!r})")
    if info.size > allowed:
        return (f"{info.size:,} bytes, over the member limit of {allowed:,} (raise it with "
                f"{MAX_MEMBER_BYTES_ENV}=N or max_member_bytes=; see docs/security.md)")
    return None


def _tar_members(stream: BinaryIO, url: str, allowed: int) -> Iterator[tuple[str, bytes | None, str | None]]:
    """``(name, data, None)`` of the regular members of a tar stream (compressed too), directories skipped;
    ``(name, None, problem)`` for a refused one (sparse, link, device, FIFO, over ``allowed`` bytes), whose
    data is never read, after which the stream stops.

    Raises:
        CorruptFileError: a member shorter than its header says.
    """
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if info.isdir():
                continue
            problem = _member_problem(info, allowed)
            if problem is not None:
                yield info.name, None, problem
                return
            handle = tar.extractfile(info)
            data = handle.read() if handle is not None else b""
            if len(data) != info.size:
                raise CorruptFileError(f"{url}: member {info.name!r} truncated ({len(data)} of {info.size} bytes)")
            yield info.name, data, None


def iter_tar_samples(url: str, *, max_member_bytes: int | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` for each sample of a shard, streamed (local path or URL).

    Members are grouped by key as WebDataset does (``dir/key.ext``: key up to the first dot of the file
    name); hidden files and ``__meta__`` entries are skipped. A member repeating an extension of the current
    sample starts a new sample under the same key (reported by the callers that care).

    Only regular members are read, each checked from its tar header before its data: sparse members (whose
    stated size can be far above what the shard stores), links, devices and FIFOs are refused, and so is a
    member over ``max_member_bytes`` (default ``MEDMOE_MAX_MEMBER_BYTES``, 512 MiB; see :mod:`medmoe.limits`).

    Raises:
        CorruptFileError: the shard cannot be opened, its tar stream is broken, or a member is refused
            (samples read before the damage have been yielded); the message names the shard (and member).
    """
    allowed = limit(MAX_MEMBER_BYTES_ENV, max_member_bytes)
    stream = open_shard(url)
    closed = False
    failure: Exception | None = None
    try:
        key, group = None, {}
        for fname, data, problem in _tar_members(stream, url, allowed):
            prefix, suffix = base_plus_ext(fname.removeprefix("./"))
            if problem is not None:
                if group and prefix != key:
                    yield key, group  # complete: the refused member belongs to the next sample
                raise CorruptFileError(f"{url}: member {fname!r} refused: {problem}")
            if prefix is None or os.path.basename(fname).startswith(("__", ".")):
                continue
            suffix = suffix.lower()
            # A member that repeats one already in the sample starts a new sample with the same key, where
            # WebDataset's group_by_keys raises and the rest of the shard would be lost; callers see the
            # repeated key and report it.
            if prefix != key or suffix in group:
                if group:
                    yield key, group
                key, group = prefix, {}
            group[suffix] = data
        if group:
            yield key, group
        closed = True
        stream.close()  # a remote reader's exit status (curl's HTTP error) surfaces here
    except MedMoEError:
        raise
    except Exception as err:  # tarfile, zlib, lzma, OSError, EOFError ...: every tar error names the shard
        failure = err
    finally:
        if not closed:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - the first error is the one worth reporting
                pass
    if failure is not None:
        raise CorruptFileError(f"{url}: unreadable tar shard ({type(failure).__name__}: {failure})") from failure


def scan_shard(path: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """``(key, {extension: (byte offset, size)})`` per sample of a local shard, reading only tar headers.

    Raises:
        CorruptFileError: unreadable tar.
    """
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parsed = member_key(member.name) if member.isfile() and not member.issparse() else None
                if parsed is None:
                    continue
                if not samples or samples[-1][0] != parsed[0]:
                    samples.append((parsed[0], {}))
                samples[-1][1][parsed[1]] = (member.offset_data, member.size)
    except _TAR_ERRORS as err:
        raise CorruptFileError(f"{path}: cannot read tar shard ({type(err).__name__}: {err})") from err
    return samples


def _read_index(shards: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Entries of the ``index.json`` files next to the shards, by shard location (missing: none)."""
    entries: dict[str, dict[str, Any]] = {}
    for folder in dict.fromkeys(url.rsplit("/", 1)[0] if "/" in url else "." for url in shards):
        location = f"{folder}/{INDEX_NAME}"
        try:
            if is_remote(location):
                if location.startswith("pipe:"):
                    continue
                with open_shard(location) as handle:
                    data = json.loads(handle.read().decode("utf-8"))
            elif os.path.isfile(location):
                data = json.loads(Path(location).read_text(encoding="utf-8"))
            else:
                continue
        except (MedMoEError, OSError, ValueError) as err:
            logger.info("no usable %s (%s): counting samples in the shards", location, err)
            continue
        for entry in data.get("shards", []) if isinstance(data, dict) else []:
            if isinstance(entry, dict) and "name" in entry:
                entries[f"{folder}/{entry['name']}"] = entry
    return {url: entries[url] for url in shards if url in entries}


def sample_metadata(members: dict[str, bytes]) -> dict[str, Any]:
    """A sample's ``.json`` metadata; ``{}`` when absent or unreadable (decoding the sample reports why)."""
    try:
        meta = json.loads(members["json"].decode("utf-8")) if "json" in members else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _count_members(url: str, split: str | None) -> int:
    if split is None and not is_remote(url):
        return len(scan_shard(url))
    count = 0
    for _, members in iter_tar_samples(url):
        count += split is None or normalize_split(sample_metadata(members).get("split")) in (None, split)
    return count


def shard_sample_counts(shards: Sequence[str], split: str | None = None, *, progress: bool = False) -> list[int]:
    """Samples of each shard (of ``split`` only, when given): from ``index.json`` where it has them,
    else by reading the shards once (headers only for local shards without a split filter).

    Raises:
        CorruptFileError: a shard that has to be counted cannot be read.
    """
    wanted = normalize_split(split)
    index = _read_index(shards)
    counts: list[int] = []
    missing = 0
    for url in tqdm(shards, desc="counting shard samples", disable=not progress, leave=False):
        entry = index.get(url)
        if entry is not None and wanted is None and isinstance(entry.get("count"), int):
            counts.append(entry["count"])
        elif entry is not None and isinstance(entry.get("splits"), dict):
            counts.append(int(entry["splits"].get(wanted, 0)) + int(entry["splits"].get("", 0)))
        else:
            missing += 1
            counts.append(_count_members(url, wanted))
    if missing:
        logger.info("counted the samples of %d shard(s) without an %s entry by reading them", missing, INDEX_NAME)
    return counts
