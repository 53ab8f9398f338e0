"""The Search tab: text -> image search over a saved index, as thumbnails with scores and reports."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from medmoe.errors import InvalidInputError, MedMoEError
from medmoe.serve.pictures import fit, placeholder, to_rgb
from medmoe.serve.results import encode_picture

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000
MAX_K = 100
THUMBNAIL = 256
CAPTION_CHARS = 90


@dataclass
class SearchResult:
    """The hits of one query, ready for the page.

    Attributes:
        thumbnails: ``(picture, caption)`` per hit, best first; the picture is an encoded JPEG file's bytes
            (:func:`medmoe.serve.results.decode_picture` turns it into an array).
        rows: ``[rank, score (3 decimals, as in the caption), id, report]`` per hit (the results table).
        unreadable: ids of hits whose image could not be read (shown as grey squares).
    """

    thumbnails: list[tuple[bytes, str]]
    rows: list[list]
    unreadable: list[str] = field(default_factory=list)

    def message(self, query: str) -> str:
        text = f"{len(self.rows)} image(s) for \u201c{query}\u201d"
        if self.unreadable:
            text += f"; {len(self.unreadable)} could not be read: {', '.join(self.unreadable[:5])}"
        return text


class Thumbnails:
    """Encoded thumbnails of indexed images, kept in memory: a search reads and encodes each image once.

    An entry is keyed on the image's path, modification time and size (a file changed on disk is read
    again); the least recently used are dropped beyond ``max_bytes``.

    Args:
        side: longer side of a thumbnail in pixels.
        max_bytes: memory the encoded thumbnails may hold (32 MiB: about 2000 radiograph thumbnails).
    """

    def __init__(self, side: int = THUMBNAIL, max_bytes: int = 32 * 2**20) -> None:
        self.side, self.max_bytes = side, max_bytes
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.placeholder = encode_picture(placeholder(side))

    def get(self, path: Path) -> bytes:
        """The thumbnail of the image at ``path``.

        Raises:
            MedMoEError, OSError: the image cannot be read.
        """
        info = path.stat()
        key = (str(path), info.st_mtime_ns, info.st_size)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = encode_picture(thumbnail(path, self.side))
        with self._lock:
            if key not in self._items:
                self._items[key] = data
                self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                self._bytes -= len(self._items.popitem(last=False)[1])
        return data


def resolve_image(path: str, root: Path | None) -> Path:
    """A hit's image path; a relative path that does not exist as given is looked up under ``root``."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and root is not None:
        return root / p
    return p


def thumbnail(path: Path, side: int = THUMBNAIL) -> np.ndarray:
    """An (H, W, 3) uint8 picture of an indexed image with its longer side ``side`` (any readable format).

    Raises:
        MedMoEError: the image cannot be read (missing, corrupt).
    """
    from medmoe.data.readers import read_image

    image, _ = read_image(path, target_size=side)
    return fit(to_rgb(image), side)


def caption(rank: int, score: float, report: str, chars: int = CAPTION_CHARS) -> str:
    report = " ".join(str(report).split())
    short = report if len(report) <= chars else report[: chars - 1].rstrip() + "\u2026"
    return f"#{rank}  {score:.3f}  {short}"


def check_query(query: str, k: int) -> tuple[str, int]:
    """The stripped query and k as an int, or an :class:`InvalidInputError` saying what to change."""
    query = " ".join(str(query or "").split())
    if not query:
        raise InvalidInputError("type what to search for, e.g. \u201cpleural effusion\u201d")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidInputError(f"the query has {len(query)} characters; at most {MAX_QUERY_CHARS}")
    try:
        k = int(k)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"number of results {k!r}: expected a whole number") from err
    if not 1 <= k <= MAX_K:
        raise InvalidInputError(f"number of results {k}: expected 1 to {MAX_K}")
    return query, k


def find_hits(model: nn.Module, index, queries: Sequence[tuple[str, int]]) -> list[list]:
    """The hits of checked ``(query, k)`` pairs (:func:`check_query`), the texts encoded as one batch."""
    if not queries:
        return []
    hits = index.search_text(model, [query for query, _ in queries], k=max(k for _, k in queries))
    return [found[:k] for found, (_, k) in zip(hits, queries)]


def hits_result(hits: Sequence, root: Path | None, thumbnails: Thumbnails) -> SearchResult:
    """A :class:`SearchResult` of one query's hits: their thumbnails (grey for an unreadable image) and rows."""
    pictures, rows, unreadable = [], [], []
    for hit in hits:
        try:
            picture = thumbnails.get(resolve_image(hit.path, root))
        except (MedMoEError, OSError) as err:
            logger.warning("search hit %s: image not shown (%s)", hit.id, err)
            picture = thumbnails.placeholder
            unreadable.append(str(hit.id))
        pictures.append((picture, caption(hit.rank, hit.score, hit.report)))
        rows.append([int(hit.rank), round(float(hit.score), 3), str(hit.id), str(hit.report)])
    return SearchResult(pictures, rows, unreadable)
