"""Result files of the page: one new folder per request, pictures written into it, old folders removed.

The page hands Gradio files, never arrays: Gradio writes an array it is given to a path named after the
picture's content, with a plain write, so two requests with the same answer (the same search, the same
image classified twice) write the same file while the first is being sent, and the client receives a body
shorter or longer than its Content-Length. Here every request writes into a folder of its own
(:meth:`ResultFolders.open`), and Gradio copies files into its cache atomically (a temporary name, then a
rename), so an answer is always whole.

A folder is removed once its request has finished for ``grace_s`` seconds (Gradio has copied its files by
then; they are only read when the handler returns) and by :meth:`ResultFolders.close`.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

GRACE_S = 120.0
# JPEG at quality 90 for thumbnails and attention maps: 0.5 ms for a 320 px picture where Gradio's WebP took
# 16 ms (and 3 ms at its fastest setting), at about the same size; PNG where colours must stay exact (masks).
ENCODER_SETTINGS = {"jpeg": {"quality": 90}, "png": {"compress_level": 1}}
SUFFIXES = {"jpeg": "jpg", "png": "png"}


def encode_picture(rgb: np.ndarray, fmt: str = "jpeg") -> bytes:
    """An (H, W, 3) uint8 picture as an encoded image file: ``"jpeg"`` (quality 90) or ``"png"`` (lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, fmt, **ENCODER_SETTINGS[fmt])
    return buffer.getvalue()


def decode_picture(data: bytes) -> np.ndarray:
    """An encoded picture back as an (H, W, 3) uint8 array."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def write_picture(folder: Path, name: str, picture: np.ndarray | bytes, fmt: str = "jpeg") -> Path:
    """Write a picture (an (H, W, 3) uint8 array, or bytes already encoded as ``fmt``) as ``folder/<name>.jpg``
    (or ``.png``)."""
    path = folder / f"{name}.{SUFFIXES[fmt]}"
    path.write_bytes(picture if isinstance(picture, bytes) else encode_picture(picture, fmt))
    return path


class ResultFolders:
    """Fresh folders for results under ``root``, removed ``grace_s`` seconds after their request finished.

    Args:
        root: where the folders go (created).
        grace_s: how long a finished request's files stay.
    """

    def __init__(self, root: Path, grace_s: float = GRACE_S) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.grace_s = grace_s
        self._finished: dict[Path, float] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def open(self, prefix: str = "result") -> Iterator[Path]:
        """A new, empty folder no other request uses; it counts as finished when the block ends."""
        self.prune()
        folder = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.root))
        try:
            yield folder
        finally:
            with self._lock:
                self._finished[folder] = time.monotonic()

    def prune(self, now: float | None = None) -> int:
        """Remove the folders whose request finished more than ``grace_s`` ago; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [folder for folder, finished in self._finished.items() if now - finished > self.grace_s]
            for folder in stale:
                del self._finished[folder]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        return len(stale)

    def close(self) -> None:
        """Remove every folder."""
        with self._lock:
            self._finished.clear()
        shutil.rmtree(self.root, ignore_errors=True)


class KeptViews:
    """The segmentations whose slice viewer is still open: the last ``size`` are kept (each holds its CT and
    label map in memory), under keys that sessions hold; older ones are let go, whoever asked for them (an
    API caller that never moves a slider included), so memory stays bounded.

    Args:
        size: segmentations kept.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, view) -> str:
        """Keep ``view``; returns its key."""
        key = secrets.token_urlsafe(12)
        with self._lock:
            self._items[key] = view
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return key

    def get(self, key: str | None):
        """The view kept under ``key``, or None when there is none (any more)."""
        with self._lock:
            return self._items.get(key) if isinstance(key, str) else None
