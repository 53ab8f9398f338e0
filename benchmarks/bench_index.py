"""Recall@10 and queries/s of the index `medmoe align index` chooses, against exact search, in one run.

The gallery is ``--n`` random unit vectors (default 1,000,000) of the embedding width of medmoe-nano (read
from its config); the queries are other random unit vectors. Unclustered vectors are the worst case of
approximate search: no structure to exploit, and the 10th neighbour barely closer than the 100th. Real
embeddings cluster (by modality, by finding), so recall there is at least as high.

For each index kind (``--kinds``, default ``auto``: the one ``choose_index`` picks for n items):

- ``build_s``: time to train and fill the index;
- ``recall_at_10``: mean fraction of the exact top-10 it returns;
- ``qps``: queries per second in blocks of ``queries / blocks`` a call (batched, as a server groups
  them), and ``qps_single`` one query a call (over the first ``--single`` queries);

next to exact search's (``IndexFlatIP``, the ground truth). Every index is built first; then each block
of queries (and each single query) goes to every index in turn, so that the ratios hold when the speed of
a shared machine drifts. Prints one JSON object.

    python benchmarks/bench_index.py [--n 1000000] [--queries 1000] [--kinds auto,ivf] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from medmoe.align.faiss_index import build_faiss, choose_index, import_faiss, search_faiss
from medmoe.registry import get_model_config


def random_unit_vectors(n: int, dim: int, rng: np.random.Generator, block: int = 100_000) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, block):
        x = rng.standard_normal((min(block, n - start), dim), dtype=np.float32)
        out[start:start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def interleaved_search(indexes: list, queries: np.ndarray, k: int, blocks: int, single: int
                       ) -> tuple[list[np.ndarray], list[float], list[float]]:
    """Search ``queries`` with every ``(index, plan)``, block by block in turn (so that a change in the
    machine's speed hits all of them alike), then ``single`` queries one a call, in turn too.

    Returns:
        per index: its rows (Q, k), batched queries/s, one-at-a-time queries/s.
    """
    rows = [[] for _ in indexes]
    batched = [0.0] * len(indexes)
    one = [0.0] * len(indexes)
    for block in np.array_split(queries, blocks):
        for i, (index, plan) in enumerate(indexes):
            started = time.perf_counter()
            rows[i].append(search_faiss(index, plan, block, k)[1])
            batched[i] += time.perf_counter() - started
    for q in queries[:single]:
        for i, (index, plan) in enumerate(indexes):
            started = time.perf_counter()
            search_faiss(index, plan, q[None], k)
            one[i] += time.perf_counter() - started
    return ([np.concatenate(r) for r in rows], [len(queries) / t for t in batched],
            [single / t if single else float("nan") for t in one])


def recall(rows: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(rows, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="gallery size (default 1,000,000)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=100, help="queries also timed one a call (default 100)")
    parser.add_argument("--blocks", type=int, default=10, help="query blocks timed in turn (default 10)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--kinds", default="auto", help="comma-separated index kinds (default auto)")
    parser.add_argument("--model", default="medmoe-nano", help="registered model whose embedding width is used")
    parser.add_argument("--threads", type=int, default=None, help="FAISS threads (default: FAISS's, all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    faiss = import_faiss()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    dim = int(get_model_config(args.model)["embed_dim"])
    rng = np.random.default_rng(args.seed)
    gallery = random_unit_vectors(args.n, dim, rng)
    queries = random_unit_vectors(args.queries, dim, rng)

    result = {"n": args.n, "dim": dim, "model": args.model, "queries": args.queries, "k": args.k,
              "threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__, "cpu": platform.processor()
              or platform.machine(), "data": "random unit vectors (gallery and queries independent)"}
    plans = [choose_index(args.n, dim, "exact")] + [choose_index(args.n, dim, k.strip()) for k in args.kinds.split(",")]
    built, build_s = [], []
    for plan in plans:
        started = time.perf_counter()
        built.append((build_faiss(gallery, plan), plan))
        build_s.append(time.perf_counter() - started)
    rows, qps, qps_single = interleaved_search(built, queries, args.k, args.blocks, args.single)
    truth = rows[0]
    result["exact"] = {"build_s": round(build_s[0], 2), "qps": round(qps[0], 1), "qps_single": round(qps_single[0], 1)}
    result["indexes"] = [{
        "requested": requested.strip(), "kind": plan.kind, "params": plan.params, "build_s": round(build_s[i], 2),
        f"recall_at_{args.k}": round(recall(rows[i], truth), 4), "qps": round(qps[i], 1),
        "qps_single": round(qps_single[i], 1), "speedup": round(qps[i] / qps[0], 1),
        "speedup_single": round(qps_single[i] / qps_single[0], 1),
    } for i, (requested, plan) in enumerate(zip(["exact", *args.kinds.split(",")], plans)) if i > 0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
