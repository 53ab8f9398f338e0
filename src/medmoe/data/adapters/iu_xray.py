"""Indiana University chest X-ray collection (Open-i, NLMCXR) -> manifest rows.

Source: the Open-i download page of the collection (openi.nlm.nih.gov/faq, Demner-Fushman et al. 2016):
``NLMCXR_reports.tgz`` and ``NLMCXR_png.tgz``, extracted into one folder. Layout::

    ROOT/ecgen-radiology/1.xml ... 3955.xml
    ROOT/<any folder>/CXR1_1_IM-0001-3001.png ...

Each XML report is an ``eCitation`` with ``MedlineCitation/Article/Abstract/AbstractText`` elements
labelled COMPARISON, INDICATION, FINDINGS and IMPRESSION, ``MeSH/major`` terms such as
``Opacity/lung/base/left/mild`` and one ``parentImage id="CXR1_1_IM-0001-3001"`` per image. Every image
becomes a row carrying its report (all sections, with headers; cleaning keeps findings and impression).
Labels are the first component of each major MeSH term. The collection has no official split: reports are
assigned to train/val/test by a stable hash of their id, so both views of a study stay together.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from tqdm.auto import tqdm

from medmoe.data.adapters.common import ImportResult, hash_split, require_dir
from medmoe.data.manifest import ManifestRow
from medmoe.errors import CorruptFileError, MedMoEError

NAME = "iu-xray"
SECTION_ORDER = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
_IGNORED_MESH = {"no indexing"}


def parse_report(path: Path) -> dict:
    """``{"id", "sections": {LABEL: text}, "mesh": [major terms], "images": [parentImage ids]}``."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise CorruptFileError(f"{path}: not a readable Open-i XML report ({err})") from err
    return parse_report_xml(data, str(path), default_id=Path(path).stem)


def parse_report_xml(data: bytes, source: str, default_id: str = "") -> dict:
    """:func:`parse_report` of an XML document given as bytes (e.g. a member of ``NLMCXR_reports.tgz``).

    ``source`` names it in errors (:class:`CorruptFileError` when it is not XML); ``default_id`` is its id
    when it has no ``uId``.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise CorruptFileError(f"{source}: not a readable Open-i XML report ({err})") from err
    uid = root.find("uId")
    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().upper()
        text = " ".join("".join(node.itertext()).split())
        if label and text:
            sections[label] = text
    return {
        "id": uid.get("id") if uid is not None and uid.get("id") else default_id,
        "sections": sections,
        "mesh": [" ".join("".join(n.itertext()).split()) for n in root.iter("major")],
        "images": [n.get("id") for n in root.iter("parentImage") if n.get("id")],
    }


def report_text(sections: dict[str, str]) -> str:
    """Sections as ``LABEL: text`` lines, in the usual report order (others after)."""
    labels = [s for s in SECTION_ORDER if s in sections] + [s for s in sections if s not in SECTION_ORDER]
    return "\n".join(f"{label}: {sections[label]}" for label in labels)


def mesh_labels(terms: list[str]) -> list[str]:
    """``["Opacity/lung/base/left", "normal"]`` -> ``["opacity", "normal"]`` (unique, in order)."""
    heads = (term.split("/")[0].strip().lower() for term in terms)
    return list(dict.fromkeys(head for head in heads if head and head not in _IGNORED_MESH))


def import_iu_xray(
    root: str | os.PathLike,
    *,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    skip_missing: bool = True,
    progress: bool = False,
) -> ImportResult:
    """Build rows from the Open-i XML reports and PNG images under ``root``.

    Args:
        root: folder holding ``ecgen-radiology/`` (or the XML files) and the PNGs (searched recursively).
        fractions: train/val/test shares of the hash split.
        skip_missing: leave out images that are not on disk.
        progress: tqdm progress bar over the reports.
    """
    root = require_dir(root, NAME)
    xml_dir = root / "ecgen-radiology"
    xml_files = sorted(xml_dir.glob("*.xml")) if xml_dir.is_dir() else sorted(root.rglob("*.xml"))
    if not xml_files:
        raise CorruptFileError(f"{root}: no Open-i XML reports found (expected ecgen-radiology/*.xml)")
    images = {p.stem: p for p in root.rglob("*.png")}
    result = ImportResult(NAME)
    ordered = sorted(xml_files, key=lambda p: (len(p.stem), p.stem))
    for xml_path in tqdm(ordered, desc=NAME, unit="report", disable=not progress):
        try:
            report = parse_report(xml_path)
        except MedMoEError:
            result.skip("unreadable XML", str(xml_path))
            continue
        if not report["images"]:
            result.skip("no image", str(xml_path))
            continue
        split = hash_split(f"{NAME}:{report['id']}", fractions)
        text = report_text(report["sections"])
        labels = mesh_labels(report["mesh"])
        for image_id in report["images"]:
            image = images.get(image_id)
            if image is None:
                if skip_missing:
                    result.skip("missing image", image_id)
                    continue
                image = root / f"{image_id}.png"
            result.rows.append(
                ManifestRow(
                    image=str(image),
                    report=text,
                    modality="xray",
                    labels=list(labels),
                    dataset=NAME,
                    split=split,
                    extra={"report_id": report["id"]},
                )
            )
    return result.log()
