"""The real-CT pack: the example CTs of the TotalSegmentator 2.18.0 source distribution with their label maps.

``build_totalseg_pack`` extracts the three real example CTs of the ``totalsegmentator==2.18.0`` sdist: the
3 mm abdomen-pelvis NIfTI CT with its 'total' label map, the 1.5 mm chest CT of the aorta report with one label
map merged from its binary masks (``aorta-report``), and the 20-slice DICOM series with its 'total' label map
(the test split). It writes a Decathlon-style datalist whose ``label_maps`` section carries the label map of
every dataset it uses.

The sdist is never downloaded here: pass its path, set ``MEDMOE_TOTALSEG_SDIST``, or let ``make setup`` put it
at ``.cache/totalsegmentator-2.18.0.tar.gz`` (the default, relative to the working directory).
"""

from __future__ import annotations

import ast
import logging
import os
import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from medmoe.data.volumes import Volume, read_ct, read_label, write_nifti
from medmoe.errors import CorruptFileError, MissingFileError
from medmoe_samples.ct.datalist import datalist_entry, write_datalist

logger = logging.getLogger(__name__)

TOTALSEG_VERSION = "2.18.0"
TOTALSEG_SDIST_NAME = f"totalsegmentator-{TOTALSEG_VERSION}.tar.gz"
SDIST_ENV = "MEDMOE_TOTALSEG_SDIST"
DEFAULT_SDIST = Path(".cache") / TOTALSEG_SDIST_NAME
FETCH_COMMAND = f"pip download --no-deps --no-binary :all: totalsegmentator=={TOTALSEG_VERSION} -d .cache"
_TS_PREFIX = f"totalsegmentator-{TOTALSEG_VERSION}/"
_TS_REF = _TS_PREFIX + "tests/reference_files/"
TOTALSEG_DATASET = "TotalSegmentator"
AORTA_DATASET = "aorta-report"
# Binary masks shipped with the aorta-report CT (``aorta_report/example_ct.nii.gz``, 233 x 167 x 191 at 1.5 mm),
# as (tar member below the reference files, template class), in priority order: where two kept masks
# overlap, the earlier one wins. Most are stored on a crop of the CT's grid: outside the crop the class is
# unknown, so a mask is kept only if :func:`mask_coverage` says the CT shows the whole structure inside it.
AORTA_MASKS: tuple[tuple[str, str], ...] = (
    ("aorta_report/test_result/models/aorta.nii.gz", "aorta"),
    ("pulmonary_report/models/heart.nii.gz", "heart"),
    ("aorta_report/test_result/models/brachiocephalic_trunk.nii.gz", "brachiocephalic_trunk"),
    ("aorta_report/test_result/models/celiac_trunk.nii.gz", "celiac_trunk"),
    ("aorta_report/test_result/models/common_carotid_artery_left.nii.gz", "common_carotid_artery_left"),
    ("aorta_report/test_result/models/subclavian_artery_left.nii.gz", "subclavian_artery_left"),
    ("aorta_report/test_result/models/vertebrae_T12.nii.gz", "vertebrae_T12"),
    ("aorta_report/test_result/models/iliac_artery_left.nii.gz", "iliac_artery_left"),
    ("aorta_report/test_result/models/iliac_artery_right.nii.gz", "iliac_artery_right"),
)


def totalseg_sdist_path(sdist: str | os.PathLike | None = None) -> Path:
    """Where the TotalSegmentator sdist is expected: ``sdist`` if given, else ``$MEDMOE_TOTALSEG_SDIST``, else
    ``.cache/totalsegmentator-2.18.0.tar.gz`` in the working directory (where ``make setup`` puts it).

    The file may not exist; :func:`require_totalseg_sdist` checks it.
    """
    return Path(sdist if sdist is not None else os.environ.get(SDIST_ENV) or DEFAULT_SDIST)


def require_totalseg_sdist(sdist: str | os.PathLike | None = None) -> Path:
    """:func:`totalseg_sdist_path`, which must be a file.

    Raises:
        MissingFileError: the file is absent; the message names it and the command that fetches it.
    """
    path = totalseg_sdist_path(sdist)
    if not path.is_file():
        raise MissingFileError(
            f"{path}: TotalSegmentator {TOTALSEG_VERSION} sdist not found; get it with `make setup` or "
            f"`{FETCH_COMMAND}`, or give its path with --totalseg-sdist / ${SDIST_ENV}")
    return path


def totalseg_class_map(tarball: str | os.PathLike) -> dict[int, str]:
    """``class_map["total"]`` of the tarball's ``map_to_binary.py``, parsed without importing it."""
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(_TS_PREFIX + "totalsegmentator/map_to_binary.py")
        source = member.read().decode() if member else ""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            maps = ast.literal_eval(node.value)
            return {int(k): str(v) for k, v in maps["total"].items()}
    raise CorruptFileError(f"{tarball}: map_to_binary.py has no class_map literal")


