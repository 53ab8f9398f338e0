"""``build_ct_samples``: the phantom pack and, optionally, the real TotalSegmentator CT pack under one folder."""

from __future__ import annotations

import os
from pathlib import Path

from medmoe_samples.ct.phantom_pack import build_phantom_pack
from medmoe_samples.ct.totalseg import build_totalseg_pack, require_totalseg_sdist


def build_ct_samples(out: str | os.PathLike, *, seed: int = 0, quick: bool = False, real: bool = True,
                     sdist: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Path]:
    """Write ``out/phantoms`` and (with ``real``) ``out/totalseg``; returns {pack: datalist path}.

    Args:
        out: parent folder of both packs.
        seed: phantom seed; the same seed gives the same files.
        quick: a few phantoms per dataset (tests, smoke runs).
        real: also extract the TotalSegmentator example CTs.
        sdist: the TotalSegmentator 2.18.0 sdist; default as in
            :func:`medmoe_samples.ct.totalseg.totalseg_sdist_path`.
        progress: show a progress bar while phantoms render.

    Raises:
        MissingFileError: ``real`` and the sdist is absent; checked before any phantom is rendered.
    """
    root = Path(out)
    if real:
        sdist = require_totalseg_sdist(sdist)
    paths = {"phantoms": build_phantom_pack(root / "phantoms", seed=seed, quick=quick, progress=progress)}
    if real:
        paths["totalseg"] = build_totalseg_pack(root / "totalseg", sdist=sdist)
    return paths
