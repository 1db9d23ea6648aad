"""Partial fine-tuning (herbid.training.partial): frozen prefix, frozen BatchNorm, L2-SP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from herbid.errors import InvalidOption
from herbid.models.registry import create_model
from herbid.training.config import TrainConfig
from herbid.training.loop import train
from herbid.training.partial import StartingPointPenalty, freeze_before, train_mode
from test_training import FAST, _make_dataset, _weights


def test_freeze_before_freezes_exactly_the_prefix() -> None:
    model = create_model("small_cnn", 4)[0]
    trainable = freeze_before(model, "features.3")
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert trainable == 6  # features.3.{0.weight, 1.weight, 1.bias, 2.weight}, classifier.{weight, bias}
    assert frozen == [name for name, _ in model.named_parameters()][:12]
    assert all(name.startswith(("features.0", "features.1", "features.2")) for name in frozen)
    assert freeze_before(create_model("small_cnn", 4)[0], "") == 18
    with pytest.raises(InvalidOption, match="names no parameter"):
        freeze_before(model, "model.blocks.5")


def test_train_mode_keeps_batchnorm_statistics() -> None:
    model = create_model("small_cnn", 4)[0]
    train_mode(model, frozen_batchnorm=True)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and model.training and not any(m.training for m in norms)
    before = [m.running_mean.clone() for m in norms]
    model(torch.rand(4, 3, 64, 64))
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, norms))
    train_mode(model, frozen_batchnorm=False)
    assert all(m.training for m in norms)


def test_starting_point_penalty_measures_the_distance_from_the_start() -> None:
    model = create_model("small_cnn", 4)[0]
    penalty = StartingPointPenalty(model, model.get_classifier(), strength=2.0)
    assert float(penalty().detach()) == 0.0
    with torch.no_grad():
        model.features[0][0].weight.add_(0.5)  # conv weight: 0.5 added to every element
        model.classifier.weight.add_(10.0)  # the new head is not anchored
    expected = 0.5 * 2.0 * 0.25 * model.features[0][0].weight.numel()
    assert float(penalty().detach()) == pytest.approx(expected)
    assert StartingPointPenalty(model, model.get_classifier(), strength=0.0)() == 0.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("partial"), "herbarium", n_species=4, per_species=12, seed=0)


def test_partial_run_trains_only_the_tail(dataset: Path, tmp_path: Path) -> None:
    config = TrainConfig.from_recipe("paper", dataset=str(dataset), epochs=2, max_steps_per_epoch=4, **FAST)
    full = train(config.replace(out=str(tmp_path / "full")), progress=False)
    tail = train(config.replace(out=str(tmp_path / "tail"), trainable_from="features.3", frozen_batchnorm=True,
                                l2_sp=0.1), progress=False)
    torch.manual_seed(0)
    start = create_model("small_cnn", 4)[0].state_dict()  # training seeds 0 before building the model
    tail_weights, full_weights = _weights(tail.run_dir), _weights(full.run_dir)
    for name, value in start.items():
        frozen = not name.startswith(("features.3", "classifier")) or "running" in name or "num_batches" in name
        if frozen:  # frozen layers and every BatchNorm statistic are the initial ones, bit for bit
            assert torch.equal(tail_weights[name], value), name
    assert not torch.equal(tail_weights["features.3.0.weight"], start["features.3.0.weight"])
    assert not torch.equal(full_weights["features.0.0.weight"], start["features.0.0.weight"])
    assert not torch.equal(full_weights["features.0.1.running_mean"], start["features.0.1.running_mean"])