def mask_coverage(mask: Volume, ct: Volume) -> str | None:
    """Whether a binary mask labels its class over the whole CT: None if so, else the reason it does not.

    A mask on the CT's own grid labels the whole CT. A mask on a crop of it (same world space, other origin
    and shape) says nothing outside the crop, so it counts only when the structure is known to lie inside
    the crop: the mask is non-empty and touches no face of the crop that lies inside the CT (touching a face
    the crop shares with the CT is fine: the CT ends there too). An empty crop cannot tell "absent" from
    "outside the crop".
    """
    if mask.array.shape == ct.array.shape and np.allclose(mask.affine, ct.affine, atol=1e-3):
        return None
    offset = np.linalg.inv(ct.affine) @ mask.affine
    start = offset[:3, 3]
    if not np.allclose(offset[:3, :3], np.eye(3), atol=1e-3) or not np.allclose(start, np.rint(start), atol=1e-2):
        return "its grid is not a crop of the CT's grid"
    start = np.rint(start).astype(int)
    inside = mask.array > 0
    if not inside.any():
        return "empty on its crop (absent, or outside the crop: unknown)"
    where = np.argwhere(inside)
    lo, hi = where.min(0), where.max(0)
    for axis, name in enumerate("ijk"):
        if lo[axis] == 0 and start[axis] > 0:
            return f"touches the crop's lower {name} face, which lies inside the CT (cut by the crop)"
        if hi[axis] == inside.shape[axis] - 1 and start[axis] + inside.shape[axis] < ct.array.shape[axis]:
            return f"touches the crop's upper {name} face, which lies inside the CT (cut by the crop)"
    return None


def merge_masks(ct: Volume, masks: Iterable[tuple[str, Volume]]) -> tuple[np.ndarray, dict[int, str], dict[str, str]]:
    """One label map on the CT's grid from binary masks stored on the CT's grid or crops of it.

    Each mask is checked with :func:`mask_coverage` and resampled (nearest, by world coordinates, zeros
    outside its grid) onto the CT's grid; kept masks get ids 1, 2, ... in the given order, and an earlier
    mask keeps the voxels two masks share.

    Returns:
        (label ids (X, Y, Z) uint8, {id: class}, {class: why it was left out}).
    """
    from medmoe.seg.resample import resample_to_grid

    label = np.zeros(ct.array.shape, dtype=np.uint8)
    kept: dict[int, str] = {}
    excluded: dict[str, str] = {}
    for name, mask in masks:
        reason = mask_coverage(mask, ct)
        if reason:
            excluded[name] = reason
            continue
        on_ct = resample_to_grid((mask.array > 0)[None], mask.affine, ct.affine, ct.array.shape, "nearest")[0]
        value = len(kept) + 1
        label[on_ct & (label == 0)] = value
        kept[value] = name
    return label, kept, excluded


def _mask_file(mask_dir: Path, member: str) -> Path:
    return mask_dir / member.replace("/", "__")


def _build_aorta_label(root: Path, mask_dir: Path) -> tuple[dict[int, str], dict[str, str]]:
    ct = read_ct(root / "aorta_report" / "example_ct.nii.gz")
    masks = [(name, read_label(_mask_file(mask_dir, member))) for member, name in AORTA_MASKS]
    label, kept, excluded = merge_masks(ct, masks)
    write_nifti(label, ct.affine, root / "aorta_report" / "label.nii.gz", dtype=np.uint8)
    for name, reason in excluded.items():
        logger.info("aorta-report: %s left out: %s", name, reason)
    return kept, excluded


