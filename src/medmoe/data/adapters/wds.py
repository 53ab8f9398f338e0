"""WebDataset tar shards (UniMed, the MedMoE code) -> manifest rows with the images extracted to files.

Source: the WebDataset format (github.com/webdataset/webdataset). Each sample is a group of members
sharing a key: an image (``.jpg`` / ``.jpeg`` / ``.png``), its text (``.txt``), optionally a class
(``.cls``, becomes the label) and metadata (``.json`` with any of ``modality``, ``labels``, ``dataset``,
``split``). A manifest needs image files, so images are extracted
under ``extract_dir/<shard path below root, without .tar>/<key>.<ext>``: one file per sample, also when two
folders hold shards of the same name or keys share a base name. A key that repeats within a shard, or one
that would write outside ``extract_dir``, is skipped and reported. To train straight from the shards
instead, use :class:`medmoe.data.shards.ShardDataset`.

The split comes from the metadata, else from a ``train`` / ``val`` / ``test`` folder in the shard's
path, else from the ``split`` argument. Layout::

    ROOT/train/shard-000000.tar     000000.jpg, 000000.txt, 000000.cls, 000000.json, 000001.png, ...
    ROOT/val/...                    (or ROOT = one .tar file)

Shards written by UniMed-CLIP's ``data_prepration_scripts`` (github.com/mbzuai-oryx/UniMed-CLIP) join
several captions of a sample in one ``.txt`` with a dataset marker (``_mimiccxr_``, ``_openi_``,
``_chexpert_``, ``_radimagenet_``, ``_chestxray8_``, ``_all_retina_merged_``, ``_dr_``, ``_medicat_``).
The row's report is the caption UniMed-CLIP's ``src/training/data.py`` (``preprocess_txt_rad``) trains on,
with the random template choice made deterministic: the report after the last ``_mimiccxr_`` (its first
template when the report is ``noreportpresent``), the first caption for ``_openi_`` and ``_medicat_``, the
first non-empty template for the others.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from medmoe.data.adapters.common import ImportResult
from medmoe.data.manifest import SPLITS, ManifestRow, normalize_split
from medmoe.data.shard_files import iter_tar_samples
from medmoe.errors import CorruptFileError, InvalidInputError, MedMoEError, MissingFileError

NAME = "wds"
_IMAGE_EXTS = ("jpg", "jpeg", "png")


UNIMED_MARKERS = ("_radimagenet_", "_chexpert_", "_openi_", "_chestxray8_", "_all_retina_merged_", "_dr_",
                  "_medicat_", "_mimiccxr_")
_NO_REPORT = "noreportpresent"


def unimed_caption(text: str) -> str:
    """The caption UniMed-CLIP trains on from a ``.txt`` that joins several with a dataset marker; text
    without a marker is returned as it is (stripped)."""
    marker = next((m for m in UNIMED_MARKERS if m in text), None)
    if marker is None:
        return text.strip()
    parts = [p.strip() for p in text.split(marker)]
    templates = [p for p in parts if p]
    if marker == "_mimiccxr_":
        if parts[-1] not in ("", _NO_REPORT):
            return parts[-1]
        templates = [p for p in parts[:-1] if p]
    if marker in ("_openi_", "_medicat_"):
        return parts[0]
    return templates[0] if templates else ""


def _split_from_path(path: Path, root: Path) -> str | None:
    parts = path.relative_to(root).parts if path.is_relative_to(root) else path.parts
    return next((split for split in map(normalize_split, reversed(parts[:-1])) if split in SPLITS), None)


def import_wds(
    root: str | os.PathLike,
    *,
    extract_dir: str | os.PathLike,
    split: str | None = None,
    dataset: str | None = None,
    progress: bool = False,
) -> ImportResult:
    """Extract WebDataset shards into image files and rows.

    Args:
        root: a ``.tar`` shard or a folder searched recursively for ``*.tar``.
        extract_dir: where the images are written.
        split: split of samples that neither metadata nor folder names assign.
        dataset: dataset name for the rows (default: the metadata's, else the root folder's name).
        progress: tqdm progress bar over the shards.
    """
    root = Path(root)
    if not root.exists():
        raise MissingFileError(f"{root}: WebDataset shard or folder not found")
    shards = [root] if root.is_file() else sorted(root.rglob("*.tar"))
    if not shards:
        raise InvalidInputError(f"{root}: no .tar shards found")
    base = root.parent if root.is_file() else root
    result = ImportResult(NAME)
    written: set[Path] = set()  # one file per sample across shards (train.tar#x/a and train/x.tar#a meet)
    for shard in tqdm(shards, desc=NAME, unit="shard", disable=not progress):
        shard_split = _split_from_path(shard, base)
        target = Path(extract_dir) / shard.relative_to(base).with_suffix("")
        try:
            samples = list(iter_tar_samples(str(shard)))
        except MedMoEError as err:
            result.skip("unreadable shard", f"{shard} ({err})")
            continue
        seen: set[str] = set()
        for key, members in samples:
            ext = next((e for e in _IMAGE_EXTS if e in members), None)
            if ext is None:
                result.skip("no image", f"{shard}#{key}")
                continue
            if key in seen:
                result.skip("duplicate key in shard (a later sample reuses it)", f"{shard}#{key}")
                continue
            seen.add(key)
            parts = PurePosixPath(key).parts
            if not parts or PurePosixPath(key).is_absolute() or any(p in ("..", ".") for p in parts):
                result.skip("unsafe key (would write outside the extract folder)", f"{shard}#{key}")
                continue
            try:
                meta = json.loads(members["json"]) if "json" in members else {}
                if not isinstance(meta, dict):
                    raise ValueError("metadata is not a JSON object")
            except ValueError as err:
                raise CorruptFileError(f"{shard}#{key}.json: invalid metadata ({err})") from err
            labels = [str(v) for v in meta.get("labels") or []]
            if not labels and "cls" in members:
                labels = [members["cls"].decode("utf-8", errors="replace").strip()]
            image = target.joinpath(*parts[:-1], f"{parts[-1]}.{ext}")
            if image in written:
                result.skip("output path taken by another shard's sample", f"{shard}#{key} -> {image}")
                continue
            written.add(image)
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(members[ext])
            result.rows.append(
                ManifestRow(
                    image=str(image.resolve()),
                    report=unimed_caption(members.get("txt", b"").decode("utf-8", errors="replace")),
                    modality=meta.get("modality"),
                    labels=labels,
                    dataset=meta.get("dataset") or dataset or (base.name or NAME),
                    split=normalize_split(meta.get("split")) or shard_split or normalize_split(split),
                    extra={"shard": shard.name, "key": key},
                )
            )
    return result.log()
