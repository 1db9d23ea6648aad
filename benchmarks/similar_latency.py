"""Similar-specimen query latency: exact numpy / torch against faiss flat and HNSW.

How long does ``SpecimenIndex.search`` take per query as a collection grows? The stored
vectors are random unit vectors (the latency of an exact scan does not depend on the
values; HNSW recall on random data is a pessimistic bound, real embeddings cluster).

    python benchmarks/similar_latency.py           # 20k×1280 (+HNSW), 100k×1280, 1M×1280, 1M×256
    python benchmarks/similar_latency.py --configs 20000x1280 --repeats 20   # quick look

Per configuration (N vectors × D dims) and backend it reports per-query milliseconds,
p50 and p95, for single queries and for batches of 32 (batch time / 32), plus build
time, and HNSW's recall@10 against exact search. Backends:

* ``numpy``      — herbid's exact backend (matrix product + argpartition);
* ``torch``      — the same product with ``torch.mm`` + ``topk`` (comparison only);
* ``faiss-flat`` — exact IndexFlatIP (herbid uses it only when asked: slower than numpy
  with faiss-cpu on 2 cores);
* ``faiss-hnsw`` — approximate, used only when asked for (``auto`` picks faiss IVF from
  ``IVF_THRESHOLD`` vectors: see ``benchmarks/similar_search_scale.py``);
  built only up to ``--hnsw-max`` vectors (default 20k): building the graph takes ~30 s
  per 20k × 1280 vectors on 2 cores and grows super-linearly, so 100k or 1M would not
  fit this benchmark's 5-minute budget. Its recall on random 1280-d vectors (no cluster
  structure at all) is a pessimistic bound for real embeddings.

Memory: 1M × 1280 float32 is 5.1 GB, and faiss-flat keeps its own copy (another 5.1 GB),
so the 1M × 1280 run needs ~11 GB; ``--configs 1000000x256`` alone needs ~2 GB. Each
backend's copy is freed before the next is built.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from herbid.identification.index import BACKENDS, FaissFlat, FaissHNSW, NumpyExact

K = 10
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass
class Row:
    config: str
    backend: str
    build_s: float
    single_p50_ms: float
    single_p95_ms: float
    batch32_p50_ms_per_query: float
    batch32_p95_ms_per_query: float
    recall_at_10: float | None = None


def unit_vectors(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """Random unit vectors, generated in float32 chunks (no 2× float64 temporary)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + len(block)] = block
    return out


class TorchExact:
    """``torch.mm`` + ``topk`` over the same memory (``from_numpy`` shares it)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = torch.from_numpy(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            top = torch.from_numpy(queries).mm(self.vectors.T).topk(k, dim=1)
        return top.values.numpy(), top.indices.numpy()


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_ms)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def latencies(search: Search, queries: np.ndarray, repeats: int, batch: int) -> tuple[float, float]:
    """p50/p95 milliseconds per query over ``repeats`` calls of ``batch`` queries each."""
    search(queries[:batch], K)  # warm-up (thread pools, page faults)
    samples = []
    for i in range(repeats):
        chunk = queries[(i * batch) % (len(queries) - batch + 1):][:batch]
        start = time.perf_counter()
        search(chunk, K)
        samples.append((time.perf_counter() - start) * 1000 / batch)
    return percentiles(samples)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found, exact)]))


def builders(n: int, hnsw_max: int, names: list[str]) -> dict[str, Callable[[np.ndarray], object]]:
    table: dict[str, Callable[[np.ndarray], object]] = {
        "numpy": NumpyExact,
        "torch": TorchExact,
        "faiss-flat": FaissFlat,
        "faiss-hnsw": FaissHNSW,
    }
    available = {name: build for name, build in table.items()
                 if name not in BACKENDS or BACKENDS[name].available()}
    return {name: available[name] for name in names
            if name in available and not (name == "faiss-hnsw" and n > hnsw_max)}


def bench_config(n: int, dim: int, args: argparse.Namespace) -> list[Row]:
    config = f"{n}x{dim}"
    vectors = unit_vectors(n, dim, seed=0)
    queries = unit_vectors(max(args.repeats * 32, 256), dim, seed=1)
    exact = NumpyExact(vectors).search(queries[:200], K)[1]
    rows = []
    for name, build in builders(n, args.hnsw_max, args.backends).items():
        start = time.perf_counter()
        backend = build(vectors)
        build_s = time.perf_counter() - start
        single = latencies(backend.search, queries, args.repeats, 1)
        batched = latencies(backend.search, queries, max(3, args.repeats // 4), 32)
        found = backend.search(queries[:200], K)[1]
        rows.append(Row(config, name, round(build_s, 2), *map(_r, single), *map(_r, batched),
                        round(recall(found, exact), 4)))
        print(_line(rows[-1]), flush=True)
        del backend
        gc.collect()
    del vectors
    gc.collect()
    return rows


def _r(value: float) -> float:
    return round(value, 3)


def _line(row: Row) -> str:
    return (f"{row.config:>13} {row.backend:>10}  build {row.build_s:7.2f}s  single p50 {row.single_p50_ms:8.2f} "
            f"p95 {row.single_p95_ms:8.2f} ms  batch32 p50 {row.batch32_p50_ms_per_query:7.2f} "
            f"p95 {row.batch32_p95_ms_per_query:7.2f} ms/query  recall@10 {row.recall_at_10}")


def parse_config(text: str) -> tuple[int, int]:
    n, _, dim = text.lower().partition("x")
    return int(n), int(dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+",
                        default=["20000x1280", "100000x1280", "1000000x1280", "1000000x256"],
                        help="NxD sizes (default: 20000x1280 100000x1280 1000000x1280 1000000x256)")
    parser.add_argument("--backends", nargs="+", default=["numpy", "torch", "faiss-flat", "faiss-hnsw"])
    parser.add_argument("--repeats", type=int, default=20, help="single queries timed per backend")
    parser.add_argument("--hnsw-max", type=int, default=20_000, help="build HNSW only up to this many vectors")
    parser.add_argument("--threads", type=int, default=None, help="torch/faiss threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            import faiss

            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, k={K}", flush=True)
    rows = [row for text in args.configs for row in bench_config(*parse_config(text), args)]
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