def build_totalseg_pack(out: str | os.PathLike, *, sdist: str | os.PathLike | None = None) -> Path:
    """Extract the real example CTs with their TotalSegmentator label maps; returns the datalist path.

    Files:

    - ``example_ct.nii.gz`` (122x101x112 at 3 mm, abdomen-pelvis) with ``example_seg.nii.gz``
      (``example_seg_fast_force_split``, the 'total' map): dataset ``TotalSegmentator``;
    - ``aorta_report/example_ct.nii.gz`` (233x167x191 at 1.5 mm, chest and upper abdomen, arterial phase) with
      ``aorta_report/label.nii.gz``, merged by :func:`merge_masks` from the binary masks of :data:`AORTA_MASKS`
      (resampled from their crops onto the CT's grid; a mask whose structure its crop cuts, or that is empty,
      is left out, since outside its crop the class is unknown): dataset ``aorta-report``, with the kept
      classes as its label map (aorta, heart, brachiocephalic trunk, coeliac trunk in 2.18.0);
    - ``example_ct_dicom/`` (20-slice 512x512 DICOM series, 2 mm, upper abdomen with the arms) with
      ``example_seg_dicom.nii.gz`` (the 'total' map): dataset ``TotalSegmentator``.

    Splits: training = the two NIfTI CTs, test = the DICOM series (never trained on); no validation split of
    its own, since a CT in both would be a training/validation overlap (train with ``--val-split training``). The
    datalist's ``aorta_report`` key records the kept and the excluded masks. The masks are TotalSegmentator's
    model output, not manual annotation.

    Args:
        out: output folder.
        sdist: the ``totalsegmentator-2.18.0.tar.gz`` source distribution; default
            :func:`totalseg_sdist_path` (``$MEDMOE_TOTALSEG_SDIST``, else ``.cache/`` in the working directory).

    Raises:
        MissingFileError: the sdist is absent (the message says how to fetch it).
        CorruptFileError: it cannot be read or lacks the expected files.
    """
    root = Path(out)
    path = require_totalseg_sdist(sdist)
    mask_dir = root / ".aorta_report_masks"
    n_dicom = _extract_examples(path, root, mask_dir)
    try:
        aorta_map, excluded = _build_aorta_label(root, mask_dir)
    finally:
        shutil.rmtree(mask_dir, ignore_errors=True)
    if not aorta_map:
        raise CorruptFileError(f"{path}: no aorta-report mask covers its CT; expected totalsegmentator {TOTALSEG_VERSION}")
    out_path = _write_pack_datalist(root, path, aorta_map, excluded)
    logger.info("extracted the TotalSegmentator examples (%d DICOM slices, aorta-report classes %s) to %s",
                n_dicom, ", ".join(aorta_map.values()), root)
    return out_path


def _extract_examples(path: Path, root: Path, mask_dir: Path) -> int:
    """Copy the example CTs, their label maps and the DICOM series out of the sdist at ``path`` into ``root``
    (the aorta-report masks into ``mask_dir``); the number of DICOM slices.

    Raises:
        CorruptFileError: the tarball is unreadable or lacks one of the files.
    """
    wanted = {
        _TS_REF + "example_ct.nii.gz": root / "example_ct.nii.gz",
        _TS_REF + "example_seg_fast_force_split.nii.gz": root / "example_seg.nii.gz",
        _TS_REF + "example_seg_dicom.nii.gz": root / "example_seg_dicom.nii.gz",
        _TS_REF + "aorta_report/example_ct.nii.gz": root / "aorta_report" / "example_ct.nii.gz",
    }
    for member, _ in AORTA_MASKS:
        wanted[_TS_REF + member] = _mask_file(mask_dir, member)
    root.mkdir(parents=True, exist_ok=True)
    n_dicom = 0
    try:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name in wanted:
                    target = wanted[member.name]
                elif member.name.startswith(_TS_REF + "example_ct_dicom/") and member.isfile():
                    target = root / "example_ct_dicom" / Path(member.name).name
                    n_dicom += 1
                else:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CorruptFileError(f"{path}: cannot read the TotalSegmentator tarball ({err})") from err
    missing = [str(v.relative_to(root)) for v in wanted.values() if not v.is_file()]
    if missing or n_dicom == 0:
        raise CorruptFileError(f"{path}: tarball lacks {missing or ['example_ct_dicom/']}; expected totalsegmentator {TOTALSEG_VERSION}")
    return n_dicom


def _write_pack_datalist(root: Path, path: Path, aorta_map: dict[int, str], excluded: dict[str, str]) -> Path:
    """Write the pack's datalist (splits, label maps of both datasets, the aorta-report masks kept and left
    out); its path."""
    ct = datalist_entry(root, root / "example_ct.nii.gz", root / "example_seg.nii.gz", TOTALSEG_DATASET)
    aorta = datalist_entry(root, root / "aorta_report" / "example_ct.nii.gz",
                           root / "aorta_report" / "label.nii.gz", AORTA_DATASET)
    dicom = datalist_entry(root, root / "example_ct_dicom", root / "example_seg_dicom.nii.gz", TOTALSEG_DATASET)
    datalist = {
        "description": f"TotalSegmentator {TOTALSEG_VERSION} example CTs with TotalSegmentator label maps "
                       "(model output, not manual annotation); test = the DICOM series",
        "label_maps": {TOTALSEG_DATASET: {str(k): v for k, v in totalseg_class_map(path).items()},
                       AORTA_DATASET: {str(k): v for k, v in aorta_map.items()}},
        "training": [ct, aorta], "test": [dicom],
        "aorta_report": {"kept": {str(k): v for k, v in aorta_map.items()}, "excluded": excluded},
    }
    return write_datalist(root, datalist)
