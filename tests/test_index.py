"""Similar-specimen index: build, search, k-NN classification, new species, backends, CLI.

One small_cnn is trained on 4 synthetic species; a 5th species ("Mockia orbicularis")
exists in the collection but not in the bundle, to show that the k-NN vote over the
index can name species added after training. The trained collection is cached for the
whole pytest session (``test_review.py`` reuses it through :func:`trained_collection`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from herbid.cli.main import main
from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import load_manifest, save_manifest
from herbid.data.splits import split_dataset
from herbid.data.synthetic import make_synthetic_collection
from herbid.identification.index import (
    BACKENDS,
    EMBEDDINGS,
    INDEX_JSON,
    IVF_THRESHOLD,
    METADATA,
    METADATA_COLUMNS,
    SpecimenIndex,
    SpecimenIndexError,
    add_to_index,
    build_index,
    choose_backend,
    embed_images,
    similar,
)
from herbid.inference.bundle import Bundle, load_bundle
from herbid.training.config import TrainConfig
from herbid.training.loop import train

NEW_SPECIES = "Mockia orbicularis"  # synthetic species 4: in the collection, not in the bundle


@dataclass(frozen=True)
class TrainedCollection:
    full: Path  # all 5 species, split by collector
    known: Path  # the 4 species the bundle was trained on (same images)
    run: Path  # training run folder (holds the bundle)
    new_species: str = NEW_SPECIES

    def bundle(self) -> Bundle:
        return load_bundle(self.run)


def trained_collection(tmp_path_factory: pytest.TempPathFactory) -> TrainedCollection:
    """Build (once per session) 5 synthetic species × 10 sheets and train on 4 of them.

    small_cnn at its own 112 px input, 10 epochs of batch 4: ~15 s on two CPU cores and
    reliably well above chance (see tests/test_training.py for the same settings).
    """
    root = tmp_path_factory.getbasetemp() / "herbid-identification"
    collection = TrainedCollection(full=root / "full", known=root / "known", run=root / "run")
    if (root / "DONE").exists():
        return collection
    shutil.rmtree(root, ignore_errors=True)
    source = make_synthetic_collection(root / "source", n_species=5, per_species=10, seed=0, size=(160, 240))
    build_dataset([source], collection.full, BuildOptions(workers=1, progress=False))
    split_dataset(collection.full, by="collector", test_fraction=0.3, seed=0)
    manifest = load_manifest(collection.full)
    collection.known.mkdir()
    os.symlink(collection.full / "images", collection.known / "images")
    save_manifest(collection.known, manifest[manifest["scientificName"] != NEW_SPECIES])
    train(TrainConfig.from_recipe("paper", dataset=str(collection.known), out=str(collection.run), arch="small_cnn", epochs=10,
                      batch_size=4, lr=0.02, workers=0, device="cpu"), progress=False)
    (root / "DONE").touch()
    return collection


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> TrainedCollection:
    return trained_collection(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(collection: TrainedCollection) -> Bundle:
    return collection.bundle()


@pytest.fixture(scope="module")
def all_index(collection: TrainedCollection, bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every sheet of the 4 known species (train and test)."""
    return build_index(bundle, collection.known, tmp_path_factory.mktemp("index") / "all", device="cpu",
                       progress=False)


@pytest.fixture(scope="module")
def train_index(collection: TrainedCollection, bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_index(bundle, collection.known, tmp_path_factory.mktemp("index") / "train", split="train",
                       device="cpu", progress=False)


def _rows(dataset: Path, split: str, species: str | None = None, exclude: str | None = None) -> pd.DataFrame:
    frame = load_manifest(dataset)
    frame = frame[frame["split"] == split]
    if species is not None:
        frame = frame[frame["scientificName"] == species]
    if exclude is not None:
        frame = frame[frame["scientificName"] != exclude]
    return frame.reset_index(drop=True)


# ------------------------------------------------------------------------ build


def test_index_layout_and_metadata(all_index: Path, collection: TrainedCollection, bundle: Bundle) -> None:
    manifest = load_manifest(collection.known)
    for name in (EMBEDDINGS, METADATA, INDEX_JSON):
        assert (all_index / name).is_file()
    info = json.loads((all_index / INDEX_JSON).read_text())
    assert info["count"] == len(manifest) and info["embedding_dim"] == bundle.model.num_features
    assert info["model_id"] == bundle.model_id and Path(info["bundle"]) == bundle.path.resolve()
    assert info["backend"] in BACKENDS and info["herbid_version"] and info["created"]

    embeddings = np.load(all_index / EMBEDDINGS)
    assert embeddings.dtype == np.float32 and embeddings.shape == (len(manifest), bundle.model.num_features)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)

    meta = pd.read_parquet(all_index / METADATA)
    assert set(METADATA_COLUMNS) <= set(meta.columns)
    assert set(meta["image_id"]) == set(manifest["image_id"])
    by_id = manifest.set_index("image_id")
    for _, row in meta.head(5).iterrows():
        assert Path(row["image_path"]).is_absolute() and Path(row["image_path"]).is_file()
        assert row["source_path"] == by_id.loc[row["image_id"], "source_path"]  # where the original is
        assert row["catalogNumber"] == by_id.loc[row["image_id"], "catalogNumber"]
        assert row["institutionCode"] and row["recordedBy"] and row["family"]


