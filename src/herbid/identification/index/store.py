"""The specimen index and its on-disk layout: embeddings + metadata + a search backend.

:class:`SpecimenIndex` loads, saves and searches an ``INDEX/`` folder (layout in the
package docstring), votes k-NN probabilities over its labelled sheets, and refuses
embeddings of another model (:meth:`SpecimenIndex.check_compatible`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from herbid.data.dataset_folder import atomic_path, json_ready, read_json, write_json
from herbid.data.splits import text_column
from herbid.errors import InvalidOption, UserError
from herbid.identification.index.backends import BACKENDS, SearchBackend, _topk, choose_backend
from herbid.inference.bundle import Bundle

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

#: Kernel width of the k-NN vote: weight = exp((similarity − 1) / T). With T = 0.07 (as in
#: DINO's k-NN evaluation) a neighbour at 0.95 outweighs one at 0.85 by ~4×, so a few
#: close sheets beat many mediocre ones, while still letting several neighbours vote.
KNN_TEMPERATURE = 0.07

#: Label code of a search result that does not vote (no result, or an unnamed sheet).
UNLABELLED = -2


class SpecimenIndexError(UserError, ValueError):
    """A path that is not an index, or an index that does not fit the model asked to use.

    A ValueError, so that the CLI reports it as one line rather than a traceback."""


def sheet_metadata(dataset_dir: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The index's metadata rows for manifest rows: absolute image paths, the dataset path."""
    dataset = Path(dataset_dir).resolve()
    meta = pd.DataFrame({column: text_column(frame, column).tolist()
                         for column in METADATA_COLUMNS if column not in {"dataset"}})
    for column in ("image_path", "large_image_path"):
        meta[column] = [str(dataset / p) if p else None for p in meta[column]]
    meta["dataset"] = str(dataset)
    return meta[list(METADATA_COLUMNS)].astype(object)


# ---------------------------------------------------------------------------- index


@dataclass
class SpecimenIndex:
    """Embeddings + metadata + a search backend; see the package docstring for the layout."""

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
            record = {column: json_ready(value) for column, value in self.metadata.iloc[int(row)].items()}
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
                (folder / f"{stale}.sha256").unlink(missing_ok=True)
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


def index_bundle_path(index: SpecimenIndex) -> Path:
    """The bundle recorded in ``index.json`` (absolute when the index was built)."""
    recorded = index.info.get("bundle")
    if not recorded:
        raise SpecimenIndexError(f"index {index.path} records no bundle; pass one explicitly")
    return Path(recorded)


def open_index(index: str | Path | SpecimenIndex) -> SpecimenIndex:
    return index if isinstance(index, SpecimenIndex) else SpecimenIndex.load(index)
