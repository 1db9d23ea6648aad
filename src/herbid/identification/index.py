"""Similar-specimen search: an index of sheet embeddings across collections.

The paper's end goal is "a tool that, based on herbarium sheet images across multiple
collections world wide, finds the plant specimens more similar to a candidate". A
classifier answers "which species?"; a curator revising a name also wants *which
sheets* look like this one, with their catalogue numbers and institutions, so that the
originals can be fetched and compared. That is what the index is for.

Layout of an index folder (``INDEX/``)::

    embeddings.npy      float32 (N, D), L2-normalised: inner product = cosine similarity
    metadata.parquet    one row per embedding, same order (see METADATA_COLUMNS)
    index.json          bundle path, model id, dim, count, backend, datasets, version
    faiss-hnsw.index    only for the approximate backend (its graph is costly to rebuild)

``index.json`` is written last, so a folder with one is complete.

The embeddings are the bundle's ``model.embed`` of the *stored* 256×256 copy with the
bundle's evaluation transform — the very pixels the model was trained and tested on. A
new image is normalised the same way (:func:`herbid.inference.pixels.upload_tensor`), so querying with a sheet's
original file finds that sheet at similarity ≈ 1.0.

Search backends live in :data:`BACKENDS`, a registry: exact inner product in numpy
(BLAS matrix product), faiss ``IndexFlatIP`` (exact) and faiss HNSW (approximate,
sub-linear). ``auto`` (:data:`AUTO_TIERS`) uses exact numpy search below
:data:`HNSW_THRESHOLD` vectors and HNSW from there on, when faiss is installed. Measured
with ``benchmarks/similar_latency.py`` on 2 CPU cores: numpy answers one query over
100k × 1280 in ~35 ms (batches of 32: ~8 ms per query), scaling linearly (~0.26 s p50,
~0.38 s p95 at 1M × 1280, where each query reads 5 GB); faiss-cpu's flat index was
1.2–3× *slower* than numpy there, so ``auto`` does not pick it (name it explicitly where
a faiss build with a faster BLAS makes it worthwhile). HNSW answers in ~3 ms whatever the
size, but its graph takes ~35 s per 20k vectors of 1280-d to build on 2 cores and it is
approximate, so below a million sheets exactness wins.

Because the index stores *labelled* neighbours, a k-NN vote over it is a classifier that
needs no retraining (:meth:`SpecimenIndex.knn_probabilities`): a species with a handful
of sheets, or added to the index after the model was trained, can still be predicted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

import herbid
from herbid.data.folder import atomic_path, load_manifest, read_json, write_json
from herbid.data.splits import text_column
from herbid.errors import InvalidOption, UserError
from herbid.inference.bundle import Bundle, as_bundle
from herbid.inference.device import resolve_device
from herbid.inference.forward import forward
from herbid.inference.pixels import eval_transform, upload_tensor
from herbid.inference.sheets import ManifestDataset, select_rows
from herbid.progress import progress_bar

log = logging.getLogger(__name__)

INDEX_FORMAT = "herbid-index/1"
EMBEDDINGS = "embeddings.npy"
METADATA = "metadata.parquet"
INDEX_JSON = "index.json"

#: Per-sheet metadata kept next to each embedding: enough for a curator to find the
#: original specimen (catalogue number, institution, source file or URL) and for the web
#: app to show it (absolute image paths).
METADATA_COLUMNS: tuple[str, ...] = (
    "image_id", "catalogNumber", "institutionCode", "recordedBy", "scientificName", "genus", "family",
    "image_path", "large_image_path", "source_path", "dataset", "split",
)

#: From this many vectors on, ``backend="auto"`` picks faiss HNSW (approximate) over an
#: exact scan: at 1M × 1280 an exact single query already takes ~0.35 s on 2 cores and it
#: grows linearly with the collection (see the module docstring).
HNSW_THRESHOLD = 1_000_000
#: Kernel width of the k-NN vote: weight = exp((similarity − 1) / T). With T = 0.07 (as in
#: DINO's k-NN evaluation) a neighbour at 0.95 outweighs one at 0.85 by ~4×, so a few
#: close sheets beat many mediocre ones, while still letting several neighbours vote.
KNN_TEMPERATURE = 0.07

ImageInput = bytes | str | Path
#: Label code of a search result that does not vote (no result, or an unnamed sheet).
UNLABELLED = -2


class SpecimenIndexError(UserError, ValueError):
    """A path that is not an index, or an index that does not fit the model asked to use.

    A ValueError, so that the CLI reports it as one line rather than a traceback."""


# ------------------------------------------------------------------------- backends


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


# --------------------------------------------------------------------------- inputs


def _read_image(item: ImageInput) -> bytes:
    return item if isinstance(item, bytes) else Path(item).read_bytes()


@dataclass
class Encoded:
    """What one forward pass gives per sheet: the search embedding and the class logits."""

    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    logits: np.ndarray  # (N, C) float32, uncalibrated


def encode_tensors(bundle: Bundle, batches: Iterable[torch.Tensor] | DataLoader, device: torch.device,
                   advance: Callable[[int], None] | None = None) -> Encoded:
    """Embeddings and logits (over the bundle's TTA views) from the one forward pass."""
    out = forward(bundle.model, batches, device, tta=bundle.preprocessing.tta, pooled=True, advance=advance)
    if not len(out.logits):
        raise InvalidOption("no images to encode")
    return Encoded(out.embeddings, out.logits.numpy())


def encode_rows(bundle: Bundle, dataset_dir: str | Path, frame: pd.DataFrame, *, batch_size: int = 64,
                device: torch.device | str = "auto", progress: bool = False,
                description: str = "embedding sheets") -> Encoded:
    """Embeddings and logits of manifest rows (their stored copies, evaluation transform)."""
    device = resolve_device(device) if isinstance(device, str) else device
    bundle.model.to(device)
    images = ManifestDataset(dataset_dir, frame, None, eval_transform(bundle.preprocessing))
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=0)
    with progress_bar(description, len(images), enabled=progress) as advance:
        return encode_tensors(bundle, loader, device, advance)


