"""ROCO (Radiology Objects in COntext, Pelka et al. 2018) -> manifest rows.

Source: the ROCO repository's README and ``scripts/fetch.py`` (github.com/razorx89/roco-dataset), and the
Kaggle redistribution with one CSV per split. Both layouts read::

    ROOT/data/{train,validation,test}/radiology/captions.txt   "ROCO_00001<TAB> caption"     (fetch.py)
    ROOT/data/{train,validation,test}/radiology/dlinks.txt     "ROCO_00001<TAB>wget ... PMC4608653.tar.gz ...<TAB>name.jpg"
    ROOT/data/{train,validation,test}/radiology/images/PMC4608653_name.jpg

    ROOT/all_data/train/radiologytraindata.csv                  id,name,caption               (Kaggle)
    ROOT/all_data/train/radiology/images/PMC1234_name.jpg
    ROOT/all_data/validation/radiologyvaldata.csv, ROOT/all_data/test/radiologytestdata.csv

``data/`` or ``all_data/`` may be ROOT itself. A caption CSV (any ``*.csv`` with a ``caption`` column; the
Kaggle names are ``radiology<split>data.csv``) is read from the split folder or its ``radiology/`` folder;
images are looked up in ``radiology/images/``. Only the radiology subset is imported. The modality is guessed
from the caption's words (CT, MRI, radiograph, ultrasound...) and left empty when the caption names none or
several.
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
BASES = ("", "data", "all_data")


def _split_dirs(root: Path) -> dict[str, Path]:
    """split folder name -> its folder (``<base>/<split>``), for the splits that hold a radiology part."""
    found: dict[str, Path] = {}
    for base in BASES:
        for split in SPLIT_DIRS:
            folder = root / base / split
            if split not in found and ((folder / "radiology").is_dir() or _caption_csvs(folder)):
                found[split] = folder
    return found


def _caption_csvs(folder: Path) -> list[Path]:
    """The split folder's radiology CSVs (the Kaggle ``radiology<split>data.csv``)."""
    return sorted(folder.glob("radiology*.csv"))  # none where the folder is missing


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


def _captions_from_csv(table_path: Path) -> list[tuple[str, str, str | None]] | None:
    """``(roco_id, caption, image name)`` rows of a CSV with a ``caption`` column, else None."""
    try:
        table = read_csv_table(table_path)
    except CorruptFileError:
        return None
    if not table or "caption" not in table[0]:
        return None
    id_key = next((k for k in ("id", "ROCO_ID", "roco_id") if k in table[0]), None)
    name_key = next((k for k in ("name", "image", "PMC_ID") if k in table[0]), None)
    return [
        ((r.get(id_key) or "").strip() if id_key else "", (r["caption"] or "").strip(),
         (r.get(name_key) or "").strip() or None if name_key else None)
        for r in table
    ]


def _captions(split_dir: Path) -> list[tuple[str, str, str | None]]:
    """``(roco_id, caption, image name or None)`` from captions.txt or a caption CSV of the split.

    Raises:
        CorruptFileError: none of the places holds captions; the message names them.
    """
    folder = split_dir / "radiology"
    captions_txt = folder / "captions.txt"
    if captions_txt.is_file():
        return [(p[0].strip(), "\t".join(p[1:]).strip(), None) for p in _read_tab_file(captions_txt) if p[0].strip()]
    for table_path in sorted(folder.glob("*.csv")) + _caption_csvs(split_dir):
        if (rows := _captions_from_csv(table_path)) is not None:
            return rows
    raise CorruptFileError(f"{split_dir}: no ROCO captions (looked for {captions_txt}, {folder}/*.csv and "
                           f"{split_dir}/radiology*.csv with an id,name,caption header)")


def import_roco(root: str | os.PathLike, *, skip_missing: bool = True, progress: bool = False) -> ImportResult:
    """Build rows from the radiology part of ROCO.

    Args:
        root: the repository folder (or its ``data`` folder), or the Kaggle folder (or its ``all_data``).
        skip_missing: leave out captions whose image was not downloaded (common: PMC links move).
        progress: tqdm progress bar over the captions.
    """
    root = require_dir(root, NAME)
    folders = _split_dirs(root)
    if not folders:
        raise CorruptFileError(f"{root}: no ROCO split folder found (looked for {{,data/,all_data/}}"
                               "{train,validation,test}/radiology/ and {train,validation,test}/radiology*.csv)")
    result = ImportResult(NAME)
    csv.field_size_limit(1 << 24)
    for split_dir, folder in folders.items():
        names = _image_names(folder / "radiology")
        image_dir = folder / "radiology" / "images"
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