def test_similar_on_a_training_sheet_returns_that_sheet_first(all_index: Path, collection: TrainedCollection) -> None:
    """The acceptance criterion: the sheet's own original file finds itself at ≈ 1.0."""
    sheet = _rows(collection.known, "train").iloc[0]
    original = Path(sheet["source_path"])
    results = similar(all_index, original, k=5)  # bundle from index.json
    assert len(results) == 1 and results[0]["query"] == str(original)
    first = results[0]["neighbours"][0]
    assert first["image_id"] == sheet["image_id"] and first["rank"] == 1
    assert first["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert first["source_path"] == sheet["source_path"] and first["catalogNumber"] == sheet["catalogNumber"]
    sims = [n["similarity"] for n in results[0]["neighbours"]]
    assert len(sims) == 5 and sims == sorted(sims, reverse=True)
    assert results[0]["knn"][0]["species"] == sheet["scientificName"]

    # bytes and lists work too, one result per image, in order
    other = _rows(collection.known, "test").iloc[0]
    both = similar(SpecimenIndex.load(all_index), [original.read_bytes(), Path(other["source_path"])], k=2,
                   bundle=collection.run)
    assert [r["neighbours"][0]["image_id"] for r in both] == [sheet["image_id"], other["image_id"]]
    assert both[0]["query"] == "image 1"


def test_neighbours_exclude_and_padding(all_index: Path, bundle: Bundle, collection: TrainedCollection) -> None:
    index = SpecimenIndex.load(all_index)
    sheet = _rows(collection.known, "train").iloc[0]
    query = embed_images(bundle, [Path(sheet["source_path"])], device="cpu")
    found = index.neighbours(query, 3, exclude=[{sheet["image_id"]}])[0]
    assert sheet["image_id"] not in {n["image_id"] for n in found} and len(found) == 3
    scores, rows = index.search(query, len(index) + 2)
    assert (rows[0, -2:] == -1).all() and np.isneginf(scores[0, -2:]).all()
    assert len(index.neighbours(query, len(index) + 2)[0]) == len(index)


# -------------------------------------------------------------------------- k-NN


def test_knn_classifier_is_above_chance_on_test_sheets(train_index: Path, bundle: Bundle,
                                                       collection: TrainedCollection) -> None:
    index = SpecimenIndex.load(train_index)
    test = _rows(collection.known, "test")
    queries = embed_images(bundle, [Path(p) for p in test["source_path"]], device="cpu")
    names, probs = index.knn_probabilities(queries, k=5)
    assert names == sorted(bundle.species)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float(np.mean(np.asarray(names)[probs.argmax(axis=1)] == test["scientificName"].to_numpy()))
    assert accuracy >= 0.6, accuracy  # chance is 0.25

    # a fixed species list sets the columns; votes for others stay in the denominator
    subset, sub_probs = index.knn_probabilities(queries, k=5, species=[names[0]])
    assert subset == [names[0]] and sub_probs.shape == (len(test), 1)
    np.testing.assert_allclose(sub_probs[:, 0], probs[:, 0], atol=1e-6)


def test_species_added_after_training_is_predicted_by_knn(collection: TrainedCollection, bundle: Bundle,
                                                          tmp_path: Path) -> None:
    assert collection.new_species not in bundle.species
    index_dir = build_index(bundle, collection.known, tmp_path / "index", split="train", device="cpu",
                            progress=False)
    add_to_index(index_dir, collection.full, split="train", species=[collection.new_species], device="cpu",
                 progress=False)
    index = SpecimenIndex.load(index_dir)
    assert collection.new_species in index.species()
    count = len(index)
    add_to_index(index_dir, collection.full, split="train", species=[collection.new_species], device="cpu",
                 progress=False)
    assert len(SpecimenIndex.load(index_dir)) == count  # idempotent: same sheets are skipped

    test = _rows(collection.full, "test", species=collection.new_species)
    queries = embed_images(bundle, [Path(p) for p in test["source_path"]], device="cpu")
    names, probs = index.knn_probabilities(queries, k=5)
    predicted = np.asarray(names)[probs.argmax(axis=1)]
    assert np.mean(predicted == collection.new_species) >= 0.5, predicted
    assert any(d.get("species") == [collection.new_species] for d in index.info["datasets"])


def test_an_index_of_another_model_is_refused(all_index: Path, bundle: Bundle) -> None:
    index = SpecimenIndex.load(all_index)
    index.check_compatible(bundle)
    index.info["model_id"] = "efficientnet_lite0@elsewhere"
    with pytest.raises(SpecimenIndexError, match="rebuild"):
        index.check_compatible(bundle)
    with pytest.raises(SpecimenIndexError, match="not a specimen index"):
        SpecimenIndex.load(all_index.parent)


# ---------------------------------------------------------------------- backends


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _index(vectors: np.ndarray, backend: str) -> SpecimenIndex:
    meta = pd.DataFrame({"image_id": [f"id{i}" for i in range(len(vectors))],
                         "scientificName": [f"sp{i % 3}" for i in range(len(vectors))]})
    return SpecimenIndex(vectors, meta, backend_name=backend)


def test_backends_agree_with_exact_search() -> None:
    rng = np.random.default_rng(0)
    data, queries = _unit(rng, 2000, 32), _unit(rng, 20, 32)
    exact_scores, exact_rows = _index(data, "numpy").search(queries, 10)
    np.testing.assert_array_equal(exact_rows[:, 0], np.argmax(queries @ data.T, axis=1))
    if not BACKENDS["faiss-flat"].available():
        pytest.skip("faiss is not installed")
    flat_scores, flat_rows = _index(data, "faiss-flat").search(queries, 10)
    np.testing.assert_allclose(flat_scores, exact_scores, atol=1e-5)
    np.testing.assert_array_equal(flat_rows, exact_rows)
    hnsw_scores, hnsw_rows = _index(data, "faiss-hnsw").search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw_rows, exact_rows)])
    assert recall >= 0.9


