"""DICOM-SEG output (Segmentation Storage, written with highdicom) for a prediction on a DICOM series.

One binary segment per prompted class (overlaps kept: a tumour is also inside its organ's segment), each
frame one source slice that holds the segment (empty frames omitted), referencing the slice it was
derived from and sharing the source series' geometry (position, orientation, pixel spacing) and
frame of reference.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from medmoe.data.readers.dicom import is_dicom_file, read_dicom_header
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.seg.classes import ClassTemplate

logger = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# Type 2 attributes (present, may be empty) that a DICOM-SEG copies from its source; anonymised or
# hand-made series often lack them, so they are added empty to the in-memory headers.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
          "AccessionNumber", "ReferringPhysicianName")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _codes(kind: str | None):
    """(SegmentedPropertyCategory, SegmentedPropertyType) SNOMED CT codes of a class kind."""
    from pydicom.sr.codedict import codes

    sct = codes.SCT
    if kind in ("tumour", "cyst"):
        return sct.MorphologicallyAbnormalStructure, (sct.Neoplasm if kind == "tumour" else sct.Cyst)
    if kind is None:  # a free-text prompt outside the template
        return sct.Tissue, sct.Tissue
    return sct.AnatomicalStructure, {"organ": sct.Organ, "vessel": sct.BloodVessel, "bone": sct.Bone,
                                     "muscle": sct.Muscle}[kind]


def source_slices(folder: str | os.PathLike, series_uid: str, shape: Sequence[int],
                  affine: np.ndarray) -> list[pydicom.Dataset]:
    """The headers of the slices a volume was stacked from, in its slice order (along the slice normal).

    Args:
        folder: the DICOM series folder the volume was read from.
        series_uid: its SeriesInstanceUID (``Volume.meta['series_uid']``).
        shape, affine: the volume's (X, Y, Z) shape and RAS affine, to check the folder is unchanged.

    Raises:
        InvalidInputError: ``folder`` is not a folder.
        CorruptFileError: the folder changed since it was read (other slices or geometry).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: DICOM-SEG needs a DICOM series input (a NIfTI CT has no DICOM slices to "
                                "reference); write a .nii.gz instead")
    headers = (read_dicom_header(f, str(f), stop_before_pixels=True) for f in sorted(folder.iterdir())
               if f.is_file() and not f.name.startswith(".") and is_dicom_file(f))
    slices = [ds for ds in headers if str(ds.get("SeriesInstanceUID", "")) == series_uid
              and "Rows" in ds and "ImagePositionPatient" in ds]
    if len(slices) != int(shape[2]):
        raise CorruptFileError(f"{folder}: {len(slices)} slices of series {series_uid} found, the volume read had "
                               f"{int(shape[2])}; did the folder change?")
    orientation = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    slices.sort(key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=np.float64) @ normal))
    _complete_headers(slices, folder)
    first_ras = _LPS_TO_RAS[:3, :3] @ np.asarray(slices[0].ImagePositionPatient, dtype=np.float64)
    if not np.allclose(first_ras, np.asarray(affine)[:3, 3], atol=1e-2):
        raise CorruptFileError(f"{folder}: the first slice is not where the volume starts; did the folder change?")
    return slices


def _complete_headers(slices: list[pydicom.Dataset], folder: Path) -> None:
    """Fill what anonymised series leave out, in memory, so a DICOM-SEG can reference them.

    Empty type 2 attributes are added; SOP Class / Instance UIDs blanked in the data set are taken from
    the file meta (where DICOM keeps a copy); a missing Study / Series Instance UID or Frame of Reference
    UID gets one new UID shared by every slice (logged: the SEG then cannot be linked to the study in a
    PACS, since the source carries no UID to link to).
    """
    generated: dict[str, str] = {}
    for ds in slices:
        for keyword in _TYPE2:
            if keyword not in ds or ds.get(keyword) is None:
                setattr(ds, keyword, "")
        meta = getattr(ds, "file_meta", None)
        for keyword, meta_keyword in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                      ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(keyword, "") or ""):
                value = str(meta.get(meta_keyword, "") or "") if meta is not None else ""
                if not value:
                    raise CorruptFileError(f"{folder}: a slice has no {keyword}; a DICOM-SEG cannot reference it")
                setattr(ds, keyword, value)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if not str(ds.get(keyword, "") or ""):
                generated.setdefault(keyword, pydicom.uid.generate_uid())
                setattr(ds, keyword, generated[keyword])
    if generated:
        logger.warning("%s: the series has no %s (anonymised?); the DICOM-SEG uses new UIDs for them, so viewers "
                       "will not attach it to the source study", folder, ", ".join(sorted(generated)))


def write_dicom_seg(masks: np.ndarray, names: Sequence[str], path: str | os.PathLike, *,
                    folder: str | os.PathLike, series_uid: str, affine: np.ndarray,
                    kinds: Sequence[str | None] | None = None, template: ClassTemplate | None = None,
                    series_description: str = "medmoe MoME segmentation") -> Path:
    """Write ``masks`` as a binary DICOM-SEG referencing the DICOM series they were predicted on.

    Args:
        masks: (K, X, Y, Z) bool on the series' grid as :func:`~medmoe.data.volumes.read_ct` stacks it
            (columns, rows, slices along the normal), as :func:`~medmoe.seg.predict.predict_volume` returns.
        names: the K segment labels (canonical class names).
        path: the ``.dcm`` file to write.
        folder, series_uid, affine: the series folder, its SeriesInstanceUID and the volume's RAS affine
            (``Volume.path``, ``Volume.meta['series_uid']``, ``Volume.affine``).
        kinds: the K class kinds (organ, vessel, bone, muscle, tumour, cyst; None: free text) for the coded
            segment category and type (default: looked up in ``template``).
        template: class template for the kinds (default :meth:`ClassTemplate.default`).

    Returns:
        The path written.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medmoe import __version__

    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 4 or masks.shape[0] != len(names):
        raise InvalidInputError(f"masks {masks.shape}: expected (K, X, Y, Z) with K = {len(names)}")
    if kinds is None:
        template = template or ClassTemplate.default()
        kinds = [template.info(n).kind if n in template else None for n in names]
    sources = source_slices(folder, series_uid, masks.shape[1:], affine)
    if (int(sources[0].Columns), int(sources[0].Rows)) != masks.shape[1:3]:
        raise InvalidInputError(f"masks {masks.shape[1:]} do not match the series' {sources[0].Columns} columns x "
                                f"{sources[0].Rows} rows")
    algorithm = hd.AlgorithmIdentificationSequence(name="medmoe MoME", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=k + 1, segment_label=str(name)[:64], segmented_property_category=category,
        segmented_property_type=prop_type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
        for k, (name, (category, prop_type)) in enumerate(zip(names, map(_codes, kinds)))]
    # (K, X=columns, Y=rows, Z=slices) -> (frames = slices, rows, columns, segments)
    pixels = np.ascontiguousarray(masks.transpose(3, 2, 1, 0), dtype=np.uint8)
    hd_logger = logging.getLogger("highdicom")
    hd_level = hd_logger.level
    hd_logger.setLevel(max(hd_level, logging.WARNING))  # highdicom logs every module it copies at INFO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.Segmentation(
                source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9000,
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medmoe", manufacturer_model_name="MoME",
                software_versions=str(__version__), device_serial_number="0", series_description=series_description,
                omit_empty_frames=bool(masks.any()))
    finally:
        hd_logger.setLevel(hd_level)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    logger.debug("wrote DICOM-SEG %s: %d segments, %d frames", out, len(names), int(seg.NumberOfFrames))
    return out
