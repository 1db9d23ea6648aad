"""The default recipe adapts to the collection (herbid.training.choice): a linear probe on
frozen features below ``finetune_min_per_species`` training sheets per species, LP-FT above."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from herbid.data.dataset_folder import load_manifest
from herbid.evaluation.baselines import extract_features, fit_logistic_regression
from herbid.evaluation.metrics import topk_correct
from herbid.inference.bundle import load_bundle
from herbid.inference.sheets import select_rows
from herbid.models.registry import create_model
from herbid.training.choice import adapt_to_collection, median_sheets_per_species
from herbid.training.config import TrainConfig
from herbid.training.loop import train
from test_training import FAST, _make_dataset

#: The sheet recipe on the tiny test CNN at the stored 64 px size.
SMALL_SHEET = dict(FAST, input_size=64, resize_size=64, aspect=1.0, epochs=2, max_steps_per_epoch=3)


def _rows(counts: dict[str, int]) -> pd.DataFrame:
    return pd.DataFrame({"scientificName": [name for name, n in counts.items() for _ in range(n)]})


def test_the_median_species_decides() -> None:
    rows = _rows({"a": 3, "b": 5, "c": 40})
    assert median_sheets_per_species(rows) == 5
    config, plan = adapt_to_collection(TrainConfig(), rows)
    assert config.epochs == 0 and plan["stage"] == "linear-probe" and "5 training sheets per species" in plan["reason"]
    config, plan = adapt_to_collection(TrainConfig(finetune_min_per_species=5), rows)
    assert config.epochs == 15 and plan["stage"] == "fine-tune"
    config, plan = adapt_to_collection(TrainConfig(finetune_min_per_species=0), rows)
    assert config.epochs == 15 and plan["stage"] == "fine-tune"
    # random weights have no features worth a probe: R.X.X experiments train
    config, plan = adapt_to_collection(TrainConfig(init="random"), rows)
    assert config.epochs == 15 and plan["stage"] == "fine-tune" and "init=random" in plan["reason"]
    # a random head has nothing to stop at: the paper recipe always trains
    config, plan = adapt_to_collection(TrainConfig.from_recipe("paper"), rows)
    assert config.epochs == 30 and plan["stage"] == "fine-tune" and "head_init=random" in plan["reason"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A weights file standing in for pretrained weights (small_cnn has no ImageNet ones)."""
    path = tmp_path_factory.mktemp("weights") / "small_cnn.pt"
    torch.manual_seed(1)
    torch.save(create_model("small_cnn", 4)[0].state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("choice"), "herbarium", n_species=4, per_species=12, seed=0)


def test_small_collection_gets_the_probe_and_says_why(dataset: Path, pretrained: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = TrainConfig(dataset=str(dataset), out=str(tmp_path / "run"), init=pretrained, tta="none",
                         **SMALL_SHEET)
    result = train(config, progress=True)
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["plan"]["stage"] == "linear-probe" and record["epochs"] == 0 and result.history == []
    assert "herbid train: recipe sheet, linear-probe: 8 training sheets per species" in capsys.readouterr().err
    # the bundle is exactly the logistic regression on the frozen features (no std floor)
    frame = load_manifest(dataset)
    kw = dict(init=pretrained, input_size=64, resize_size=64, device="cpu", species=load_bundle(result.bundle_dir).species)
    train_x, train_y = extract_features("small_cnn", dataset, select_rows(frame, split="train", train=True), **kw)
    test_x, test_y = extract_features("small_cnn", dataset, select_rows(frame, split="test"), **kw)
    probe = fit_logistic_regression(train_x, train_y, 4)
    counts = topk_correct(torch.as_tensor(probe.predict_proba(test_x)), torch.as_tensor(test_y), (1, 5))
    assert result.final["n"] == len(test_y) == 16
    assert result.final["top1"] == counts[1] / 16 and result.final["top5"] == counts[5] / 16
    assert result.final["top1"] > 0.25  # 4 species: chance is 0.25


def test_large_enough_collection_fine_tunes(dataset: Path, pretrained: str, tmp_path: Path) -> None:
    result = train(TrainConfig(dataset=str(dataset), out=str(tmp_path / "run"), init=pretrained,
                               finetune_min_per_species=5, **SMALL_SHEET), progress=False)
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["plan"]["stage"] == "fine-tune" and record["epochs"] == 2 and len(result.history) == 2
