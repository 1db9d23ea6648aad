"""Search backends: maximum-inner-product search over the index's embeddings.

The :data:`BACKENDS` registry (exact numpy, faiss flat, faiss HNSW) and ``auto``'s
choice among them by collection size (:data:`AUTO_TIERS`, :func:`choose_backend`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from herbid.data.dataset_folder import atomic_path
from herbid.errors import InvalidOption

log = logging.getLogger(__name__)

#: From this many vectors on, ``backend="auto"`` picks faiss HNSW (approximate) over an
#: exact scan: at 1M × 1280 an exact single query already takes ~0.35 s on 2 cores and it
#: grows linearly with the collection (see the package docstring).
HNSW_THRESHOLD = 1_000_000


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

        saved = folder / self.file if folder is not None else None
        if saved is not None and saved.is_file():
            self.index = faiss.read_index(str(saved))
            if self.index.ntotal != len(vectors):
                self.index = None
        else:
            self.index = None
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
        import faiss

        with atomic_path(folder / self.file) as tmp:
            faiss.write_index(self.index, str(tmp))


#: Every search backend by name. ``auto`` is resolved by :func:`choose_backend`.
BACKENDS: dict[str, type[SearchBackend]] = {cls.name: cls for cls in (NumpyExact, FaissFlat, FaissHNSW)}
#: ``auto``'s preference from small to large collections: (minimum size, backends to try in order).
AUTO_TIERS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (HNSW_THRESHOLD, ("faiss-hnsw", "numpy")),
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
