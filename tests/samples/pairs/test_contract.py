"""The packs load through medmoe.data's own manifest reader and pass its checker (images read for real)."""

from __future__ import annotations

import pytest

from medmoe.data import check, manifest

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize("name", ["modality-bench", "iu-cxr", "real-samples"])
def test_packs_load_and_check_with_the_data_readers(quick_pack, name):
    root, counts = quick_pack
    rows = manifest.read_manifest(root / name / "manifest.csv")
    assert len(rows) == counts[name].total
    assert all(row.dataset == name and row.split in ("train", "val", "test") for row in rows)
    result = check.check_manifest(root / name / "manifest.csv", read_images=True)
    assert not result.problems, result.problems[:5]
