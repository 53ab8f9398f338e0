"""Output locations checked before a command starts its long work, with one-line errors naming the path.

A check creates the folder that will hold the output (the command would create it anyway) and writes and
removes a probe file there, so that a path under a file, a read-only place (``/proc``) or a full disk fails
in the first second instead of after an hour of training or embedding.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from medmoe.errors import InvalidInputError


def _writable_folder(folder: Path, option: str) -> None:
    # a file can hold no folder: a file among the parents is the first of them that exists
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InvalidInputError(f"{option} {folder}: {blocker} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medmoe-probe-"):
            pass
    except OSError as err:
        raise InvalidInputError(f"{option} {folder}: cannot write there ({err.strerror or err})") from None


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check that ``path`` can be written as a file (its folder created); returns it as a Path.

    Raises:
        InvalidInputError: ``path`` is a folder, lies under a file, or its folder cannot be created or
            written (the message names the option and the path).
    """
    target = Path(path)
    if target.is_dir():
        raise InvalidInputError(f"{option} {target}: is a folder; expected a file name")
    _writable_folder(target.parent if str(target.parent) else Path("."), option)
    return target


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check that ``path`` is (or can be created as) a writable folder; creates it and returns it.

    Raises:
        InvalidInputError: ``path`` is a file, lies under a file, or cannot be created or written.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InvalidInputError(f"{option} {target}: is a file; expected a folder")
    _writable_folder(target, option)
    return target


def _file_mode() -> int:
    umask = os.umask(0)  # reading the umask means setting it: set it straight back
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()  # what open() would give a new file in this process


def write_text_atomic(path: str | os.PathLike, text: str | Iterable[str]) -> None:
    """Write ``text`` (a string, or strings written one after another; UTF-8, newlines as given) to ``path``
    through a uniquely named temporary file beside it, synced and renamed over it: readers and concurrent
    writers never see a half-written file. The file gets the mode ``open`` would give it (the umask's)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.writelines([text] if isinstance(text, str) else text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_run_dir(out: str | os.PathLike) -> None:
    """Before training: RUN_DIR writable, and its ``model/`` (replaced at the end) empty or a model medmoe saved."""
    from medmoe.saved_model import check_replaceable

    check_replaceable(check_output_dir(out) / "model")
