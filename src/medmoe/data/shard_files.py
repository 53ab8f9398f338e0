"""Tar shard files: writing them from a manifest, listing them, reading their samples.

A shard is an uncompressed tar whose members are grouped by key (the file name up to its first dot)::

    000000042.json   {"index", "source", "modality", "labels", "dataset", "split", "row"}
    000000042.png    the image after reading (windowed, 8-bit PNG or JPEG, optionally downsized)
    000000042.txt    the raw report (UTF-8)

Shards written by other tools (UniMed, the MedMoE code: ``key.jpg`` + ``key.txt`` + optional ``key.cls``)
read too: ``.json`` is optional. ``index.json`` in the output directory lists the shards and their
sample counts (per split too), which is what defines a training epoch without reading the shards.

A shard source is a folder of ``.tar`` files, a glob, a brace pattern (``corpus/shard-{000000..000999}.tar``),
a list, or remote URLs: ``http(s)://`` (through ``curl``), ``pipe:COMMAND`` and the other schemes of
WebDataset's ``gopen``, and any other scheme through fsspec (``s3://``, ``az://``... with the matching fsspec
backend installed).

Writing is WebDataset's ``TarWriter``, one per shard; the numbering, the temporary name renamed once the
shard is complete and ``index.json`` are ours (``ShardWriter`` opens its first shard before any sample and
writes under the final name, so an interrupted run would leave a half shard that reads as a whole one).

Reading groups members into samples with WebDataset's ``group_by_keys``. The members themselves come from
our own pass over the tar stream (stdlib ``tarfile``, streamed, as WebDataset's ``tar_file_iterator`` does)
because that iterator reads every regular member whole before anything can look at its header: a GNU
sparse member claiming gigabytes is expanded in memory, an oversized member is read, links are skipped
without a word. Ours checks each header first (:func:`iter_tar_samples`), names the shard in every error,
and starts a new sample where a member repeats an extension (``group_by_keys`` raises there and the rest
of the shard is lost). Output shards read with a bare ``webdataset.WebDataset(urls)`` pipeline.
"""

from __future__ import annotations

import contextlib
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
from webdataset import TarWriter
from webdataset.gopen import gopen, gopen_schemes
from webdataset.tariterators import base_plus_ext, group_by_keys

from medmoe.data.dataset import BadSample
from medmoe.data.manifest import ManifestRow, normalize_split, read_manifest
from medmoe.data.readers import read_image
from medmoe.errors import CorruptFileError, InvalidInputError, MedMoEError, MissingFileError
from medmoe.limits import MAX_MEMBER_BYTES_ENV, limit

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
SHARD_FORMAT = "medmoe-shards/1"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "dcm", "nii", "nii.gz")
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)
_SAVE_OPTIONS = {"png": {"format": "PNG", "compress_level": 1}, "jpg": {"format": "JPEG", "quality": 95}}


@dataclass
class ShardWriteResult:
    """Outcome of :func:`write_shards`."""

    shards: list[str]
    samples: int
    bad: list[BadSample]


def _encode(image: np.ndarray, fmt: str, max_size: int | None) -> bytes:
    pil = Image.fromarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8))
    if max_size and max(pil.size) > max_size:
        scale = max_size / max(pil.size)
        pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.BILINEAR)
    buffer = io.BytesIO()
    pil.save(buffer, **_SAVE_OPTIONS[fmt])
    return buffer.getvalue()


def _check_write_options(per_shard: int, image_format: str, max_size: int | None) -> None:
    if per_shard < 1:
        raise InvalidInputError(f"per_shard must be >= 1, got {per_shard}")
    if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
        raise InvalidInputError(f"max_size must be a positive number of pixels or None, got {max_size!r}")
    if image_format not in _SAVE_OPTIONS:
        raise InvalidInputError(f"image_format must be 'png' or 'jpg', got {image_format!r}")


def _row_positions(rows: Sequence[ManifestRow], wanted: str | None, shuffle_seed: int | None) -> list[int]:
    """Manifest positions of the rows of split ``wanted`` (all when None), permuted by ``shuffle_seed``."""
    positions = [i for i, r in enumerate(rows) if wanted is None or normalize_split(r.split) == wanted]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(positions)
    return positions


def _sample_record(index: int, row: ManifestRow, modality: str | None, image_format: str,
                   encoded: bytes) -> dict[str, Any]:
    """The WebDataset sample of one manifest row: ``__key__`` and the image, report and metadata bytes."""
    metadata = {
        "index": index,
        "source": row.image,
        "modality": row.modality or modality,
        "labels": row.labels,
        "dataset": row.dataset,
        "split": row.split,
        "row": row.row,
    }
    return {
        "__key__": f"{index:09d}",
        image_format: encoded,
        "txt": row.report.encode("utf-8"),
        "json": json.dumps(metadata, ensure_ascii=False).encode("utf-8"),
    }


