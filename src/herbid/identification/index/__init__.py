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
    faiss-ivf.index     only for the faiss IVF backend (trained lists + 8-bit codes)
    faiss-hnsw.index    only for the HNSW backend (its graph is costly to rebuild)

``index.json`` is written last, so a folder with one is complete.

The embeddings are the bundle's ``model.embed`` of the *stored* 256×256 copy with the
bundle's evaluation transform — the very pixels the model was trained and tested on. A
new image is normalised the same way (:func:`herbid.inference.pixels.upload_tensor`), so querying with a sheet's
original file finds that sheet at similarity ≈ 1.0.

Search backends live in :data:`BACKENDS`, a registry: exact inner product in numpy
(BLAS matrix product), faiss ``IndexFlatIP`` (exact), faiss IVF (approximate shortlist,
exact re-ranking) and faiss HNSW (approximate). ``auto`` (:data:`AUTO_TIERS`) uses exact
numpy search below :data:`IVF_THRESHOLD` vectors and faiss IVF from there on, when faiss
is installed. Measured on 2 CPU cores: numpy answers one query over 100k × 1280 in ~35 ms
(``benchmarks/similar_latency.py``), scaling linearly (~0.26 s at 1M × 1280, where each
query reads 5 GB); faiss-cpu's flat index was 1.2–3× *slower* than numpy, so ``auto``
does not pick it. ``benchmarks/similar_search_scale.py`` (clustered embeddings, recall@10
against exact search) chose IVF with 8-bit codes, ``nlist = 4·√n``, ``nprobe = nlist/32``
(≥ 32): at 100k it finds 99.99 % of the exact top 10 in < 1 ms; at 1M (4000 lists) 97.3 %
at 128 probes in 7.7 ms p50 (95.8 % at 64) after a ~9 min build. HNSW is as fast
but builds 5× slower (360 s against 70 s at 100k; extrapolated, over an hour at 1M) and, like IVF-Flat, keeps a
second float32 copy of the embeddings (5.1 GB at 1M); IVF-SQ8's codes take a quarter of
that and its re-ranking reads the embeddings the index already holds.

Because the index stores *labelled* neighbours, a k-NN vote over it is a classifier that
needs no retraining (:meth:`SpecimenIndex.knn_probabilities`): a species with a handful
of sheets, or added to the index after the model was trained, can still be predicted.
"""

from herbid.identification.index.backends import (
    AUTO_TIERS,
    BACKENDS,
    IVF_THRESHOLD,
    FaissFlat,
    FaissHNSW,
    FaissIVF,
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
    "IVF_THRESHOLD",
    "INDEX_FORMAT",
    "INDEX_JSON",
    "KNN_TEMPERATURE",
    "METADATA",
    "METADATA_COLUMNS",
    "UNLABELLED",
    "Encoded",
    "FaissFlat",
    "FaissHNSW",
    "FaissIVF",
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
