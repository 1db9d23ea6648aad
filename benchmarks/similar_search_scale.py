"""Similar-specimen search at scale: exact numpy against approximate faiss indexes.

Which index answers one query in < 10 ms at 1M × 1280 while finding ≥ 95 % of the exact
top 10? The embeddings are generated like real ones, not as uniform noise (which has no
neighbours worth finding): species clusters (log-normal sizes, grouped in genera) in a
random 96-d subspace of the 1280-d space, plus isotropic noise and a shared offset (real
embeddings are not centred), L2-normalised. Top-1 cosine ≈ 0.56, a random pair ≈ 0.14,
~87 % of the exact top 10 share the query's species. Queries are fresh draws from the
same species, not copies of indexed vectors.

    python benchmarks/similar_search_scale.py                # 100k × 1280, every backend
    python benchmarks/similar_search_scale.py --n 1000000 --backends numpy faiss-ivf

Per backend: build seconds, peak RSS while building and searching, recall@10 against
exact search over all queries, p50/p95 of single-query milliseconds. ``faiss-ivf``
(herbid's backend, IVF + SQ8 codes + exact re-ranking) also gets an ``nprobe`` sweep on
the same built index. Comparisons, not in herbid: ``ivf-flat`` (skipped above
``COPY_LIMIT`` vectors: it holds a second float32 copy, 5.1 GB at 1M), ``ivf-pq``
(64-byte PQ codes, larger re-ranked shortlist) and ``faiss-hnsw`` (built only up to
``HNSW_LIMIT``; its build time is extrapolated to 1M as n·log n).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from herbid.identification.index import FaissHNSW, FaissIVF, NumpyExact

K = 10
COPY_LIMIT = 200_000
HNSW_LIMIT = 100_000
NPROBES = (4, 8, 16, 32, 64, 128)
#: ivf-pq is left out by default: training 64 sub-quantisers took 190 s at 20k × 1280
DEFAULT_BACKENDS = ("numpy", "faiss-ivf", "ivf-flat", "faiss-hnsw")


class IVFFlat(FaissIVF):
    codes: ClassVar[str] = "Flat"
    rerank: ClassVar[int] = 1  # the scores are already exact
    shortlist_min: ClassVar[int] = 0


class IVFPQ(FaissIVF):
    codes: ClassVar[str] = "PQ64"
    rerank: ClassVar[int] = 20  # PQ scores are coarse: re-rank a longer shortlist
    shortlist_min: ClassVar[int] = 200


BUILDERS: dict[str, Callable[[np.ndarray], Any]] = {
    "numpy": NumpyExact, "faiss-ivf": FaissIVF, "ivf-flat": IVFFlat, "ivf-pq": IVFPQ, "faiss-hnsw": FaissHNSW,
}


def species_embeddings(n: int, dim: int, seed: int, stream: int, chunk: int = 50_000) -> np.ndarray:
    """``n`` unit vectors from the species mixture of ``seed``; ``stream`` picks the draws
    (index and queries use different streams of the same species). Generated in chunks."""
    rank, size = min(96, dim // 2), max(n, 100_000)  # the mixture depends on the collection size, not the stream
    rng = np.random.default_rng([seed, 0])
    species = int(np.clip(size // 50, 200, 20_000))
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T.astype(np.float32)
    genus = rng.standard_normal((max(species // 10, 20), rank)).astype(np.float32)
    centres = genus[rng.integers(len(genus), size=species)] + 0.7 * rng.standard_normal((species, rank), np.float32)
    weights = rng.lognormal(0.0, 1.0, species)
    offset = rng.standard_normal(dim).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        draw = np.random.default_rng([seed, stream, start])
        rows = min(chunk, n - start)
        latent = centres[draw.choice(species, size=rows, p=weights / weights.sum())]
        block = (latent + 1.2 * draw.standard_normal((rows, rank), np.float32)) @ basis
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        block += (0.5 / math.sqrt(dim)) * draw.standard_normal((rows, dim), np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        block += 0.4 * offset / np.linalg.norm(offset)
        out[start:start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Peak resident memory (GB) of this process while the block runs, sampled every 5 ms."""
    out = {"start_gb": _rss() / 1e9, "peak_gb": _rss() / 1e9}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            out["peak_gb"] = max(out["peak_gb"], _rss() / 1e9)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak_gb"] = max(out["peak_gb"], _rss() / 1e9)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found, exact)]))


