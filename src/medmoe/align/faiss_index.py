"""Which FAISS index a gallery of n unit vectors gets, with which parameters, and building it.

    >>> plan = choose_index(1_000_000, 96)        # IndexPlan(kind="pq", params={"factory": "PQ48x4fs,RFlat", ...})
    >>> index = build_faiss(vectors, plan)         # (n, 96) float32, L2-normalised
    >>> scores, rows = search_faiss(index, plan, queries, k=10)

Every index scores by inner product, which is the cosine of unit vectors. The rules of ``kind="auto"``:

* ``n < EXACT_BELOW`` (100k): ``exact`` (``IndexFlatIP``), every item compared with the query by BLAS;
  fast enough at this size, and exact.
* ``EXACT_BELOW <= n < IVFPQ_FROM`` (20M): ``pq``: every item is scored from a 4-bit product-quantised code
  (``dim / 2`` sub-quantisers, FAISS "fast-scan" SIMD kernels), and the ``k_factor * k`` best are re-ranked
  with their exact vectors (``PQ48x4fs,RFlat`` for width 96). ``k_factor`` is 64 up to 2M items, 128 beyond.
  Its recall@10 stays >= 0.95 even on unclustered vectors, the worst case of approximate search (measured
  on random unit vectors by ``benchmarks/bench_index.py``, see docs/search.md), where an inverted file
  must probe most of its lists and HNSW must explore so far that neither beats exact search.
* ``n >= IVFPQ_FROM``: ``ivfpq`` (inverted file of 8-bit PQ codes, 4 dimensions a byte, no exact vectors
  kept): the one that fits memory at that size; it trades recall for memory.

``ivf`` (IVF-Flat: ``nlist`` ~ 4 sqrt(n) lists, a power of two with at least 39 training points a list;
``nprobe`` = nlist / 8, at least 16) and ``hnsw`` (``M`` = 32, ``efSearch`` = 32 ceil(log2 n)) are built
when asked for (``kind="ivf"`` / ``"hnsw"``); ``pq`` and ``ivfpq`` asked for on fewer than 16 items give
``exact`` (nothing to train a quantiser on). They suit embeddings that cluster (by modality, by finding);
on unclustered vectors their recall at these settings is low.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medmoe.errors import InvalidInputError

KINDS = ("auto", "exact", "pq", "ivf", "hnsw", "ivfpq")
EXACT_BELOW = 100_000
IVFPQ_FROM = 20_000_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
MIN_POINTS_PER_LIST = 39  # FAISS warns below this many training points per centroid
TRAIN_POINTS_PER_LIST = 64
PQ_TRAIN_POINTS = 65_536


def import_faiss():
    """The ``faiss`` module, imported without its loader's INFO lines (which CPU build it tries first)."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


