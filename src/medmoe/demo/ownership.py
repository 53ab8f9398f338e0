"""The demo's claim on its output folder: it replaces only what it wrote, in a folder it marked as its own.

``medmoe demo --out DIR`` writes ``DIR/.medmoe-demo`` before anything else. A rerun into a folder with that
marker may replace the demo's own ``runs/``, ``align/`` and ``seg/`` there; a non-empty folder without it
(someone else's files) is refused unless ``--overwrite`` says the demo may take it over.
"""

from __future__ import annotations

from pathlib import Path

from medmoe.errors import InvalidInputError
from medmoe.paths import check_output_dir

MARKER = ".medmoe-demo"
_MARKER_TEXT = ("This folder was written by `medmoe demo`. A rerun of the demo into it replaces runs/, align/, seg/, "
                "report.html and metrics.json; it never touches a folder without this file unless given --overwrite.\n")


def claim_output_dir(out: Path, *, overwrite: bool = False) -> None:
    """Make ``out`` the demo's folder, or refuse it before any work.

    Raises:
        InvalidInputError: ``out`` is a file or lies under one, cannot be created or written, or is a non-empty
            folder without the demo's marker and ``overwrite`` is False.
    """
    if out.is_dir() and not (out / MARKER).is_file() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(
            f"--out {out}: a non-empty folder that `medmoe demo` did not create (no {MARKER} in it); the demo would "
            "replace runs/, align/ and seg/ there. Choose a new or empty folder, or pass --overwrite"
        )
    check_output_dir(out)  # not a file nor under one; created and writable
    try:
        (out / MARKER).write_text(_MARKER_TEXT)
    except OSError as err:
        raise InvalidInputError(f"--out {out}: cannot write there ({err.strerror or err})") from None


def owned_fresh(directory: Path, out: Path) -> Path:
    """Empty ``directory`` (inside the demo's folder ``out``) for a new run; refuses anything outside a claimed
    folder, so that nothing the demo did not create is deleted."""
    import shutil

    if not (out / MARKER).is_file() or not directory.resolve().is_relative_to(out.resolve()):
        raise InvalidInputError(f"{directory}: not inside a folder claimed by `medmoe demo`; refusing to replace it")
    if directory.exists():
        shutil.rmtree(directory)
    return directory