def single_query_ms(backend: Any, queries: np.ndarray, count: int) -> tuple[float, float]:
    """p50/p95 milliseconds of ``count`` one-query searches (after one warm-up)."""
    backend.search(queries[:1], K)
    samples = []
    for query in queries[:count]:
        start = time.perf_counter()
        backend.search(query[None], K)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[round(0.95 * (len(samples) - 1))]


def _score(backend: Any, queries: np.ndarray, exact: np.ndarray, singles: int) -> dict[str, float]:
    p50, p95 = single_query_ms(backend, queries, singles)
    rows = np.concatenate([backend.search(queries[i:i + 64], K)[1] for i in range(0, len(queries), 64)])
    return {"recall_at_10": round(recall(rows, exact), 4), "p50_ms": round(p50, 3), "p95_ms": round(p95, 3)}


def measure(n: int, dim: int = 1280, seed: int = 0, queries: int = 1000,
            backends: tuple[str, ...] = DEFAULT_BACKENDS, singles: int = 200) -> dict[str, Any]:
    """Build each backend over ``n`` generated vectors and score it against exact search."""
    start = time.perf_counter()
    vectors = species_embeddings(n, dim, seed, stream=1)
    asked = species_embeddings(queries, dim, seed, stream=2)
    result: dict[str, Any] = {"n": n, "dim": dim, "queries": queries, "cores": os.cpu_count(),
                              "generate_s": round(time.perf_counter() - start, 2), "backends": {}}
    start = time.perf_counter()
    exact_backend = NumpyExact(vectors)
    exact = np.concatenate([exact_backend.search(asked[i:i + 32], K)[1] for i in range(0, queries, 32)])
    result["ground_truth_s"] = round(time.perf_counter() - start, 2)
    for name in backends:
        if (name == "ivf-flat" and n > COPY_LIMIT) or (name == "faiss-hnsw" and n > HNSW_LIMIT):
            result["backends"][name] = {"skipped": f"above {COPY_LIMIT if name == 'ivf-flat' else HNSW_LIMIT} vectors"}
            continue
        gc.collect()
        with peak_rss() as memory:
            start = time.perf_counter()
            backend = BUILDERS[name](vectors)
            row: dict[str, Any] = {"build_s": round(time.perf_counter() - start, 2)}
            count = singles if name != "numpy" else max(20, min(singles, 20_000_000 // n))
            row.update(_score(backend, asked, exact, count))
            if name.startswith(("faiss-ivf", "ivf")):
                row.update(nlist=backend.index.nlist, nprobe=backend.index.nprobe, codes=backend.codes)
            if name == "faiss-ivf":
                row["nprobe_sweep"] = _sweep(backend, asked, exact, min(singles, 100))
            if name == "faiss-hnsw":
                row["build_1m_extrapolated_s"] = round(row["build_s"] * 1e6 / n * math.log(1e6) / math.log(n))
        row.update(peak_rss_gb=round(memory["peak_gb"], 2), extra_rss_gb=round(memory["peak_gb"] - memory["start_gb"], 2))
        result["backends"][name] = row
        print(name, json.dumps(row), flush=True)
        del backend
    result["max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    return result


def _sweep(backend: FaissIVF, queries: np.ndarray, exact: np.ndarray, singles: int) -> dict[int, dict[str, float]]:
    chosen, out = backend.index.nprobe, {}
    for nprobe in NPROBES:
        if nprobe <= backend.index.nlist:
            backend.index.nprobe = nprobe
            out[nprobe] = _score(backend, queries, exact, singles)
    backend.index.nprobe = chosen
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="indexed vectors (full size: 1000000)")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS), choices=list(BUILDERS))
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    result = measure(args.n, args.dim, args.seed, args.queries, tuple(args.backends))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
