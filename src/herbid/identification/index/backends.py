"""Search backends: maximum-inner-product search over the index's embeddings.

The :data:`BACKENDS` registry (exact numpy, faiss flat, faiss HNSW, faiss IVF) and
``auto``'s choice among them by collection size (:data:`AUTO_TIERS`, :func:`choose_backend`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from herbid.data.dataset_folder import atomic_path
from herbid.errors import InvalidOption

log = logging.getLogger(__name__)

#: From this many vectors on, ``backend="auto"`` picks faiss IVF (approximate, re-ranked
#: exactly) over an exact scan. At 100k × 1280 on 2 cores (``benchmarks/similar_search_scale.py``)
#: the exact scan takes ~35 ms a query (3× the 10 ms budget) while IVF finds 99.99 % of the
#: exact top 10 in < 1 ms after a ~1 min build; smaller collections stay exact.
IVF_THRESHOLD = 100_000


class SearchBackend(Protocol):
    """Maximum-inner-product search over L2-normalised float32 vectors."""

    name: ClassVar[str]

    def __init__(self, vectors: np.ndarray, folder: Path | None = None) -> None:
        """Index ``vectors``; ``folder`` may hold state saved by :meth:`save` to reuse."""

    @staticmethod
    def available() -> bool:
        """Whether the backend's library is installed here."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row indices), each (n_queries, k), best first."""
        ...

    def save(self, folder: Path) -> None:
        """Store whatever is costly to rebuild from ``embeddings.npy``."""


