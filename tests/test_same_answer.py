"""One sheet, one answer: every door of herbid gives the same probabilities.

A bundle trained with the default recipe (flip test-time augmentation on, as users get
it) identifies the test sheets of a synthetic collection through ``herbid identify``,
``POST /api/identify``, ``herbid review`` (classifier alone, ``--knn-weight 0``),
``herbid evaluate --per-image`` and the ONNX export. The web app and the review queue
once ran the bare model while ``identify`` applied the TTA; this test catches any door
that drifts from the others again.

The bundle is the default recipe's start on a small CNN: its linear-probe head fitted on
the training sheets, no fine-tuning epoch. (On a 4-species toy set one epoch saturates
the softmax to one-hot answers, which would agree whatever the doors did.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from herbid.cli.main import main
from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import load_manifest
from herbid.data.splits import split_dataset
from herbid.data.synthetic import make_synthetic_collection
from herbid.training.config import DEFAULT_RECIPE, load_config
from herbid.training.loop import train

N_SPECIES = 4
#: float32 logits through different batch sizes, TTA averaging and runtimes
TOLERANCE = 2e-5


@dataclass(frozen=True)
class Trained:
    run: Path
    dataset: Path
    species: list[str]
    sheets: dict[str, Path]  # test image_id → its original file


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("same-answer")
    source = make_synthetic_collection(root / "source", n_species=N_SPECIES, per_species=5, seed=5, size=(160, 240))
    dataset = build_dataset([source], root / "dataset", BuildOptions(workers=1, progress=False)).out
    split_dataset(dataset, by="none", test_fraction=0.4, seed=0)
    config = load_config(overrides={"dataset": str(dataset), "out": str(root / "run"), "arch": "small_cnn",
                                    "init": "random", "epochs": 0, "batch_size": 4, "workers": 0,
                                    "device": "cpu"})
    assert config.recipe == DEFAULT_RECIPE and config.tta != "none"  # the recipe users get, TTA on
    result = train(config, progress=False)
    manifest = load_manifest(dataset)
    test = manifest[manifest["split"] == "test"]
    sheets = {str(row.image_id): Path(row.source_path) for row in test.itertuples()}
    species = json.loads((result.bundle_dir / "bundle.json").read_text())["species"]
    return Trained(result.run_dir, dataset, species, sheets)


def _json_out(argv: list[str], capsys: pytest.CaptureFixture[str]) -> object:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _from_top(top: list[dict], species: list[str], name_key: str = "scientificName") -> np.ndarray:
    """A full probability vector (bundle species order) from a top-k list with k = all."""
    assert len(top) == len(species)
    by_name = {entry[name_key]: entry["probability"] for entry in top}
    return np.array([by_name[name] for name in species])


def test_every_door_gives_the_same_probabilities(trained: Trained, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    species, ids = trained.species, sorted(trained.sheets)
    files = [str(trained.sheets[image_id]) for image_id in ids]

    # herbid identify: the reference
    identified = _json_out(["identify", str(trained.run), *files, "--json", "--top-k", str(N_SPECIES),
                            "--no-progress", "--device", "cpu"], capsys)
    by_path = {Path(entry["path"]).resolve(): entry for entry in identified}
    reference = np.stack([_from_top(by_path[Path(f).resolve()]["top"], species) for f in files])
    assert reference.shape == (len(ids), N_SPECIES) and np.allclose(reference.sum(axis=1), 1.0, atol=1e-5)

    # POST /api/identify
    from herbid.web.app import create_app

    with TestClient(create_app(trained.run, device="cpu"), base_url="http://localhost") as client:
        web = np.stack([_from_top(client.post(f"/api/identify?top_k={N_SPECIES}",
                                              files={"file": (Path(f).name, Path(f).read_bytes(), "image/jpeg")}
                                              ).json()["top"], species) for f in files])
    np.testing.assert_allclose(web, reference, atol=TOLERANCE)

    # herbid evaluate --per-image (the stored copies of the same sheets)
    evaluated = _json_out(["evaluate", str(trained.run), "--dataset", str(trained.dataset), "--per-image", "--json",
                           "--device", "cpu"], capsys)
    per_image = {row["image_id"]: row["probabilities"] for row in evaluated["per_image"]}
    assert sorted(per_image) == ids
    np.testing.assert_allclose(np.array([per_image[i] for i in ids]), reference, atol=TOLERANCE)

    # herbid review, the classifier's own probabilities
    reviewed = _json_out(["review", str(trained.run), "--dataset", str(trained.dataset), "--split", "test",
                          "--knn-weight", "0", "--top-k", str(N_SPECIES), "--json", "--no-progress",
                          "--device", "cpu"], capsys)
    by_id = {row["image_id"]: row for row in reviewed}
    review = np.stack([_from_top(by_id[i]["suggestions"], species, "species") for i in ids])
    np.testing.assert_allclose(review, reference, atol=TOLERANCE)

    # the ONNX export, fed the identifier's own input tensors
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from herbid.export import INPUT_NAME, export_onnx
    from herbid.identification.predict import Identifier

    onnx_path = export_onnx(trained.run, tmp_path / "model.onnx")
    identifier = Identifier(trained.run, device="cpu")
    batch = np.stack([identifier.sheet_tensor(Path(f).read_bytes()).numpy() for f in files])
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    _, onnx_probabilities = session.run(None, {INPUT_NAME: batch})
    np.testing.assert_allclose(onnx_probabilities, reference, atol=TOLERANCE)

    # and the TTA matters here: the bare model's answer differs, so the doors above could not
    # agree by running the bare model everywhere
    bare = identifier.bundle.model(__import__("torch").from_numpy(batch)).detach()
    bare_probabilities = (bare / identifier.temperature).softmax(dim=1).numpy()
    assert not np.allclose(bare_probabilities, reference, atol=TOLERANCE)
