"""Every generated report says what its labels say (parsed back by an independent reader)."""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict

import pytest
from testkit.report_parser import parse_report
from testkit.sample_measures import read_rows

from medmoe.data.manifest import COLUMNS as MANIFEST_COLUMNS
from medmoe.data.modalities import MODALITIES

pytestmark = pytest.mark.timeout(240)

_MODALITY_WORDS = {
    "xray": r"x-ray|radiograph|cxr",
    "ct": r"\bct\b",
    "mri": r"\bmri?\b|weighted",
    "ultrasound": r"ultrasound|sonograph|\bus\b|b-mode",
    "pathology": r"h&e|histolog|microscop",
    "fundus": r"fundus|retinal photograph",
}


def test_manifest_has_the_agreed_columns(quick_pack):
    root, _ = quick_pack
    header = (root / "modality-bench" / "manifest.csv").read_text(encoding="utf-8").splitlines()[0]
    assert tuple(header.split(",")) == MANIFEST_COLUMNS


def test_reports_parse_back_to_labels(quick_pack):
    root, _ = quick_pack
    rows = read_rows(root / "modality-bench" / "manifest.csv")
    assert Counter(r["modality"] for r in rows) == {m: 30 for m in MODALITIES}
    mismatches = []
    for row in rows:
        labels = set(row["labels"].split("|"))
        positives, negated = parse_report(row["modality"], row["report"])
        expected = labels - {"normal"}
        if positives != expected or ("normal" in labels) != (not positives):
            mismatches.append((row["image"], row["labels"], sorted(positives), row["report"]))
        # A report never denies a finding kind that it also states.
        stated_kinds = {kind for kind in negated if any(kind in tag for tag in expected)}
        if stated_kinds:
            mismatches.append((row["image"], "contradiction", sorted(stated_kinds), row["report"]))
    assert not mismatches, mismatches[:5]


def test_reports_vary_and_need_the_findings(quick_pack):
    root, _ = quick_pack
    rows = read_rows(root / "modality-bench" / "manifest.csv")
    by_modality = defaultdict(list)
    for row in rows:
        by_modality[row["modality"]].append(row)
    for modality, group in by_modality.items():
        reports = [r["report"] for r in group]
        label_sets = {r["labels"] for r in group}
        # Several findings per modality, and reports that differ within a modality.
        assert len(label_sets) >= 3, (modality, label_sets)
        assert len(set(reports)) >= 0.9 * len(reports), modality
        unnamed = [r for r in reports if not re.search(_MODALITY_WORDS[modality], r, re.I)]
        assert 0 < len(unnamed) < len(reports), (modality, len(unnamed))
        assert any(re.search(r"\b(no|without|negative for)\b", r, re.I) for r in reports), modality


def test_splits_are_70_15_15_per_modality(quick_pack):
    root, counts = quick_pack
    assert counts["modality-bench"].splits == {"train": 132, "val": 24, "test": 24}
    rows = read_rows(root / "modality-bench" / "manifest.csv")
    for modality in MODALITIES:
        splits = Counter(r["split"] for r in rows if r["modality"] == modality)
        assert splits == {"train": 22, "val": 4, "test": 4}, (modality, splits)


def test_every_report_says_more_than_its_technique_line(monkeypatch):
    """No seed may give an empty or header-only report (an empty one stops build-samples)."""
    from medmoe_samples.pairs import modality_bench

    modules = {sys.modules[maker.__module__] for maker in modality_bench.CASE_MAKERS.values()}
    headers = set()
    for module in modules:
        headers |= {h for name, value in vars(module).items() if name.endswith("HEADERS") for h in value if h}
        for name in [n for n in vars(module) if n.startswith("render_")]:
            monkeypatch.setattr(module, name, lambda *args, **kwargs: None)  # reports only: skip the pixels
    bare = []
    for seed in range(6):
        for modality, make in modality_bench.CASE_MAKERS.items():
            for index in range(300):
                report = make(modality_bench.case_rng(seed, modality, index), 8).report.strip()
                body = next((report[len(h):] for h in headers if report.startswith(h)), report).strip()
                if not body:
                    bare.append((seed, modality, index, report))
    assert not bare, bare[:5]
