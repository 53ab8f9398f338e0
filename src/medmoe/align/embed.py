"""Write the embeddings of a manifest to an ``.npz`` (no pickled objects: strings are fixed-width arrays)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from torch import nn

from medmoe.align.evaluate import embed_dataset, make_dataset, model_image_size

log = logging.getLogger(__name__)


def embed_manifest(model: nn.Module, manifest: str | os.PathLike, out: str | os.PathLike, *,
                   split: str | None = None, batch_size: int = 32, device: str = "cpu", workers: int = 0,
                   progress: bool = True) -> Path:
    """Embed every pair of ``manifest`` (rows of ``split``, or all) and save them.

    The file holds ``image_embeds`` (N, E), ``text_embeds`` (N, E), ``expert_index`` (N,),
    ``router_probs`` (N, K), ``modality`` (N,), ``paths``, ``reports``, ``labels`` ("|"-joined) and
    ``index`` (row position in the split). Load with ``np.load(path)`` (no ``allow_pickle`` needed).

    Returns:
        The written path.
    """
    dataset = make_dataset(manifest, split, model_image_size(model))
    emb = embed_dataset(model, dataset, batch_size=batch_size, device=device, workers=workers, progress=progress)
    out = Path(out).with_suffix(".npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.npz")
    tensors = ("image_embeds", "text_embeds", "expert_index", "router_probs", "modality")
    np.savez(tmp, **{name: getattr(emb, name).numpy() for name in tensors},
             index=np.asarray(emb.indices, dtype=np.int64), paths=np.asarray(emb.paths, dtype=str),
             reports=np.asarray(emb.reports, dtype=str),
             labels=np.asarray(["|".join(x) for x in emb.labels], dtype=str))
    tmp.replace(out)
    log.info("%d embeddings written to %s (%d bad samples skipped)", len(emb), out, len(emb.bad))
    return out