class _ShardSequence:
    """Numbered shards written with WebDataset's :class:`~webdataset.TarWriter`, each to a temporary name
    renamed to ``{prefix}-NNNNNN.tar`` once complete; :meth:`abort` deletes an incomplete one."""

    def __init__(self, out: Path, prefix: str, per_shard: int) -> None:
        self.out, self.prefix, self.per_shard = out, prefix, per_shard
        self.entries: list[dict[str, Any]] = []
        self._writer: TarWriter | None = None
        self._tmp = ""
        self._splits: dict[str, int] = {}  # samples of the shard being written, by split

    def write(self, sample: dict[str, Any], split: str) -> None:
        if self._writer is None:
            fd, self._tmp = tempfile.mkstemp(prefix=f".{self.prefix}-", suffix=".tar.tmp", dir=self.out)
            os.close(fd)
            self._writer = TarWriter(self._tmp, encoder=False, mode=0o644, user="", group="")
        self._writer.write(sample)
        self._splits[split] = self._splits.get(split, 0) + 1
        if sum(self._splits.values()) >= self.per_shard:
            self.close()

    def close(self) -> None:
        """Finish the shard being written (if any) under its final name."""
        if self._writer is None:
            return
        self._writer.close()
        final = self.out / f"{self.prefix}-{len(self.entries):06d}.tar"
        os.replace(self._tmp, final)
        self.entries.append({"name": final.name, "count": sum(self._splits.values()), "splits": self._splits})
        self._writer, self._splits = None, {}

    def abort(self) -> None:
        """Delete the shard being written (if any): no half shard is left behind."""
        if self._writer is not None:
            self._writer.close()
            os.unlink(self._tmp)
            self._writer = None


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
    """Read every row's image through the real reader and write tar shards with WebDataset's ``TarWriter``.

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
    _check_write_options(per_shard, image_format, max_size)
    rows = read_manifest(manifest) if isinstance(manifest, str | os.PathLike) else list(manifest)
    wanted = normalize_split(split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = _ShardSequence(out, prefix, per_shard)
    bad: list[BadSample] = []
    try:
        for index in tqdm(_row_positions(rows, wanted, shuffle_seed), desc="sharding", unit="sample",
                          disable=not progress):
            row = rows[index]
            try:
                image, meta = read_image(row.image)
                encoded = _encode(image, image_format, max_size)
            except Exception as err:
                bad.append(BadSample(index, row.image, f"{type(err).__name__}: {err}"))
                logger.warning("skipping %s: %s", row.image, err)
                continue
            shards.write(_sample_record(index, row, meta.modality, image_format, encoded), normalize_split(row.split) or "")
        shards.close()
    finally:
        shards.abort()
    written = sum(entry["count"] for entry in shards.entries)
    index_data = {"format": SHARD_FORMAT, "shards": shards.entries, "samples": written, "bad": len(bad), "split": wanted}
    (out / INDEX_NAME).write_text(json.dumps(index_data, indent=1))
    logger.info("wrote %d samples in %d shards to %s (%d bad rows skipped)", written, len(shards.entries), out, len(bad))
    return ShardWriteResult(shards=[str(out / entry["name"]) for entry in shards.entries], samples=written, bad=bad)


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


def _sample_member(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a member that belongs to a sample, as WebDataset's ``base_plus_ext`` splits
    it (key up to the first dot of the file name); None for hidden files and ``__`` entries."""
    name = name.removeprefix("./")
    if os.path.basename(name).startswith(("__", ".")):
        return None
    key, ext = base_plus_ext(name)
    return None if key is None else (key, ext.lower())


def _sample_boundaries(files: Iterator[tuple[str, Any]]) -> Iterator[dict[str, Any]]:
    """WebDataset file records (``{"fname", "data"}``) of ``(name, data)`` members for ``group_by_keys``,
    with its end-of-sample marker ``{}`` before a member that repeats an extension of the current sample:
    that member starts a new sample under the same key, where ``group_by_keys`` would raise and the rest
    of the shard would be lost (callers see the repeated key and report it)."""
    key, seen = None, set()
    for name, data in files:
        parsed = _sample_member(name)
        if parsed is None:
            continue
        if parsed[0] != key or parsed[1] in seen:
            if parsed[0] == key:
                yield {}
            key, seen = parsed[0], set()
        seen.add(parsed[1])
        yield {"fname": name.removeprefix("./"), "data": data, "__url__": ""}


