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

from herbid.identification.index.backends import (
    AUTO_TIERS,
    BACKENDS,
    HNSW_THRESHOLD,
    FaissFlat,
    FaissHNSW,
    NumpyExact,
    SearchBackend,
    choose_backend,
)
from herbid.identification.index.build import add_to_index, build_index, manifest_rows
from herbid.identification.index.encode import (
    Encoded,
    ImageInput,
    embed_images,
    encode_images,
    encode_rows,
    encode_tensors,
)
from herbid.identification.index.query import similar
from herbid.identification.index.store import (
    EMBEDDINGS,
    INDEX_FORMAT,
    INDEX_JSON,
    KNN_TEMPERATURE,
    METADATA,
    METADATA_COLUMNS,
    UNLABELLED,
    SpecimenIndex,
    SpecimenIndexError,
    index_bundle_path,
    open_index,
    sheet_metadata,
)

__all__ = [
    "AUTO_TIERS",
    "BACKENDS",
    "EMBEDDINGS",
    "HNSW_THRESHOLD",
    "INDEX_FORMAT",
    "INDEX_JSON",
    "KNN_TEMPERATURE",
    "METADATA",
    "METADATA_COLUMNS",
    "UNLABELLED",
    "Encoded",
    "FaissFlat",
    "FaissHNSW",
    "ImageInput",
    "NumpyExact",
    "SearchBackend",
    "SpecimenIndex",
    "SpecimenIndexError",
    "add_to_index",
    "build_index",
    "choose_backend",
    "embed_images",
    "encode_images",
    "encode_rows",
    "encode_tensors",
    "index_bundle_path",
    "manifest_rows",
    "open_index",
    "sheet_metadata",
    "similar",
]
