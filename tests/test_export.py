"""ONNX export: same top-5 as PyTorch on the same sheets, calibration and species inside.

Bundles are written with randomly initialised models (no training, no download): the
export must reproduce whatever the weights compute.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from herbid.cli.main import main
from herbid.data.synthetic import make_synthetic_collection
from herbid.export import check_onnx, export_onnx, read_onnx_metadata
from herbid.identification import Identifier
from herbid.inference.bundle import save_bundle
from herbid.models.registry import create_model

SPECIES = ["Anemone canadensis", "Anemone hepatica", "Carex tonsa", "Carex pensylvanica", "Viola sororia",
           "Viola pubescens"]
TAXONOMY = {name: {"genus": name.split()[0], "family": {"Anemone": "Ranunculaceae", "Carex": "Cyperaceae",
                                                         "Viola": "Violaceae"}[name.split()[0]]} for name in SPECIES}


def _bundle(root: Path, arch: str, tta: str = "none", aspect: float = 1.0) -> Path:
    torch.manual_seed(0)
    model, _ = create_model(arch, len(SPECIES), init="random")
    preprocessing = dataclasses.replace(model.preprocessing, tta=tta, aspect=aspect)
    return save_bundle(root / f"{arch}-{tta}-{aspect}", model=model, arch=arch, species=SPECIES, taxonomy=TAXONOMY,
                       preprocessing=preprocessing, temperature=1.7, provenance={"created": "test"})


@pytest.fixture(scope="module")
def sheets(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("export-sheets")
    make_synthetic_collection(root, n_species=3, per_species=1, seed=3, size=(200, 300))
    return sorted((root / "images").glob("*.jpg"))


@pytest.mark.parametrize("arch", ["small_cnn", "efficientnet_lite0"])
def test_onnx_has_the_same_top5_as_pytorch(arch: str, sheets: list[Path], tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, arch)
    path = export_onnx(bundle, tmp_path / f"{arch}.onnx")
    assert not list(tmp_path.glob("*.data")), "weights must be inside the one .onnx file"
    meta = read_onnx_metadata(path)
    assert meta["species"] == SPECIES and meta["taxonomy"] == TAXONOMY
    assert meta["temperature"] == pytest.approx(1.7) and meta["arch"] == arch
    assert meta["preprocessing"]["input_size"] == Identifier(bundle, device="cpu").bundle.preprocessing.input_size
    report = check_onnx(bundle, path, sheets)
    assert report["images"] == len(sheets) == 3
    assert report["top5_agree"], report["per_image"]
    assert report["max_abs_diff_probabilities"] < 1e-4
    assert all(len(p["onnx_top5"]) == 5 for p in report["per_image"])


def test_onnx_carries_the_bundles_test_time_augmentation(sheets: list[Path], tmp_path: Path) -> None:
    """A flip-TTA bundle: identify averages the sheet and its mirror image, so must ONNX."""
    flip, plain = _bundle(tmp_path, "small_cnn", tta="flip"), _bundle(tmp_path, "small_cnn")
    path = export_onnx(flip, tmp_path / "flip.onnx")
    report = check_onnx(flip, path, sheets)
    assert report["top5_agree"] and report["max_abs_diff_logits"] < 1e-4
    identifier = Identifier(plain, device="cpu")
    batch = torch.stack([identifier.sheet_tensor(p.read_bytes()) for p in sheets])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(["logits"], {"image": batch.numpy()})[0])
    expected = (identifier.logits(batch) + identifier.logits(batch.flip(3))) / 2
    assert torch.allclose(logits, expected, atol=1e-4)
    assert not torch.allclose(logits, identifier.logits(batch), atol=1e-4)


def test_outputs_are_calibrated_and_the_batch_axis_is_dynamic(sheets: list[Path], tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "small_cnn")
    path = export_onnx(bundle, tmp_path / "m.onnx")
    identifier = Identifier(bundle, device="cpu")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    for n in (1, 3):
        batch = torch.stack([identifier.sheet_tensor(p.read_bytes()) for p in sheets[:n]])
        logits, probabilities = session.run(None, {"image": batch.numpy()})
        assert probabilities.shape == (n, len(SPECIES))
        expected = torch.softmax(torch.from_numpy(logits) / 1.7, dim=1).numpy()
        np.testing.assert_allclose(probabilities, expected, atol=1e-6)
        np.testing.assert_allclose(probabilities, identifier.probabilities(batch).numpy(), atol=1e-5)


def test_sheet_shaped_bundle_exports_its_input_shape(sheets: list[Path], tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "small_cnn", tta="flip", aspect=1.5)
    path = export_onnx(bundle, tmp_path / "sheet.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 168, 112]  # portrait: (height, width) = (1.5 × 112, 112)
    assert read_onnx_metadata(path)["preprocessing"]["aspect"] == 1.5
    report = check_onnx(bundle, path, sheets)
    assert report["top5_agree"] and report["max_abs_diff_logits"] < 1e-4


def test_torchscript_exporter_and_random_inputs(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "small_cnn")
    path = export_onnx(bundle, tmp_path / "ts.onnx", exporter="torchscript", opset=17)
    assert read_onnx_metadata(path)["exporter"] == "torchscript"
    report = check_onnx(bundle, path)  # no images: seeded noise
    assert report["top5_agree"] and report["images"] == 3


def test_cli_export_with_check(sheets: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = _bundle(tmp_path, "small_cnn")
    out = tmp_path / "cli.onnx"
    code = main(["export", str(bundle), "--onnx", str(out), "--check", *map(str, sheets[:2]), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and out.is_file()
    assert result["species"] == len(SPECIES) and result["check"]["top5_agree"] and result["check"]["images"] == 2