class NumpyExact:
    """Exact search by BLAS matrix product: no dependency, ~35 ms per query at 100k × 1280.

    Queries are scored in blocks so that memory stays at ``block × N`` floats.
    """

    name: ClassVar[str] = "numpy"
    block: ClassVar[int] = 256

    def __init__(self, vectors: np.ndarray, folder: Path | None = None) -> None:
        self.vectors = vectors

    @staticmethod
    def available() -> bool:
        return True

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [_topk(queries[i:i + self.block] @ self.vectors.T, k) for i in range(0, len(queries), self.block)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def save(self, folder: Path) -> None:
        """Nothing beyond ``embeddings.npy`` to store."""


def _topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` per row, sorted, without sorting the whole row (argpartition)."""
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), (scores.shape[0], scores.shape[1]))
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1).astype(np.int64)


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class FaissFlat:
    """faiss ``IndexFlatIP``: exact. Measured 2–3× slower than numpy's BLAS product with
    faiss-cpu on 2 cores, so only used when asked for (a faiss build with a faster BLAS)."""

    name: ClassVar[str] = "faiss-flat"

    def __init__(self, vectors: np.ndarray, folder: Path | None = None) -> None:
        import faiss

        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    available = staticmethod(_faiss_available)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, rows.astype(np.int64)

    def save(self, folder: Path) -> None:
        """Rebuilt from ``embeddings.npy`` on load (a copy, no training): nothing to store."""


class FaissHNSW:
    """faiss HNSW graph (M=32, efSearch=128): approximate, sub-linear query time.

    Building the graph is costly (minutes per million vectors), so it is saved next to
    the embeddings and reused on load when its size matches.
    """

    name: ClassVar[str] = "faiss-hnsw"
    file: ClassVar[str] = "faiss-hnsw.index"
    m: ClassVar[int] = 32
    ef_construction: ClassVar[int] = 80
    ef_search: ClassVar[int] = 128

    def __init__(self, vectors: np.ndarray, folder: Path | None = None) -> None:
        import faiss

        self.fingerprint = _fingerprint(vectors)
        self.index = _saved_index(folder, self.file, self.fingerprint)
        if self.index is None:
            self.index = faiss.IndexHNSWFlat(vectors.shape[1], self.m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = self.ef_construction
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.index.hnsw.efSearch = self.ef_search

    available = staticmethod(_faiss_available)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, rows.astype(np.int64)

    def save(self, folder: Path) -> None:
        _save_index(self.index, folder, self.file, self.fingerprint)


class FaissIVF:
    """faiss inverted file of 8-bit scalar-quantised codes; the shortlist is re-ranked exactly.

    ``nlist = 4·√n`` lists (k-means), ``nprobe = max(32, nlist / 32)`` of them scanned
    per query (finer lists at larger ``n`` hold less of a neighbourhood each). The codes
    take a quarter of the float32 embeddings (1.3 GB at 1M × 1280) and the re-ranking
    reads the embeddings the index already holds, so unlike IVF-Flat or HNSW-Flat there
    is no second float32 copy. Scores are exact inner products; only recall is approximate.
    Parameters from ``benchmarks/similar_search_scale.py``; the trained index is saved.
    """

    name: ClassVar[str] = "faiss-ivf"
    file: ClassVar[str] = "faiss-ivf.index"
    codes: ClassVar[str] = "SQ8"
    lists_per_sqrt_n: ClassVar[float] = 4.0
    #: lists scanned: one in 32, at least 32. Measured (recall@10, p50): 100k, 32 of 1265
    #: lists: 0.9999, 0.9 ms; 1M, 4000 lists: 32 → 0.941, 64 → 0.958, 128 → 0.973 (7.7 ms)
    probe_share: ClassVar[int] = 32
    nprobe_min: ClassVar[int] = 32
    #: candidates re-ranked per result asked for (at least ``shortlist_min``)
    rerank: ClassVar[int] = 4
    shortlist_min: ClassVar[int] = 64
    #: k-means on ``train_per_list × nlist`` sampled vectors (faiss warns below 39), 10
    #: rounds: faiss' defaults (256 per list, 25 rounds) take an hour at 1M × 1280 on 2 cores
    train_per_list: ClassVar[int] = 40
    train_rounds: ClassVar[int] = 10
    chunk: ClassVar[int] = 50_000

    def __init__(self, vectors: np.ndarray, folder: Path | None = None) -> None:
        self.vectors = vectors
        self.fingerprint = _fingerprint(vectors)
        self.index = _saved_index(folder, self.file, self.fingerprint) or self._build(vectors)
        self.index.nprobe = min(max(self.nprobe_min, self.index.nlist // self.probe_share), self.index.nlist)

    available = staticmethod(_faiss_available)

    @classmethod
    def lists(cls, count: int) -> int:
        """``lists_per_sqrt_n·√count``, capped so that each list trains on ≥ 39 vectors (faiss' minimum)."""
        return max(1, min(round(cls.lists_per_sqrt_n * count ** 0.5), count // 39))

    def _build(self, vectors: np.ndarray) -> object:
        import faiss

        from herbid.progress import progress_bar

        nlist = self.lists(len(vectors))
        index = faiss.index_factory(vectors.shape[1], f"IVF{nlist},{self.codes}", faiss.METRIC_INNER_PRODUCT)
        index.cp.niter, index.cp.spherical, index.cp.seed = self.train_rounds, True, 0
        sample = np.random.default_rng(0).choice(len(vectors), min(len(vectors), self.train_per_list * nlist),
                                                 replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
        with progress_bar("index: filling faiss IVF lists", len(vectors), enabled=len(vectors) >= 200_000) as advance:
            for start in range(0, len(vectors), self.chunk):
                block = np.ascontiguousarray(vectors[start:start + self.chunk], dtype=np.float32)
                index.add(block)
                advance(len(block))
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        fetch = min(max(k * self.rerank, self.shortlist_min), len(self.vectors))
        rows = self.index.search(queries, fetch)[1]
        return _rerank(queries, self.vectors, rows, min(k, fetch))

    def save(self, folder: Path) -> None:
        _save_index(self.index, folder, self.file, self.fingerprint)


def _fingerprint(vectors: np.ndarray) -> str:
    """sha256 of the shape and of ≤ 4096 evenly spaced rows: enough to tell a saved index
    built from other embeddings of the same count (a re-encoded collection) without
    hashing gigabytes."""
    rows = np.unique(np.linspace(0, max(len(vectors) - 1, 0), num=min(len(vectors), 4096)).astype(np.int64))
    digest = hashlib.sha256(repr(tuple(vectors.shape)).encode())
    digest.update(np.ascontiguousarray(vectors[rows], dtype=np.float32).tobytes())
    return digest.hexdigest()


def _saved_index(folder: Path | None, file: str, fingerprint: str) -> object | None:
    """The faiss index saved in ``folder`` if it was built from these embeddings (else stale)."""
    import faiss

    if folder is None or not (folder / file).is_file():
        return None
    stamp = folder / f"{file}.sha256"
    if not stamp.is_file() or stamp.read_text(encoding="utf-8").strip() != fingerprint:
        return None
    return faiss.read_index(str(folder / file))


def _save_index(index: object, folder: Path, file: str, fingerprint: str) -> None:
    import faiss

    with atomic_path(folder / file) as tmp:
        faiss.write_index(index, str(tmp))
    (folder / f"{file}.sha256").write_text(fingerprint + "\n", encoding="utf-8")


def _rerank(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` of each query's candidate ``rows`` (−1: none), in blocks of ≤ 64 MB."""
    block = max(1, (1 << 24) // max(1, rows.shape[1] * vectors.shape[1]))
    parts = []
    for i in range(0, len(queries), block):
        found = rows[i:i + block]
        scores = (vectors[np.clip(found, 0, None)] @ queries[i:i + block, :, None])[..., 0]
        top, local = _topk(np.where(found >= 0, scores, -np.inf), k)
        parts.append((top, np.where(np.isfinite(top), np.take_along_axis(found, local, axis=1), -1)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(np.int64)


#: Every search backend by name. ``auto`` is resolved by :func:`choose_backend`.
BACKENDS: dict[str, type[SearchBackend]] = {cls.name: cls for cls in (NumpyExact, FaissFlat, FaissHNSW, FaissIVF)}
#: ``auto``'s preference from small to large collections: (minimum size, backends to try in order).
AUTO_TIERS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (IVF_THRESHOLD, ("faiss-ivf", "numpy")),
    (0, ("numpy",)),
)


def choose_backend(count: int, requested: str = "auto") -> str:
    """The backend to use for ``count`` vectors: ``requested`` if available, else ``auto``'s pick.

    A named backend that is not installed (faiss missing on the machine that loads an
    index built elsewhere) falls back to exact numpy search, with a warning, rather than
    failing: the answer is the same (or better), only slower.
    """
    if requested != "auto":
        if requested not in BACKENDS:
            raise InvalidOption(f"unknown search backend {requested!r}; choose auto, {', '.join(BACKENDS)}")
        if BACKENDS[requested].available():
            return requested
        log.warning("search backend %s is not installed here; using exact numpy search", requested)
        return NumpyExact.name
    for minimum, names in AUTO_TIERS:
        if count >= minimum:
            return next(name for name in names if BACKENDS[name].available())
    return NumpyExact.name