def test_backend_choice_is_a_registry() -> None:
    faiss = BACKENDS["faiss-flat"].available()
    assert choose_backend(10) == "numpy"  # exact; faiss-flat only when asked for
    assert choose_backend(10, "faiss-flat") == ("faiss-flat" if faiss else "numpy")
    assert choose_backend(IVF_THRESHOLD) == ("faiss-ivf" if faiss else "numpy")
    assert choose_backend(IVF_THRESHOLD, "faiss-hnsw") == ("faiss-hnsw" if faiss else "numpy")
    assert choose_backend(10, "numpy") == "numpy"
    with pytest.raises(ValueError, match="unknown search backend"):
        choose_backend(10, "annoy")


def test_hnsw_graph_is_saved_and_reused(tmp_path: Path) -> None:
    if not BACKENDS["faiss-hnsw"].available():
        pytest.skip("faiss is not installed")
    index = _index(_unit(np.random.default_rng(1), 300, 16), "faiss-hnsw")
    index.save(tmp_path, {"format": "herbid-index/1"})
    assert (tmp_path / "faiss-hnsw.index").is_file()
    loaded = SpecimenIndex.load(tmp_path)
    assert loaded.backend_name == "faiss-hnsw" and loaded.backend.index.ntotal == 300
    np.testing.assert_array_equal(loaded.search(index.embeddings[:5], 1)[1][:, 0], np.arange(5))


# --------------------------------------------------------------------------- CLI


def test_cli_index_build_and_similar_print_json(collection: TrainedCollection, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-index"
    assert main(["index", "build", str(collection.run), "--dataset", str(collection.known), "--out", str(out),
                 "--split", "train", "--device", "cpu", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["index"] == str(out) and summary["count"] == len(_rows(collection.known, "train"))

    sheet = _rows(collection.known, "train").iloc[1]
    assert main(["similar", str(out), sheet["source_path"], "--k", "3", "--device", "cpu", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    first = results[0]["neighbours"][0]
    assert first["image_id"] == sheet["image_id"] and first["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert {"source_path", "catalogNumber", "institutionCode", "scientificName"} <= set(first)

    assert main(["similar", str(out), sheet["source_path"], "--k", "2", "--device", "cpu"]) == 0
    assert sheet["source_path"] in capsys.readouterr().out

    assert main(["similar", str(tmp_path / "nowhere"), sheet["source_path"]]) == 1
    assert "not a specimen index" in capsys.readouterr().err
