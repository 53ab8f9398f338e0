"""A quick sample pack built once per session; the tests read it like a user would."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmoe_samples.pairs import build_samples

QUICK_N_PER_MODALITY = 30
QUICK_IU_LIMIT = 120


@pytest.fixture(scope="session")
def quick_pack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(root, counts) of all three packs at quick sizes, seed 0."""
    root = tmp_path_factory.mktemp("samples")
    counts = build_samples(root, seed=0, n_per_modality=QUICK_N_PER_MODALITY, iu_limit=QUICK_IU_LIMIT, workers=2)
    return root, counts
