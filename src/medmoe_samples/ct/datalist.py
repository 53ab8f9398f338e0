"""Decathlon-style datalists of the CT packs: ``{"label_maps", "training", "validation", "test", ...}``.

``medmoe.seg.data.load_datalist`` reads them; image and label paths are relative to the datalist's folder.
"""

from __future__ import annotations

import json
from pathlib import Path

DATALIST_NAME = "datalist.json"


def datalist_entry(root: Path, image: Path, label: Path, dataset: str) -> dict[str, str]:
    """One case: image and label paths relative to ``root`` (POSIX separators) and its dataset name."""
    return {"image": image.relative_to(root).as_posix(), "label": label.relative_to(root).as_posix(), "dataset": dataset}


def write_datalist(root: Path, datalist: dict) -> Path:
    """Write ``root/datalist.json`` (one-space indent, final newline) and return its path."""
    path = Path(root) / DATALIST_NAME
    path.write_text(json.dumps(datalist, indent=1) + "\n")
    return path
