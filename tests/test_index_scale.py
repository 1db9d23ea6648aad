"""Approximate similar-specimen search (faiss IVF + exact re-ranking) at a small scale.

20k × 64-d clustered unit vectors stand in for a large collection (the 1M × 1280 figures
are in ``benchmarks/similar_search_scale.py``): the IVF backend must find ≥ 95 % of the
exact top 10, give the very same answers after save → load, and ``auto`` must switch to
it at :data:`IVF_THRESHOLD` vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from herbid.identification.index import BACKENDS, IVF_THRESHOLD, FaissIVF, SpecimenIndex, choose_backend

pytest.importorskip("faiss")

N, DIM, K = 20_000, 64, 10


def _clustered(n: int, seed: int, species: int = 400, rank: int = 24) -> np.ndarray:
    """Species clusters in a random ``rank``-d subspace plus isotropic noise, L2-normalised
    (uniform noise would have no neighbours worth finding)."""
    shape = np.random.default_rng(0)  # one mixture; ``seed`` picks the draws from it
    basis = np.linalg.qr(shape.standard_normal((DIM, rank)))[0].T
    centres = shape.standard_normal((species, rank))
    rng = np.random.default_rng(seed)
    latent = centres[rng.integers(species, size=n)] + 0.8 * rng.standard_normal((n, rank))
    vectors = latent @ basis
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors += 0.3 / np.sqrt(DIM) * rng.standard_normal((n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _index(vectors: np.ndarray, backend: str) -> SpecimenIndex:
    meta = pd.DataFrame({"image_id": [f"id{i}" for i in range(len(vectors))],
                         "scientificName": [f"sp{i % 7}" for i in range(len(vectors))]})
    return SpecimenIndex(vectors, meta, backend_name=backend)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return _clustered(N, seed=1), _clustered(300, seed=2)  # queries: held-out draws, not copies


@pytest.fixture(scope="module")
def ivf(data: tuple[np.ndarray, np.ndarray]) -> SpecimenIndex:
    return _index(data[0], "faiss-ivf")


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found, exact)]))


def test_ivf_recall_against_exact_search(data: tuple[np.ndarray, np.ndarray], ivf: SpecimenIndex) -> None:
    vectors, queries = data
    exact_scores, exact_rows = _index(vectors, "numpy").search(queries, K)
    scores, rows = ivf.search(queries, K)
    assert ivf.backend_name == "faiss-ivf" and ivf.backend.index.nlist == FaissIVF.lists(N) == 512
    assert _recall(rows, exact_rows) >= 0.95
    # re-ranked exactly: each score is the true cosine of its row, best first
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, vectors[rows]), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert np.mean(np.isclose(scores[:, 0], exact_scores[:, 0], atol=1e-5)) >= 0.98  # the best match is found


def test_ivf_saved_index_is_reused_with_identical_results(data: tuple[np.ndarray, np.ndarray], ivf: SpecimenIndex,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queries = data[1]
    ivf.save(tmp_path, {"format": "herbid-index/1"})
    assert (tmp_path / FaissIVF.file).is_file()

    def no_rebuild(self: FaissIVF, vectors: np.ndarray) -> None:
        raise AssertionError("the saved IVF index should have been loaded, not rebuilt")

    monkeypatch.setattr(FaissIVF, "_build", no_rebuild)
    loaded = SpecimenIndex.load(tmp_path)
    assert loaded.backend_name == "faiss-ivf" and loaded.backend.index.ntotal == N
    before, after = ivf.search(queries, K), loaded.search(queries, K)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])


def test_stale_ivf_file_is_rebuilt_or_removed(data: tuple[np.ndarray, np.ndarray], ivf: SpecimenIndex,
                                              tmp_path: Path) -> None:
    ivf.save(tmp_path, {"format": "herbid-index/1"})
    smaller = _index(data[0][:5000], "faiss-ivf")
    rebuilt = FaissIVF(smaller.embeddings, tmp_path)  # the saved index holds 20k vectors, not 5k
    assert rebuilt.index.ntotal == 5000 and rebuilt.index.nlist == FaissIVF.lists(5000)
    # same count, other embeddings (a collection re-encoded by another model): rebuilt too
    reencoded = np.ascontiguousarray(data[0][::-1])
    assert FaissIVF(reencoded, tmp_path).search(reencoded[:1], 1)[1][0, 0] == 0
    reloaded = FaissIVF(data[0], tmp_path)  # the very embeddings it was saved from: reused as saved
    assert reloaded.fingerprint == (tmp_path / f"{FaissIVF.file}.sha256").read_text().strip()
    smaller = _index(data[0][:5000], "numpy")
    smaller.save(tmp_path, {"format": "herbid-index/1"})
    assert not (tmp_path / FaissIVF.file).exists()  # another backend's state does not linger
    assert not (tmp_path / f"{FaissIVF.file}.sha256").exists()


def test_auto_switches_to_ivf_at_the_threshold() -> None:
    assert "faiss-ivf" in BACKENDS
    assert choose_backend(IVF_THRESHOLD - 1) == "numpy"
    assert choose_backend(IVF_THRESHOLD) == choose_backend(10 * IVF_THRESHOLD) == "faiss-ivf"
    assert choose_backend(IVF_THRESHOLD, "numpy") == "numpy"  # asked for: exact at any size
    assert choose_backend(10, "faiss-ivf") == "faiss-ivf"


def test_ivf_on_a_tiny_index_returns_what_there_is() -> None:
    vectors = _clustered(100, seed=3)
    scores, rows = _index(vectors, "faiss-ivf").search(vectors[:3], 150)
    assert rows.shape == (3, 150) and rows[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    found = rows[rows >= 0]
    assert len(found) <= 300 and all(len(set(r[r >= 0])) == (r >= 0).sum() for r in rows)  # no duplicates
    assert np.all(np.isneginf(scores[rows < 0]))
