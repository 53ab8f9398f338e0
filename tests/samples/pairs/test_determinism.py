"""The packs are a function of the seed: same seed -> same bytes (whatever the workers), other seed -> other data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medmoe_samples.pairs import build_samples

pytestmark = pytest.mark.timeout(180)

SMALL = {"which": ("modality", "iu"), "n_per_modality": 3, "iu_limit": 8, "size": 96}


def _digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_same_seed_same_bytes_different_seed_different_data(tmp_path):
    first = build_samples(tmp_path / "a", seed=7, workers=1, **SMALL)
    second = build_samples(tmp_path / "b", seed=7, workers=2, **SMALL)
    other = build_samples(tmp_path / "c", seed=8, workers=1, **SMALL)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert {k: v.as_dict() for k, v in first.items()} == {k: v.as_dict() for k, v in second.items()}
    assert len(a) == 2 + 18 + 8  # two manifests, 6 modalities x 3 images, 8 IU images
    # Another seed draws other findings, wording, pixels, IU subsample and splits.
    for name in ("modality-bench/manifest.csv", "iu-cxr/manifest.csv"):
        assert a[name] != c[name]
    shared = set(a) & set(c)
    assert sum(a[k] == c[k] for k in shared if k.endswith(".png")) == 0
    assert other["modality-bench"].total == first["modality-bench"].total


def test_rebuild_replaces_a_pack_and_refuses_foreign_folders(tmp_path):
    build_samples(tmp_path, seed=0, which=("modality",), n_per_modality=2, size=64, workers=1)
    build_samples(tmp_path, seed=0, which=("modality",), n_per_modality=1, size=64, workers=1)
    images = sorted(p.name for p in (tmp_path / "modality-bench" / "images").iterdir())
    assert len(images) == 6  # the smaller rebuild left no stale images behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    foreign = tmp_path / "other"
    (foreign / "iu-cxr").mkdir(parents=True)
    (foreign / "iu-cxr" / "notes.txt").write_text("mine")
    from medmoe.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="iu-cxr"):
        build_samples(foreign, which=("iu",), iu_limit=2)
    assert (foreign / "iu-cxr" / "notes.txt").read_text() == "mine"