def _grouped(files: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(key, {extension: data})`` of members grouped by WebDataset's ``group_by_keys``."""
    for sample in group_by_keys(_sample_boundaries(files)):
        yield sample.pop("__key__"), {ext: value for ext, value in sample.items() if not ext.startswith("__")}


def _checked_members(url: str, allowed: int, refused: list[str]) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of the regular members of a shard's tar stream (compressed too), directories skipped,
    each checked from its tar header before its data is read.

    A refused member (sparse, link, device, FIFO, over ``allowed`` bytes; its data is never read) ends the
    stream. When it starts a new key, the sample before it is complete: the stream ends normally (that
    sample still reaches the caller) after ``refused`` receives the error; when it belongs to the sample
    being read, that sample is lost with the error raised here.

    Raises:
        CorruptFileError: the shard cannot be opened, its tar stream is broken, a member is shorter than its
            header says, or a member of the sample being read is refused (naming the shard and member).
    """
    stream = open_shard(url)
    closed = False
    last_key = None
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if info.isdir():
                    continue
                parsed = _sample_member(info.name)
                problem = _member_problem(info, allowed)
                if problem is not None:
                    message = f"{url}: member {info.name!r} refused: {problem}"
                    if parsed is not None and parsed[0] == last_key:
                        raise CorruptFileError(message)
                    refused.append(message)
                    return
                handle = tar.extractfile(info)
                data = handle.read() if handle is not None else b""
                if len(data) != info.size:
                    raise CorruptFileError(
                        f"{url}: member {info.name!r} truncated ({len(data)} of {info.size} bytes)")
                last_key = parsed[0] if parsed is not None else last_key
                yield info.name, data
                tar.members = []  # a streamed shard keeps no list of its members (memory stays bounded)
        closed = True
        stream.close()  # a remote reader's exit status (curl's HTTP error) surfaces here
    except MedMoEError:
        raise
    except Exception as err:  # tarfile, zlib, lzma, OSError, EOFError ...: every tar error names the shard
        raise CorruptFileError(f"{url}: unreadable tar shard ({type(err).__name__}: {err})") from err
    finally:
        if not closed:
            with contextlib.suppress(Exception):  # the first error is the one worth reporting
                stream.close()


def iter_tar_samples(url: str, *, max_member_bytes: int | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` for each sample of a shard, streamed (local path or URL).

    Members are grouped by WebDataset's ``group_by_keys`` (``dir/key.ext``: key up to the first dot of the
    file name); hidden files and ``__`` entries are skipped. A member repeating an extension of the current
    sample starts a new sample under the same key (reported by the callers that care).

    Only regular members are read, each checked from its tar header before its data: sparse members (whose
    stated size can be far above what the shard stores), links, devices and FIFOs are refused, and so is a
    member over ``max_member_bytes`` (default ``MEDMOE_MAX_MEMBER_BYTES``, 512 MiB; see :mod:`medmoe.limits`).

    Raises:
        CorruptFileError: the shard cannot be opened, its tar stream is broken, or a member is refused
            (samples read before the damage have been yielded); the message names the shard (and member).
    """
    refused: list[str] = []
    members = _checked_members(url, limit(MAX_MEMBER_BYTES_ENV, max_member_bytes), refused)
    try:
        yield from _grouped(members)
    finally:
        members.close()
    if refused:
        raise CorruptFileError(refused[0])


def scan_shard(path: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """``(key, {extension: (byte offset, size)})`` per sample of a local shard, reading only tar headers
    and grouping members as :func:`iter_tar_samples` does.

    Raises:
        CorruptFileError: unreadable tar.
    """
    try:
        with tarfile.open(path, "r:*") as tar:
            headers = ((m.name, (m.offset_data, m.size)) for m in tar if m.isreg() and not m.issparse())
            return list(_grouped(headers))
    except _TAR_ERRORS as err:
        raise CorruptFileError(f"{path}: cannot read tar shard ({type(err).__name__}: {err})") from err


def _read_index(shards: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Entries of the ``index.json`` files next to the shards, by shard location (missing: none)."""
    entries: dict[str, dict[str, Any]] = {}
    for folder in dict.fromkeys(url.rsplit("/", 1)[0] if "/" in url else "." for url in shards):
        location = f"{folder}/{INDEX_NAME}"
        if location.startswith("pipe:") or not (is_remote(location) or os.path.isfile(location)):
            continue
        try:
            with open_shard(location) as handle:
                data = json.loads(handle.read().decode("utf-8"))
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
    return sum(split is None or normalize_split(sample_metadata(members).get("split")) in (None, split)
               for _, members in iter_tar_samples(url))


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
