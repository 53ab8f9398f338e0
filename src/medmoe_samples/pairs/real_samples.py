"""Real sample images (dataset ``real-samples``): the DICOM, JPEG, NIfTI and PNG files that installed
packages carry, copied in their own formats so the real readers load them, all in the ``test`` split.

Each row's report is a short description built from the file's tags (DICOM Modality, BodyPartExamined,
Study/Series description, image type, size) or from what the package documents about the file. It is a
held-out check that routing works on real pixels; the labels are only filled where the source states a
finding (the paediatric pneumonia classes, the healthy-brain template, microaneurysms).

Sources (each skipped, logged and counted when its package or file is missing, or the file is > 20 MB):
pydicom's test files, pydicom-data, deid-data ultrasounds and a head CT, pneumonia-model-package's 16
paediatric chest X-ray JPEGs, nilearn's MNI152 T1 template and scikit-image's retina / IHC /
microaneurysms images. Packages are located with ``importlib.util.find_spec``, never imported.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from medmoe.data.modalities import normalize_modality
from medmoe_samples.pairs.rows import DatasetCounts, sample_row
from medmoe_samples.pairs.staging import staged_dataset

logger = logging.getLogger(__name__)

DATASET = "real-samples"
MAX_BYTES = 20 * 1024 * 1024

PYDICOM_FILES = (
    "CT_small.dcm", "MR_small.dcm", "examples_rgb_color.dcm", "examples_palette.dcm", "examples_ybr_color.dcm",
    "RG1_UNCI.dcm", "RG3_UNCI.dcm", "MR2_UNCI.dcm", "693_UNCI.dcm", "US1_UNCI.dcm", "OBXXXX1A.dcm",
)
DEID_FILES = (
    "ultrasounds/GREYSCALE_IMAGE.dcm", "ultrasounds/RGB_IMAGE.dcm", "ultrasounds/ultrasound-multiframe.dcm",
    "humans/ctbrain1.dcm",
)
# DICOM Modality codes this pack takes, and how a report names each; medmoe.data maps the code to a modality.
DICOM_NOUNS = {
    "CR": "Computed radiograph",
    "DX": "Digital radiograph",
    "RG": "Radiograph",
    "CT": "CT image",
    "MR": "MR image",
    "US": "Ultrasound image",
    "SM": "Slide microscopy image",
    "OP": "Ophthalmic photograph",
}


@dataclass(frozen=True)
class RealSource:
    """One file to copy: where it is, its name in the pack, modality, report and labels."""

    path: Path
    name: str
    modality: str
    report: str
    labels: tuple[str, ...] = ()
    convert_to_png: bool = False


def _package_path(module: str, *parts: str) -> Path | None:
    """``parts`` below the folder of the installed package ``module`` (not imported); None without it."""
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0], *parts) if locations else None


def describe_dicom(path: Path) -> tuple[str, str]:
    """Modality and a one-line description of a DICOM file from its header (pixels are not read).

    Args:
        path: DICOM file.

    Returns:
        ``(modality, report)``; modality is "" when the DICOM Modality is not one of :data:`DICOM_NOUNS`.
    """
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    code = str(ds.get("Modality", "")).strip().upper()
    modality = normalize_modality(code) if code in DICOM_NOUNS else ""
    text = DICOM_NOUNS.get(code, f"{code or 'Unknown'} image")
    body = str(ds.get("BodyPartExamined", "") or "").strip()
    if body:
        text += f" of the {body.lower()}"
    image_type = [str(v).strip().lower() for v in (ds.get("ImageType") or [])]
    if len(image_type) > 2 and image_type[2] and image_type[2] not in ("other", "axial"):
        text += f" ({image_type[2]})"
    elif "axial" in image_type:
        text += " (axial)"
    details = []
    for keyword, label in (("StudyDescription", "study"), ("SeriesDescription", "series"), ("ProtocolName", "protocol")):
        value = str(ds.get(keyword, "") or "").strip()
        meaningful = sum(c.isalpha() for c in value) >= 4  # some test files carry placeholders like "e+1"
        if meaningful and not any(value.lower() in d.lower() for d in details):
            details.append(f"{label}: {value}")
    if details:
        text += "; " + "; ".join(details)
    shape = f"{ds.get('Rows', '?')} x {ds.get('Columns', '?')} pixels, {ds.get('PhotometricInterpretation', '?')}"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        shape += f", {frames} frames"
    return modality, f"{text}. {shape}."


def _dicom_sources() -> Iterator[RealSource | tuple[str, str]]:
    from pydicom.data import get_testdata_file

    for name in PYDICOM_FILES:
        found = get_testdata_file(name, download=False)
        if found is None:
            yield name, "not found in pydicom's test files (is pydicom-data installed?)"
            continue
        yield _dicom_source(Path(found), f"pydicom_{name}")
    for rel in DEID_FILES:
        path = _package_path("deid_data", "data", rel)
        if path is None or not path.is_file():
            yield f"deid_data/data/{rel}", "not found (is deid-data installed?)"
            continue
        yield _dicom_source(path, f"deid_{Path(rel).name}")


def _dicom_source(path: Path, name: str) -> RealSource | tuple[str, str]:
    modality, report = describe_dicom(path)
    if not modality:
        return str(path), f"DICOM modality of {path.name} is not one medmoe uses"
    return RealSource(path, name, modality, report)


def _other_sources() -> Iterator[RealSource | tuple[str, str]]:
    folder = _package_path("pneumonia_model_package", "datasets", "pneumonia-data", "val")
    jpegs = sorted(folder.glob("*.jpeg")) if folder and folder.is_dir() else []
    if not jpegs:
        yield "pneumonia_model_package/datasets/pneumonia-data/val", "no JPEGs (is pneumonia-model-package installed?)"
    for path in jpegs:
        if "bacteria" in path.name.lower():
            report, labels = "Paediatric frontal chest radiograph showing bacterial pneumonia.", ("pneumonia",)
        else:
            report, labels = "Paediatric frontal chest radiograph, normal; no pneumonia.", ("normal",)
        yield RealSource(path, f"pneumonia_{path.name}", "xray", report, labels)

    template = _package_path("nilearn", "datasets", "data",
                             "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    if template is None or not template.is_file():
        yield "nilearn MNI152 T1 template", "not found (is nilearn installed?)"
    else:
        yield RealSource(template, "nilearn_mni152_t1.nii.gz", "mri",
                         "T1-weighted brain MRI template, MNI152 ICBM 2009a symmetric: a 3D average of healthy "
                         "adult brains.", ("normal",))

    for file, out_name, modality, report, labels, to_png in (
        ("retina.jpg", "skimage_retina.png", "fundus",
         "Colour fundus photograph of a human retina with optic disc, macula and vessels.", (), True),
        ("ihc.png", "skimage_ihc.png", "pathology",
         "Immunohistochemistry of colonic glands: FHL2 protein shown with DAB, haematoxylin counterstain.", (), False),
        ("microaneurysms.png", "skimage_microaneurysms.png", "fundus",
         "Grey-level detail of a retinal image (green channel) with microaneurysms.", ("microaneurysm",), False),
    ):
        path = _package_path("skimage", "data", file)
        if path is None or not path.is_file():
            yield f"skimage/data/{file}", "not found (is scikit-image installed with its data?)"
        else:
            yield RealSource(path, out_name, modality, report, labels, to_png)


def real_sources() -> tuple[list[RealSource], list[tuple[str, str]]]:
    """All real sample files found on this machine, and ``(what, why)`` for each one that is not usable."""
    found, missing = [], []
    for item in (*_dicom_sources(), *_other_sources()):
        if isinstance(item, RealSource):
            size = item.path.stat().st_size
            if size > MAX_BYTES:
                missing.append((str(item.path), f"{size / 2**20:.0f} MB is over the {MAX_BYTES // 2**20} MB limit"))
            else:
                found.append(item)
        else:
            missing.append(item)
    return found, missing


def build_real_samples(out: Path) -> DatasetCounts:
    """Copy the real sample files into ``out/real-samples/images/`` and write the manifest.

    Args:
        out: parent folder.

    Returns:
        Row counts; ``skipped`` counts sources that were missing or too large (each logged with its reason).
    """
    sources, missing = real_sources()
    for what, why in missing:
        logger.warning("real-samples: skipped %s: %s", what, why)
    with staged_dataset(Path(out), DATASET) as (folder, rows):
        for source in sources:
            target = folder / "images" / source.name
            if source.convert_to_png:
                with Image.open(source.path) as image:
                    image.convert("RGB").save(target, format="PNG")
            else:
                shutil.copyfile(source.path, target)
            rows.append(sample_row(f"images/{source.name}", source.report, source.modality, source.labels,
                                  DATASET, "test"))
    counts = DatasetCounts.from_rows(rows, skipped=len(missing))
    logger.info("%s: %d files written to %s (%d skipped)", DATASET, counts.total, Path(out) / DATASET, len(missing))
    return counts
