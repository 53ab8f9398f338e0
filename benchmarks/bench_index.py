"""Recall@10 and queries/s of the index `medmoe align index` chooses, against exact search, in one run.

The gallery is ``--n`` random unit vectors (default 1,000,000) of the embedding width of medmoe-nano (read
from its config); the queries are other random unit vectors. Unclustered vectors are the worst case of
approximate search: no structure to exploit, and the 10th neighbour barely closer than the 100th. Real
embeddings cluster (by modality, by finding), so recall there is at least as high.

For each index kind (``--kinds``, default ``auto``: the one ``choose_index`` picks for n items):

- ``build_s``: time to train and fill the index;
- ``recall_at_10``: mean fraction of the exact top-10 it returns;
- ``qps``: queries per second with all queries in one call (batched, as a server would group them),
  and ``qps_single`` one query a call (over the first ``--single`` queries);

next to exact search's (``IndexFlatIP``, the ground truth). Prints one JSON object.

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


def timed_search(index, plan, queries: np.ndarray, k: int, single: int) -> tuple[np.ndarray, float, float]:
    """(rows, batched queries/s, one-at-a-time queries/s)."""
    started = time.perf_counter()
    _, rows = search_faiss(index, plan, queries, k)
    batched = len(queries) / (time.perf_counter() - started)
    started = time.perf_counter()
    for q in queries[:single]:
        search_faiss(index, plan, q[None], k)
    one = single / (time.perf_counter() - started) if single else float("nan")
    return rows, batched, one


def recall(rows: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(rows, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="gallery size (default 1,000,000)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=100, help="queries also timed one a call (default 100)")
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
    exact_plan = choose_index(args.n, dim, "exact")
    started = time.perf_counter()
    exact = build_faiss(gallery, exact_plan)
    build_s = time.perf_counter() - started
    truth, qps, qps_single = timed_search(exact, exact_plan, queries, args.k, args.single)
    result["exact"] = {"build_s": round(build_s, 2), "qps": round(qps, 1), "qps_single": round(qps_single, 1)}
    del exact
    result["indexes"] = []
    for kind in args.kinds.split(","):
        plan = choose_index(args.n, dim, kind.strip())
        started = time.perf_counter()
        index = build_faiss(gallery, plan)
        build_s = time.perf_counter() - started
        rows, qps, qps_single = timed_search(index, plan, queries, args.k, args.single)
        result["indexes"].append({
            "requested": kind, "kind": plan.kind, "params": plan.params, "build_s": round(build_s, 2),
            f"recall_at_{args.k}": round(recall(rows, truth), 4), "qps": round(qps, 1),
            "qps_single": round(qps_single, 1), "speedup": round(qps / result["exact"]["qps"], 1),
        })
        del index
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