@dataclass
class IndexPlan:
    """An index kind and its parameters (what ``meta.json`` records).

    Attributes:
        kind: ``exact``, ``pq``, ``ivf``, ``hnsw`` or ``ivfpq``.
        params: ``factory`` (the FAISS index-factory string) and the search parameters: ``k_factor`` (pq),
            ``nprobe`` (ivf, ivfpq), ``efSearch`` (hnsw), with the build ones (``nlist``, ``m``, ``nbits``,
            ``M``, ``efConstruction``).
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict)


def _nlist(n: int) -> int:
    """About 4 sqrt(n) lists, a power of two, with at least MIN_POINTS_PER_LIST points each."""
    nlist = 1 << max(0, round(math.log2(4 * math.sqrt(max(n, 1)))))
    while nlist > 1 and nlist * MIN_POINTS_PER_LIST > n:
        nlist //= 2
    return min(nlist, 65536)


def _largest_divisor(dim: int, at_most: int) -> int:
    return max(m for m in range(1, max(1, at_most) + 1) if dim % m == 0)


def choose_index(n: int, dim: int, kind: str = "auto") -> IndexPlan:
    """The index kind for ``n`` vectors of width ``dim`` (``auto``: by size, see the module docstring) and
    its parameters.

    Raises:
        InvalidInputError: an unknown kind, or no vector.
    """
    if kind not in KINDS:
        raise InvalidInputError(f"index kind {kind!r}: expected one of {', '.join(KINDS)}")
    if n < 1:
        raise InvalidInputError("cannot index an empty gallery (no embedded item)")
    if kind == "auto":
        kind = "exact" if n < EXACT_BELOW else "pq" if n < IVFPQ_FROM else "ivfpq"
    if kind in ("pq", "ivfpq") and n < 16:
        kind = "exact"  # too few items to train 16 centroids a sub-quantiser; exact is what they would give
    if kind == "exact":
        return IndexPlan("exact", {"factory": "Flat"})
    if kind == "pq":
        m = _largest_divisor(dim, dim // 2)  # 2 dimensions a 4-bit code
        return IndexPlan("pq", {"factory": f"PQ{m}x4fs,RFlat", "m": m, "nbits": 4,
                                "k_factor": 64 if n <= 2_000_000 else 128})
    if kind == "hnsw":
        return IndexPlan("hnsw", {"factory": f"HNSW{HNSW_M},Flat", "M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION,
                                  "efSearch": 32 * math.ceil(math.log2(max(n, 2)))})
    nlist = _nlist(n)
    nprobe = min(nlist, max(16, nlist // 8))
    if kind == "ivf":
        return IndexPlan("ivf", {"factory": f"IVF{nlist},Flat", "nlist": nlist, "nprobe": nprobe})
    m = _largest_divisor(dim, dim // 4)  # 4 dimensions a byte
    nbits = 8 if n >= 256 * MIN_POINTS_PER_LIST else 4
    return IndexPlan("ivfpq", {"factory": f"IVF{nlist},PQ{m}x{nbits}", "nlist": nlist, "nprobe": nprobe, "m": m,
                               "nbits": nbits})


def build_faiss(vectors: np.ndarray, plan: IndexPlan, *, seed: int = 0):
    """A FAISS index of ``plan`` holding ``vectors`` (rows in order). Training (IVF, PQ) uses a sample
    drawn with ``seed`` (at most 64 points a list, 65,536 for PQ), so a rebuild gives the same index."""
    faiss = import_faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InvalidInputError(f"expected (n, dim) vectors with n >= 1, got shape {x.shape}")
    if plan.kind not in KINDS[1:]:
        raise InvalidInputError(f"index kind {plan.kind!r}: expected one of {', '.join(KINDS[1:])}")
    n, dim = x.shape
    index = faiss.index_factory(dim, plan.params["factory"], faiss.METRIC_INNER_PRODUCT)
    if plan.kind == "hnsw":
        index.hnsw.efConstruction = int(plan.params["efConstruction"])
    if not index.is_trained:
        sample = PQ_TRAIN_POINTS if plan.kind == "pq" else max(
            int(plan.params["nlist"]) * TRAIN_POINTS_PER_LIST, 256 * MIN_POINTS_PER_LIST)
        rows = np.random.default_rng(seed).choice(n, sample, replace=False) if n > sample else np.arange(n)
        index.train(x[np.sort(rows)])
    index.add(x)
    return index


def configure_search(index, plan: IndexPlan, k: int) -> None:
    """Set the search-time parameters of ``plan`` on ``index`` (``efSearch`` at least ``k``)."""
    faiss = import_faiss()
    if plan.kind in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = int(plan.params["nprobe"])
    elif plan.kind == "hnsw":
        index.hnsw.efSearch = max(int(plan.params["efSearch"]), int(k))
    elif plan.kind == "pq":
        faiss.downcast_index(index).k_factor = float(plan.params["k_factor"])


def search_faiss(index, plan: IndexPlan, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rows)``, each (Q, k'), k' = min(k, n): the best items of each query, best first
    (row -1 where an approximate index found fewer than k')."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != index.d:
        raise InvalidInputError(f"queries of shape {q.shape}: expected (Q, {index.d})")
    if k < 1:
        raise InvalidInputError(f"k must be >= 1, got {k}")
    k = min(int(k), int(index.ntotal))
    configure_search(index, plan, k)
    return index.search(q, k)
