"""ROCO (Radiology Objects in COntext) -> manifest rows.

Expected layout, as the ROCO repository's ``scripts/fetch.py`` leaves it::

    ROOT/data/{train,validation,test}/radiology/captions.txt   "ROCO_00001<TAB> caption"
    ROOT/data/{train,validation,test}/radiology/dlinks.txt     "ROCO_00001<TAB>wget ... PMC4608653.tar.gz ...<TAB>name.jpg"
    ROOT/data/{train,validation,test}/radiology/images/PMC4608653_name.jpg

The redistributed variant with one CSV per split (``id,name,caption``, e.g. ``radiologytraindata.csv``)
next to ``images/`` reads too. ``data/`` may be absent (ROOT may be the ``data`` folder). Only the
radiology subset is imported. The modality is guessed from the caption's words (CT, MRI, radiograph,
ultrasound...) and left empty when the caption names none or several.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from tqdm.auto import tqdm

from medmoe.data.adapters.common import ImportResult, read_csv_table, require_dir
from medmoe.data.manifest import ManifestRow, normalize_split
from medmoe.data.modalities import guess_modality
from medmoe.errors import CorruptFileError

NAME = "roco"
SPLIT_DIRS = ("train", "validation", "test")


def _split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    for base in (root, root / "data"):
        for split in SPLIT_DIRS:
            candidate = base / split / "radiology"
            if candidate.is_dir() and split not in found:
                found[split] = candidate
    return found


def _read_tab_file(path: Path) -> list[list[str]]:
    try:
        with path.open(encoding="utf-8", errors="replace", newline="") as fh:
            return [line.rstrip("\r\n").split("\t") for line in fh if line.strip()]
    except OSError as err:
        raise CorruptFileError(f"{path}: cannot read ({err})") from err


def _image_names(folder: Path) -> dict[str, str]:
    """ROCO id -> image file name, from ``dlinks*.txt`` (fetch.py names files ``<PMCID>_<name>``)."""
    names: dict[str, str] = {}
    for dlinks in sorted(folder.glob("dlinks*.txt")):
        for parts in _read_tab_file(dlinks):
            if len(parts) < 3:
                continue
            archive = next((w for w in parts[1].split() if w.endswith(".tar.gz")), "")
            pmc = os.path.basename(archive)[: -len(".tar.gz")] if archive else ""
            name = parts[-1].strip()
            names.setdefault(parts[0].strip(), f"{pmc}_{name}" if pmc else name)
    return names


def _captions(folder: Path) -> list[tuple[str, str, str | None]]:
    """``(roco_id, caption, image name or None)`` from captions.txt or a split CSV."""
    captions_txt = folder / "captions.txt"
    if captions_txt.is_file():
        return [(p[0].strip(), "\t".join(p[1:]).strip(), None) for p in _read_tab_file(captions_txt) if p[0].strip()]
    for table_path in sorted(folder.glob("*.csv")):
        try:
            table = read_csv_table(table_path)
        except CorruptFileError:
            continue
        if table and "caption" in table[0]:
            id_key = next((k for k in ("id", "ROCO_ID", "roco_id") if k in table[0]), None)
            name_key = next((k for k in ("name", "image", "PMC_ID") if k in table[0]), None)
            return [
                ((r.get(id_key) or "").strip() if id_key else "", (r["caption"] or "").strip(),
                 (r.get(name_key) or "").strip() or None if name_key else None)
                for r in table
            ]
    raise CorruptFileError(f"{folder}: no captions.txt or caption CSV (id,name,caption)")


def import_roco(root: str | os.PathLike, *, skip_missing: bool = True, progress: bool = False) -> ImportResult:
    """Build rows from the radiology part of ROCO.

    Args:
        root: the repository folder (or its ``data`` folder).
        skip_missing: leave out captions whose image was not downloaded (common: PMC links move).
        progress: tqdm progress bar over the captions.
    """
    root = require_dir(root, NAME)
    folders = _split_dirs(root)
    if not folders:
        raise CorruptFileError(f"{root}: no ROCO split folders found (expected [data/]{{train,validation,test}}/radiology)")
    result = ImportResult(NAME)
    csv.field_size_limit(1 << 24)
    for split_dir, folder in folders.items():
        names = _image_names(folder)
        image_dir = folder / "images"
        for roco_id, caption, name in tqdm(_captions(folder), desc=f"{NAME} {split_dir}", disable=not progress):
            candidates = [n for n in (name, names.get(roco_id), f"{roco_id}.jpg") if n]
            image = next((image_dir / n for n in candidates if (image_dir / n).is_file()), image_dir / candidates[0])
            if skip_missing and not image.is_file():
                result.skip("missing image", str(image))
                continue
            if not caption:
                result.skip("empty caption", roco_id)
                continue
            result.rows.append(
                ManifestRow(
                    image=str(image),
                    report=caption,
                    modality=guess_modality(caption),
                    dataset=NAME,
                    split=normalize_split(split_dir),
                    extra={"roco_id": roco_id},
                )
            )
    return result.log()
