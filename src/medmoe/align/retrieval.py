"""Cross-modal retrieval metrics, computed in chunks (and with FAISS for large galleries).

Pairs are one-to-one: query i's correct item is gallery item i. ``R@K`` is the fraction of queries whose
correct item ranks in the top K; ranks are 1-based and ties count in the correct item's favour.
``P@K`` (GLoRIA's CheXpert 5x200 protocol) is the fraction of the top K retrieved items that share a label
with the query.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medmoe.errors import InvalidInputError

log = logging.getLogger(__name__)

FAISS_THRESHOLD = 50_000


def _check_pair(queries: Tensor, gallery: Tensor) -> None:
    if queries.dim() != 2 or gallery.dim() != 2 or queries.shape[1] != gallery.shape[1]:
        raise InvalidInputError(
            f"queries and gallery must be (N, E) and (M, E) with one E; got {tuple(queries.shape)} and {tuple(gallery.shape)}"
        )


def retrieval_ranks(queries: Tensor, gallery: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """1-based rank of gallery item i among all gallery items for query i.

    Memory is bounded by ``chunk_size ** 2`` scores: queries and gallery are both processed in chunks,
    so 100k x 100k fits on a laptop.

    Args:
        queries: (N, E); gallery: (N, E), both L2-normalised (cosine = dot product).
        chunk_size: rows of each block of the score matrix.

    Returns:
        (N,) long ranks.
    """
    _check_pair(queries, gallery)
    if queries.shape[0] != gallery.shape[0]:
        raise InvalidInputError(f"paired retrieval needs as many queries as gallery items: {queries.shape[0]} vs {gallery.shape[0]}")
    queries, gallery = queries.float(), gallery.float()
    ranks = torch.ones(queries.shape[0], dtype=torch.long)
    for q0 in range(0, queries.shape[0], chunk_size):
        q = queries[q0:q0 + chunk_size]
        # The correct item's score is read off the very block that is compared against it, so float
        # rounding cannot rank an item above itself.
        own = q @ gallery[q0:q0 + chunk_size].t()
        true = own.diagonal().unsqueeze(1)
        for g0 in range(0, gallery.shape[0], chunk_size):
            scores = own if g0 == q0 else q @ gallery[g0:g0 + chunk_size].t()
            ranks[q0:q0 + chunk_size] += (scores > true).sum(dim=1).cpu()
    return ranks


def top_k(queries: Tensor, gallery: Tensor, k: int, *, chunk_size: int = 1024,
          use_faiss: bool | None = None) -> Tensor:
    """(N, k) indices of the k most similar gallery items of each query (exact inner-product search).

    ``use_faiss=None`` picks FAISS (``IndexFlatIP``, multi-threaded BLAS) when the gallery has more than
    :data:`FAISS_THRESHOLD` items, chunked torch ``topk`` otherwise.
    """
    _check_pair(queries, gallery)
    k = min(k, gallery.shape[0])
    if use_faiss is None:
        use_faiss = gallery.shape[0] > FAISS_THRESHOLD
    if use_faiss:
        import faiss

        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(np.ascontiguousarray(gallery.detach().float().cpu().numpy()))
        out = []
        for q0 in range(0, queries.shape[0], chunk_size):
            q = np.ascontiguousarray(queries[q0:q0 + chunk_size].detach().float().cpu().numpy())
            out.append(torch.from_numpy(index.search(q, k)[1]))
        return torch.cat(out).long()
    queries, gallery = queries.float(), gallery.float()
    out = []
    for q0 in range(0, queries.shape[0], chunk_size):
        q = queries[q0:q0 + chunk_size]
        # the best so far of each query, merged with each gallery chunk's scores
        best_s = q.new_empty(q.shape[0], 0)
        best_i = torch.empty(q.shape[0], 0, dtype=torch.long, device=q.device)
        for g0 in range(0, gallery.shape[0], chunk_size):
            scores = q @ gallery[g0:g0 + chunk_size].t()
            idx = torch.arange(g0, g0 + scores.shape[1], device=scores.device).expand_as(scores)
            scores, idx = torch.cat([best_s, scores], 1), torch.cat([best_i, idx], 1)
            best_s, pos = scores.topk(min(k, scores.shape[1]), dim=1)
            best_i = idx.gather(1, pos)
        out.append(best_i)
    return torch.cat(out).long()


def precision_at_k(neighbors: Tensor, query_labels: Sequence[Sequence[str]], gallery_labels: Sequence[Sequence[str]],
                   ks: Sequence[int]) -> dict[str, float]:
    """Mean fraction of the top-K retrieved items sharing at least one label with the query.

    Queries without any label are left out; returns ``{"P@K": value}`` (NaN if no query has a label).
    """
    gallery_sets = [set(x) for x in gallery_labels]
    hits: dict[int, list[float]] = {k: [] for k in ks}
    for row, labels in zip(neighbors.tolist(), query_labels):
        wanted = set(labels)
        if not wanted:
            continue
        relevant = [bool(wanted & gallery_sets[j]) for j in row]
        for k in ks:
            hits[k].append(float(np.mean(relevant[:k])))
    return {f"P@{k}": float(np.mean(v)) if v else float("nan") for k, v in hits.items()}


def _direction(queries: Tensor, gallery: Tensor, ks: Sequence[int], chunk_size: int,
               query_labels, gallery_labels, use_faiss: bool | None) -> tuple[dict[str, float], Tensor]:
    ranks = retrieval_ranks(queries, gallery, chunk_size=chunk_size)
    out = {**{f"R@{k}": float((ranks <= k).double().mean()) for k in ks},
           "mean_rank": float(ranks.double().mean()), "median_rank": float(ranks.double().median())}
    if query_labels is not None and gallery_labels is not None:
        neighbors = top_k(queries, gallery, max(ks), chunk_size=chunk_size, use_faiss=use_faiss)
        out.update(precision_at_k(neighbors, query_labels, gallery_labels, ks))
    return out, ranks


def retrieval_metrics(image_embeds: Tensor, text_embeds: Tensor, *, labels: Sequence[Sequence[str]] | None = None,
                      ks: Sequence[int] = (1, 5, 10), chunk_size: int = 1024,
                      use_faiss: bool | None = None, per_item: bool = False) -> dict[str, Any]:
    """Image->text and text->image retrieval of N paired embeddings.

    Args:
        image_embeds, text_embeds: (N, E) L2-normalised; row i of each is a pair.
        labels: per pair, its finding labels (for P@K); None skips P@K.
        ks: the K of R@K and P@K.
        per_item: also return each query's rank (``"ranks": {"image_to_text": [...], "text_to_image": [...]}``),
            what :func:`medmoe.align.compare.compare_retrieval` pairs two models on.

    Returns:
        ``{"n": N, "image_to_text": {"R@1", ..., "mean_rank", "median_rank", "P@1", ...},
        "text_to_image": {...}}``.
    """
    if labels is not None and len(labels) != image_embeds.shape[0]:
        raise InvalidInputError(f"labels has {len(labels)} entries for {image_embeds.shape[0]} pairs")
    if image_embeds.shape[0] == 0:
        raise InvalidInputError("retrieval needs at least one pair")
    i2t, i2t_ranks = _direction(image_embeds, text_embeds, ks, chunk_size, labels, labels, use_faiss)
    t2i, t2i_ranks = _direction(text_embeds, image_embeds, ks, chunk_size, labels, labels, use_faiss)
    out: dict[str, Any] = {"n": int(image_embeds.shape[0]), "image_to_text": i2t, "text_to_image": t2i}
    if per_item:
        out["ranks"] = {"image_to_text": i2t_ranks.tolist(), "text_to_image": t2i_ranks.tolist()}
    return out