def encode_images(bundle: Bundle, images: Sequence[ImageInput], *, batch_size: int = 32,
                  device: torch.device | str = "auto") -> Encoded:
    """Embeddings and logits of uploaded images (bytes or paths), normalised as a build would."""
    device = resolve_device(device) if isinstance(device, str) else device
    bundle.model.to(device)
    tensors = [upload_tensor(_read_image(item), bundle.preprocessing) for item in images]
    batches = [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]
    return encode_tensors(bundle, batches, device)


def embed_images(bundle: Bundle, images: Sequence[ImageInput], *, batch_size: int = 32,
                 device: torch.device | str = "auto") -> np.ndarray:
    """L2-normalised float32 embeddings (N, D) of uploaded images, ready for :meth:`SpecimenIndex.search`."""
    return encode_images(bundle, images, batch_size=batch_size, device=device).embeddings


# ------------------------------------------------------------------------- metadata


def sheet_metadata(dataset_dir: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The index's metadata rows for manifest rows: absolute image paths, the dataset path."""
    dataset = Path(dataset_dir).resolve()
    meta = pd.DataFrame({column: text_column(frame, column).tolist()
                         for column in METADATA_COLUMNS if column not in {"dataset"}})
    for column in ("image_path", "large_image_path"):
        meta[column] = [str(dataset / p) if p else None for p in meta[column]]
    meta["dataset"] = str(dataset)
    return meta[list(METADATA_COLUMNS)].astype(object)


def _clean(value: Any) -> Any:
    """JSON-friendly cell: NaN/NA → None, numpy scalars → Python."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------------- index


@dataclass
class SpecimenIndex:
    """Embeddings + metadata + a search backend; see the module docstring for the layout."""

    embeddings: np.ndarray
    metadata: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    backend_name: str = "auto"
    path: Path | None = None

    def __post_init__(self) -> None:
        if len(self.embeddings) != len(self.metadata):
            raise SpecimenIndexError(f"{len(self.embeddings)} embeddings but {len(self.metadata)} metadata rows")
        self.metadata = self.metadata.reset_index(drop=True)
        self.backend_name = choose_backend(len(self.embeddings), self.backend_name)
        self.backend: SearchBackend = BACKENDS[self.backend_name](self.embeddings, self.path)
        self.labels = np.asarray(text_column(self.metadata, "scientificName").tolist(), dtype=object)
        self.image_ids = np.asarray(self.metadata["image_id"].astype(str).tolist(), dtype=object)

    # --- loading ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, *, backend: str | None = None) -> "SpecimenIndex":
        """Open ``INDEX/`` with the backend it was built for (or ``backend``)."""
        folder = Path(path)
        info_path = folder / INDEX_JSON
        if not info_path.is_file():
            raise SpecimenIndexError(f"{folder}: not a specimen index (no {INDEX_JSON}); "
                                     "build one with `herbid index build`")
        info = read_json(info_path)
        if info.get("format") != INDEX_FORMAT:
            raise SpecimenIndexError(f"{folder}: unsupported index format {info.get('format')!r}")
        embeddings = np.load(folder / EMBEDDINGS)
        metadata = pd.read_parquet(folder / METADATA)
        return cls(embeddings, metadata, info, backend or info.get("backend", "auto"), folder)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.embeddings)

    def species(self) -> list[str]:
        """The labelled species in the index, sorted."""
        return sorted({label for label in self.labels if label})

    def check_compatible(self, bundle: Bundle) -> None:
        """Embeddings of different models live in different spaces: refuse to mix them."""
        model_id = self.info.get("model_id")
        if model_id and model_id != bundle.model_id:
            raise SpecimenIndexError(f"index {self.path} was built with model {model_id}, not {bundle.model_id}; "
                              "rebuild it with `herbid index build`")
        if bundle.model.num_features != self.dim:
            raise SpecimenIndexError(f"index {self.path} holds {self.dim}-d embeddings; the model gives "
                              f"{bundle.model.num_features}-d")

    # --- search ----------------------------------------------------------------------

    def search(self, query_embeddings: np.ndarray, k: int, *,
               exclude: Sequence[Collection[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities and row numbers of the ``k`` nearest sheets per query.

        ``exclude[i]`` lists image ids never to return for query ``i`` (the query sheet
        itself when it is in the index). Missing results (k above the index size) have
        row −1 and score −inf.
        """
        queries = _as_queries(query_embeddings, self.dim)
        n_queries = len(queries)
        if len(self) == 0 or k <= 0:
            return np.full((n_queries, max(k, 0)), -np.inf, np.float32), np.full((n_queries, max(k, 0)), -1, np.int64)
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        fetch = min(len(self), k + extra)
        scores, rows = self.backend.search(queries, fetch)
        if exclude is not None:
            scores, rows = self._drop_excluded(scores, rows, exclude)
        return _pad(scores[:, :k], rows[:, :k], k)

    def _drop_excluded(self, scores: np.ndarray, rows: np.ndarray,
                       exclude: Sequence[Collection[str]]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.where(rows >= 0, self.image_ids[np.clip(rows, 0, None)], None)
        sets = [set(excluded) for excluded in exclude]
        keep = np.array([[row_id not in skip for row_id in row_ids] for row_ids, skip in zip(ids, sets)],
                        dtype=bool).reshape(rows.shape)
        order = np.argsort(~keep, axis=1, kind="stable")  # kept results first, order preserved
        scores = np.where(keep, scores, -np.inf)
        rows = np.where(keep, rows, -1)
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)

    def search_species(self, query_embeddings: np.ndarray, species: str, k: int, *,
                       exclude: Sequence[Collection[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact search among the sheets of one species (for evidence: the closest sheets
        *of the suggested name*, however far down the overall ranking they are).

        ``exclude[i]`` lists image ids never to return for query ``i``.
        """
        queries = _as_queries(query_embeddings, self.dim)
        members = np.flatnonzero(self.labels == species)
        scores = queries @ self.embeddings[members].T
        if exclude is not None:
            member_ids = self.image_ids[members]
            for i, skip in enumerate(exclude):
                if skip:
                    scores[i, np.isin(member_ids, list(skip))] = -np.inf
        if len(members) == 0:
            return _pad(scores, np.empty(scores.shape, np.int64), k)
        top, local = _topk(scores, min(k, len(members)))
        rows = np.where(np.isfinite(top), members[local], -1)
        return _pad(top, rows, k)

    def rows(self, rows: Sequence[int], scores: Sequence[float]) -> list[dict[str, Any]]:
        """Metadata dicts (with ``similarity`` and ``rank``) for result rows; −1 rows skipped."""
        out = []
        for row, score in zip(rows, scores):
            if row < 0:
                continue
            record = {column: _clean(value) for column, value in self.metadata.iloc[int(row)].items()}
            out.append({"rank": len(out) + 1, "similarity": float(score), **record, "index_row": int(row)})
        return out

    def neighbours(self, query_embeddings: np.ndarray, k: int = 10, *,
                   exclude: Sequence[Collection[str]] | None = None) -> list[list[dict[str, Any]]]:
        """Per query, the ``k`` nearest sheets as dicts: metadata + ``similarity`` (cosine) + ``rank``."""
        scores, rows = self.search(query_embeddings, k, exclude=exclude)
        return [self.rows(r, s) for r, s in zip(rows, scores)]

    def knn_probabilities(self, query_embeddings: np.ndarray, k: int = 10, species: Sequence[str] | None = None, *,
                          temperature: float = KNN_TEMPERATURE,
                          exclude: Sequence[Collection[str]] | None = None) -> tuple[list[str], np.ndarray]:
        """A similarity-weighted k-NN vote: (species, probabilities (n_queries, len(species))).

        Each of the ``k`` nearest labelled sheets votes for its species with weight
        ``exp((similarity − 1) / temperature)``; the votes are normalised per query.
        Unlike the bundle's classifier this needs no training: species present in the
        index but unknown to the model (added later, or with too few sheets to train
        on) get votes like any other.

        ``species`` fixes the columns (default: every species in the index); votes for
        species outside that list stay in the denominator, so a row's probabilities then
        sum to less than one by the mass given to the others. Unlabelled sheets do not vote.
        """
        names = list(species) if species is not None else self.species()
        scores, rows = self.search(query_embeddings, k, exclude=exclude)
        codes = self._label_codes(rows, names)
        weights = np.where(codes != UNLABELLED, np.exp((scores - 1.0) / temperature), 0.0)
        probs = np.zeros((len(rows), len(names) + 1))  # last column: species outside ``names``
        query = np.repeat(np.arange(len(rows)), rows.shape[1])
        np.add.at(probs, (query, np.where(codes >= 0, codes, len(names)).ravel()), weights.ravel())
        total = probs.sum(axis=1, keepdims=True)
        probs = np.divide(probs, total, out=np.zeros_like(probs), where=total > 0)
        return names, probs[:, :len(names)].astype(np.float32)

    def _label_codes(self, rows: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """Column of each result row's species in ``names``: −1 for another species,
        ``UNLABELLED`` for no result or a sheet without a name (no vote)."""
        column = {name: i for i, name in enumerate(names)}
        codes = np.full(rows.shape, UNLABELLED, dtype=np.int64)
        for position, row in np.ndenumerate(rows):
            label = self.labels[row] if row >= 0 else None
            if label:
                codes[position] = column.get(label, -1)
        return codes

    def nearest_similarity(self, query_embeddings: np.ndarray, k: int = 1, *,
                           exclude: Sequence[Collection[str]] | None = None) -> np.ndarray:
        """Mean cosine similarity of each query to its ``k`` nearest indexed sheets
        (fewer if the index is smaller; −inf if it has none)."""
        scores = self.search(query_embeddings, k, exclude=exclude)[0]
        found = np.isfinite(scores)
        total = np.where(found, scores, 0.0).sum(axis=1)
        count = found.sum(axis=1)
        return np.divide(total, count, out=np.full(len(scores), -np.inf), where=count > 0)

    def reference_similarities(self, k: int = 1, sample: int = 2000, seed: int = 0) -> np.ndarray:
        """Leave-one-out :meth:`nearest_similarity` of (a sample of) the indexed sheets.

        The yardstick for "unusually far from everything": how close an ordinary indexed
        sheet is to its nearest other sheets.
        """
        if len(self) < 2:
            return np.empty(0, np.float32)
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(self), size=min(sample, len(self)), replace=False))
        own = [{self.image_ids[r]} for r in rows]
        similarities = self.nearest_similarity(self.embeddings[rows], k, exclude=own)
        return similarities[np.isfinite(similarities)]

    # --- writing ---------------------------------------------------------------------

    def save(self, folder: str | Path, info: dict[str, Any]) -> Path:
        """Write embeddings, metadata, the backend's own file, then ``index.json`` last."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # an old index.json over new embeddings would describe the wrong index: drop it
        # first (it is written last), and any other backend's stale saved state with it
        (folder / INDEX_JSON).unlink(missing_ok=True)
        for backend in BACKENDS.values():
            stale = getattr(backend, "file", None)
            if stale and backend.name != self.backend_name:
                (folder / stale).unlink(missing_ok=True)
        with atomic_path(folder / EMBEDDINGS) as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(self.embeddings, dtype=np.float32))
        with atomic_path(folder / METADATA) as tmp:
            self.metadata.to_parquet(tmp, index=False)
        self.backend.save(folder)
        self.info = {**info, "backend": self.backend_name, "count": len(self), "embedding_dim": self.dim}
        write_json(folder / INDEX_JSON, self.info)
        self.path = folder
        return folder


def _as_queries(query_embeddings: np.ndarray | torch.Tensor, dim: int) -> np.ndarray:
    queries = query_embeddings.detach().cpu().numpy() if isinstance(query_embeddings, torch.Tensor) \
        else np.asarray(query_embeddings)
    queries = np.ascontiguousarray(queries.reshape(-1, queries.shape[-1]), dtype=np.float32)
    if queries.shape[1] != dim:
        raise InvalidOption(f"queries are {queries.shape[1]}-d, the index holds {dim}-d embeddings")
    return queries


def _pad(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Results padded to ``k`` columns with (−inf, −1)."""
    missing = k - scores.shape[1]
    if missing <= 0:
        return scores.astype(np.float32), rows.astype(np.int64)
    return (np.pad(scores.astype(np.float32), ((0, 0), (0, missing)), constant_values=-np.inf),
            np.pad(rows.astype(np.int64), ((0, 0), (0, missing)), constant_values=-1))


# --------------------------------------------------------------------- build / add


def manifest_rows(dataset_dir: str | Path, split: str | None) -> pd.DataFrame:
    """The manifest rows of one split (``None``: all); an error when there are none."""
    frame = load_manifest(dataset_dir)
    if split is not None:
        frame = select_rows(frame, split=split)
    if frame.empty:
        raise InvalidOption(f"{dataset_dir}: no rows{f' in split {split!r}' if split else ''} to index")
    return frame


def _index_info(bundle: Bundle, datasets: list[dict[str, Any]], created: str | None = None) -> dict[str, Any]:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "format": INDEX_FORMAT,
        "bundle": str(bundle.path.resolve()) if bundle.path else None,
        "model_id": bundle.model_id,
        "arch": bundle.arch,
        "metric": "cosine",
        "created": created or now,
        "updated": now,
        "herbid_version": herbid.__version__,
        "datasets": datasets,
    }


def build_index(bundle: str | Path | Bundle, dataset_dir: str | Path, out_dir: str | Path, *,
                split: str | None = None, batch_size: int = 64, device: str = "auto", progress: bool = True,
                backend: str = "auto") -> Path:
    """Embed every sheet of ``dataset_dir`` (or one split) and write ``out_dir`` as an index.

    ``split=None`` indexes all rows: for similar-specimen search the test sheets are
    specimens like any other. Index only ``train`` when the index will be used to
    *evaluate* the k-NN classifier on ``test``. Returns ``out_dir``.
    """
    torch_device = resolve_device(device)
    loaded = as_bundle(bundle, torch_device)
    frame = manifest_rows(dataset_dir, split)
    encoded = encode_rows(loaded, dataset_dir, frame, batch_size=batch_size, device=torch_device,
                          progress=progress, description="index: embedding sheets")
    index = SpecimenIndex(encoded.embeddings, sheet_metadata(dataset_dir, frame), backend_name=backend)
    datasets = [{"path": str(Path(dataset_dir).resolve()), "split": split, "count": len(frame)}]
    return index.save(out_dir, {**_index_info(loaded, datasets), "backend_requested": backend})


def add_to_index(index_dir: str | Path, dataset_dir: str | Path, *, bundle: str | Path | Bundle | None = None,
                 split: str | None = None, species: Collection[str] | None = None, batch_size: int = 64,
                 device: str = "auto", progress: bool = True) -> Path:
    """Add a dataset's sheets (optionally one split, or some species) to an existing index.

    Sheets already indexed (same image id) are skipped, so adding twice changes nothing.
    The bundle defaults to the one recorded in ``index.json``; another model is refused,
    since its embeddings would not be comparable. New species need no retraining: the
    k-NN vote picks them up at once.
    """
    torch_device = resolve_device(device)
    index = SpecimenIndex.load(index_dir)
    loaded = as_bundle(bundle if bundle is not None else index_bundle_path(index), torch_device)
    index.check_compatible(loaded)
    frame = manifest_rows(dataset_dir, split)
    if species is not None:
        frame = frame[text_column(frame, "scientificName").isin(list(species)).to_numpy()]
    frame = frame[~frame["image_id"].astype(str).isin(set(index.image_ids)).to_numpy()]
    if frame.empty:
        return Path(index_dir)
    encoded = encode_rows(loaded, dataset_dir, frame, batch_size=batch_size, device=torch_device,
                          progress=progress, description="index: embedding new sheets")
    merged = SpecimenIndex(np.concatenate([index.embeddings, encoded.embeddings]),
                           pd.concat([index.metadata, sheet_metadata(dataset_dir, frame)], ignore_index=True),
                           backend_name=index.info.get("backend_requested", "auto"))  # auto: by the new size
    datasets = [*index.info.get("datasets", []),
                {"path": str(Path(dataset_dir).resolve()), "split": split, "count": len(frame),
                 "species": sorted(species) if species is not None else None}]
    info = _index_info(loaded, datasets, created=index.info.get("created"))
    return merged.save(index_dir, {**info, "backend_requested": index.info.get("backend_requested", "auto")})


# --------------------------------------------------------------------- convenience


def index_bundle_path(index: SpecimenIndex) -> Path:
    """The bundle recorded in ``index.json`` (absolute when the index was built)."""
    recorded = index.info.get("bundle")
    if not recorded:
        raise SpecimenIndexError(f"index {index.path} records no bundle; pass one explicitly")
    return Path(recorded)


def open_index(index: str | Path | SpecimenIndex) -> SpecimenIndex:
    return index if isinstance(index, SpecimenIndex) else SpecimenIndex.load(index)


def similar(index: str | Path | SpecimenIndex, images: ImageInput | Sequence[ImageInput], k: int = 10,
            bundle: str | Path | Bundle | None = None, *, device: str = "auto",
            knn_k: int | None = None) -> list[dict[str, Any]]:
    """The ``k`` indexed sheets most similar to each image, one dict per image.

    Each dict: ``query`` (the path, or ``"image N"`` for bytes), ``neighbours`` (rank,
    similarity, and the sheet's metadata incl. ``source_path`` and absolute
    ``image_path``), and ``knn`` (the k-NN vote over ``knn_k`` neighbours, default ``k``:
    ``[{"species", "probability"}]``, best first, zero votes left out).

    For repeated queries (a web app) pass an already loaded :class:`SpecimenIndex` and
    :class:`Bundle`; otherwise both are loaded here (the bundle recorded in index.json).
    """
    items = [images] if isinstance(images, (bytes, str, Path)) else list(images)
    loaded_index = open_index(index)
    torch_device = resolve_device(device)
    loaded = as_bundle(bundle if bundle is not None else index_bundle_path(loaded_index), torch_device)
    loaded_index.check_compatible(loaded)
    queries = embed_images(loaded, items, device=torch_device)
    neighbours = loaded_index.neighbours(queries, k)
    names, probs = loaded_index.knn_probabilities(queries, knn_k or k)
    return [{"query": str(item) if not isinstance(item, bytes) else f"image {i + 1}",
             "neighbours": found, "knn": _votes(names, row)}
            for i, (item, found, row) in enumerate(zip(items, neighbours, probs))]


def _votes(names: list[str], probs: np.ndarray, top: int = 5) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:top]
    return [{"species": names[i], "probability": float(probs[i])} for i in order if probs[i] > 0]
