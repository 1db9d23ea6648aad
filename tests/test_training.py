"""Training: configs, data, the loop, resume, val selection, transfer, bundles.

Everything runs the tiny ``small_cnn`` on synthetic sheets (4 species) on the CPU.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import load_manifest, manifest_hash
from herbid.data.splits import split_dataset
from herbid.data.synthetic import make_synthetic_collection
from herbid.evaluation.metrics import evaluate_model, topk_correct
from herbid.inference.bundle import load_bundle
from herbid.inference.forward import forward
from herbid.inference.pixels import eval_transform
from herbid.inference.sheets import ManifestDataset, ShardSampler, select_rows, species_and_taxonomy
from herbid.models.base import Preprocessing
from herbid.models.registry import create_model
from herbid.training.calibration import fit_temperature
from herbid.training.config import RECIPES, ConfigError, TrainConfig, load_config, parse_overrides, save_config
from herbid.training.curves import read_metrics
from herbid.training.data import SeededBatchSampler, train_transform
from herbid.training.loop import ResumeError, TrainHooks, train
from herbid.training.schedules import SCHEDULES, LrLambda

REPO = Path(__file__).resolve().parents[1]
#: small_cnn on 32 training sheets: enough steps for BatchNorm's running statistics
#: (batch 4 → 8 steps per epoch) and reliably well above chance after 12 epochs.
FAST = dict(arch="small_cnn", batch_size=4, lr=0.02, workers=0)


def _make_dataset(root: Path, name: str, *, n_species: int, per_species: int, seed: int) -> Path:
    source = make_synthetic_collection(root / "source", n_species=n_species, per_species=per_species, seed=seed)
    data = root / name
    build_dataset([source], data, BuildOptions(workers=1, progress=False))
    split_dataset(data, by="collector", test_fraction=0.3, seed=0)
    return data


@pytest.fixture(scope="module")
def dataset_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("collection-a"), "herbarium-a", n_species=4, per_species=12, seed=0)


@pytest.fixture(scope="module")
def dataset_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("collection-b"), "herbarium-b", n_species=3, per_species=8, seed=7)


@pytest.fixture(scope="module")
def trained(dataset_a: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("runs") / "a"
    return train(TrainConfig.from_recipe("paper", dataset=str(dataset_a), out=str(out), epochs=12, **FAST), progress=False)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "bundle" / "weights.pt", map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------- config


def test_paper_yaml_is_the_paper_recipe() -> None:
    paper = TrainConfig.from_recipe("paper")
    assert load_config(REPO / "configs" / "recipes" / "paper.yaml", {}) == paper
    assert (paper.batch_size, paper.lr, paper.schedule, paper.hflip) == (16, 0.0075, "poly", True)
    assert RECIPES["sheet"] == {}  # the TrainConfig defaults are the default recipe


def test_config_yaml_round_trip_and_overrides(tmp_path: Path) -> None:
    config = load_config(None, parse_overrides(["lr=0.01", "epochs=5", "fold=2", "amp=bf16", "hflip=false",
                                                "init_chain=[imagenet, NY]", "input_size=none"]))
    assert (config.lr, config.epochs, config.fold, config.amp, config.hflip) == (0.01, 5, 2, "bf16", False)
    assert config.init_chain == ["imagenet", "NY"] and config.input_size is None
    path = save_config(config, tmp_path / "config.yaml")
    assert load_config(path, {}) == config
    # overrides beat the file; strings from a command line are typed
    assert load_config(path, {"lr": "3e-3", "batch_size": "8", "init_chain": "imagenet,NY,CR"}).lr == 0.003
    assert load_config(path, {"batch_size": "8"}).batch_size == 8
    assert load_config(path, {"init_chain": "imagenet,NY,CR"}).init_chain == ["imagenet", "NY", "CR"]
    # the "smoke" recipe applies under the file's and the overrides' values
    smoke = load_config(None, {"recipe": "smoke", "epochs": 2})
    assert smoke.arch == "small_cnn" and smoke.epochs == 2


@pytest.mark.parametrize("overrides, message", [
    ({"learning_rate": 0.1}, "unknown config key 'learning_rate'"),
    ({"epochs": "many"}, "epochs: expected int"),
    ({"schedule": "linear"}, "schedule must be one of"),
    ({"recipe": "nope"}, "unknown recipe"),
    ({"amp": "fp8"}, "amp must be one of"),
])
def test_config_errors_are_clear(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_unknown_key_in_yaml_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("lr: 0.1\nbatchsize: 4\n")
    with pytest.raises(ConfigError, match="batchsize"):
        load_config(tmp_path / "c.yaml", {})


def test_schedules() -> None:
    assert set(SCHEDULES) >= {"poly", "cosine", "step", "constant"}
    fn = LrLambda("poly", total_steps=100)
    assert fn(0) == 1.0 and fn(75) == pytest.approx(0.5) and fn(100) == 0.0
    warm = LrLambda("constant", total_steps=100, warmup_steps=4)
    assert [warm(i) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert LrLambda("step", 90)(29) == 1.0 and LrLambda("step", 90)(30) == pytest.approx(0.1)


# ------------------------------------------------------------------------- data


def test_species_taxonomy_and_row_selection(dataset_a: Path) -> None:
    frame = load_manifest(dataset_a)
    species, taxonomy = species_and_taxonomy(frame)
    assert species == sorted(species) and len(species) == 4
    assert all(taxonomy[s]["genus"] == s.split()[0] for s in species)
    assert len(select_rows(frame, split="train")) + len(select_rows(frame, split="test")) == len(frame)
    frame = frame.assign(fold=np.arange(len(frame)) % 3)
    test = select_rows(frame, fold=1, train=False)
    rest = select_rows(frame, fold=1, train=True)
    assert set(test["fold"]) == {1} and set(rest["fold"]) == {0, 2} and len(test) + len(rest) == len(frame)


def test_transforms_match_the_model_preprocessing(dataset_a: Path) -> None:
    pre = Preprocessing(input_size=112, resize_size=128, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    frame = load_manifest(dataset_a)
    species, _ = species_and_taxonomy(frame)
    dataset = ManifestDataset(dataset_a, frame, species, train_transform(pre, None, None, True))
    image, label = dataset[(0, 123)]
    assert image.shape == (3, 112, 112) and label == species.index(frame["scientificName"].iloc[0])
    assert torch.equal(image, dataset[(0, 123)][0])  # the seed fixes the crop and flip
    assert image.min() >= -1.0 and image.max() <= 1.0
    centre = ManifestDataset(dataset_a, frame, species, eval_transform(pre, 96, None))[0][0]
    assert centre.shape == (3, 96, 96)  # 96 of round(96 * 128 / 112) = 110
    large = ManifestDataset(dataset_a, frame, species, eval_transform(pre, 288, 320))
    assert large.load(0).size == (320, 320) and large[0][0].shape == (3, 288, 288)  # from the 1024 px copy


def test_augmentation_does_not_depend_on_workers(dataset_a: Path) -> None:
    pre = Preprocessing(input_size=112, resize_size=128, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    frame = load_manifest(dataset_a).iloc[:10]
    dataset = ManifestDataset(dataset_a, frame, species_and_taxonomy(frame)[0], train_transform(pre))

    def epoch_batches(workers: int, epoch: int) -> list[torch.Tensor]:
        sampler = SeededBatchSampler(DistributedSampler(dataset, num_replicas=1, rank=0, seed=3), 4, seed=3)
        sampler.set_epoch(epoch)
        return [x for x, _ in DataLoader(dataset, batch_sampler=sampler, num_workers=workers)]

    zero, two = epoch_batches(0, 1), epoch_batches(2, 1)
    assert [b.shape[0] for b in zero] == [4, 4, 2]
    assert all(torch.equal(a, b) for a, b in zip(zero, two))
    assert not torch.equal(zero[0], epoch_batches(0, 2)[0])  # a new epoch reshuffles and re-augments


def test_singleton_last_batch_is_dropped() -> None:
    class Order(list):
        def set_epoch(self, epoch: int) -> None:
            pass

    assert [len(b) for b in SeededBatchSampler(Order(range(9)), 4, seed=0)] == [4, 4]
    assert len(SeededBatchSampler(Order(range(9)), 4, seed=0)) == 2
    assert [len(b) for b in SeededBatchSampler(Order(range(10)), 4, seed=0, max_batches=2)] == [4, 4]
    assert list(ShardSampler(7, 1, 2)) == [1, 3, 5] and len(ShardSampler(7, 0, 2)) == 4


# ---------------------------------------------------------------------- metrics


def test_topk_with_fewer_classes_than_k() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 2.0], [5.0, 0.0, 1.0]])
    targets = torch.tensor([0, 2, 0, 1])
    assert topk_correct(logits, targets, ks=(1, 2, 5)) == {1: 1, 2: 2, 5: 4}
    assert topk_correct(logits[:0], targets[:0]) == {1: 0, 5: 0}


def test_evaluate_model_counts_every_sample() -> None:
    torch.manual_seed(0)
    model, _ = create_model("small_cnn", 3)
    images, targets = torch.randn(13, 3, 32, 32), torch.randint(0, 3, (13,))
    loader = DataLoader(torch.utils.data.TensorDataset(images, targets), batch_size=4)
    result = evaluate_model(model, loader, "cpu")
    out = forward(model, loader, "cpu")
    logits, got = out.logits, out.targets
    assert result["n"] == 13 and torch.equal(got, targets) and result["top5"] == 1.0
    assert result["top1"] == topk_correct(logits, targets)[1] / 13
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-6)


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=generator) * 2
    targets = torch.distributions.Categorical(logits=true_logits).sample()
    assert fit_temperature(true_logits * 3.0, targets) == pytest.approx(3.0, rel=0.1)


# ------------------------------------------------------------------------- loop


def test_training_learns_and_writes_the_run(trained, dataset_a: Path) -> None:
    run = trained.run_dir
    n_test = int((load_manifest(dataset_a)["split"] == "test").sum())
    assert trained.final["n"] == n_test and not trained.resumed
    assert trained.final["top1"] >= 2 * 0.25, trained.history  # 4 species: chance is 0.25
    assert trained.final["top5"] == 1.0  # fewer than 5 classes
    assert trained.best_epoch == 12 and len(trained.history) == 12
    row = trained.history[-1]
    for key in ("epoch", "lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "seconds",
                "images_per_second"):
        assert key in row
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"]
    for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl", "metrics.csv", "loss_curve.png", "run.json"):
        assert (run / name).is_file(), name
    assert read_metrics(run) == trained.history
    with open(run / "metrics.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 12
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((run / "run.json").read_text())
    assert record["final"] == trained.final
    assert record["provenance"]["dataset_manifest_hash"] == manifest_hash(dataset_a)
    assert record["provenance"]["init_chain"] == [dataset_a.name]
    assert record["provenance"]["init"]["kind"] == "random"
    assert load_config(run / "config.yaml", {}).epochs == 12


def test_bundle_reproduces_the_final_metrics(trained, dataset_a: Path) -> None:
    bundle = load_bundle(trained.run_dir)
    assert bundle.arch == "small_cnn" and bundle.temperature == 1.0
    assert (bundle.preprocessing.input_size, bundle.preprocessing.resize_size) == (112, 128)
    frame = load_manifest(dataset_a)
    assert bundle.species == species_and_taxonomy(frame)[0]
    assert bundle.metrics["test"] == trained.final
    test = ManifestDataset(dataset_a, select_rows(frame, split="test"), bundle.species, eval_transform(bundle.preprocessing))
    again = evaluate_model(bundle.model, DataLoader(test, batch_size=5), "cpu")
    assert again["n"] == trained.final["n"] and again["top1"] == trained.final["top1"]
    assert again["loss"] == pytest.approx(trained.final["loss"], rel=1e-4)


def test_existing_run_is_not_overwritten(trained) -> None:
    config = load_config(trained.run_dir / "config.yaml", {})
    with pytest.raises(ResumeError, match="already holds a run"):
        train(config, progress=False)
    with pytest.raises(ResumeError, match="different config"):
        train(config.replace(resume=True, lr=0.5), progress=False)
    assert load_config(trained.run_dir / "config.yaml", {}) == config  # the refused resume changed nothing


class _Killed(Exception):
    pass


def _kill_at(epoch: int, step: int | None = None) -> TrainHooks:
    """Hooks that 'kill' the run after ``epoch`` (or at ``step`` inside it)."""
    if step is None:
        return TrainHooks(on_epoch_end=lambda row: _raise(row["epoch"] == epoch))
    return TrainHooks(on_step=lambda e, s: _raise(e == epoch and s == step))


def _raise(condition: bool) -> None:
    if condition:
        raise _Killed


def _assert_same_run(a, b) -> None:
    keys = ("train_loss", "test_loss", "test_top1", "test_top5", "lr")
    assert [[r[k] for k in keys] for r in a.history] == [[r[k] for k in keys] for r in b.history]
    wa, wb = _weights(a.run_dir), _weights(b.run_dir)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.final == b.final


def test_killed_run_resumes_to_identical_result(dataset_a: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # real loader workers even on a 2-core CPU (where train() would otherwise load in-process)
    monkeypatch.setattr("herbid.training.prepare.loader_workers", lambda requested, device: requested)
    base = TrainConfig.from_recipe("paper", dataset=str(dataset_a), epochs=3, max_steps_per_epoch=5, **FAST)
    whole = train(base.replace(out=str(tmp_path / "whole")), progress=False)

    # killed after epoch 2's checkpoint; resumed with 2 loader workers (order and crops must not care)
    with pytest.raises(_Killed):
        train(base.replace(out=str(tmp_path / "after-epoch")), progress=False, hooks=_kill_at(2))
    resumed = train(base.replace(out=str(tmp_path / "after-epoch"), resume=True, workers=2), progress=False)
    assert resumed.resumed
    _assert_same_run(whole, resumed)

    # killed in the middle of epoch 3: that epoch is replayed from its checkpointed start
    with pytest.raises(_Killed):
        train(base.replace(out=str(tmp_path / "mid-epoch")), progress=False, hooks=_kill_at(3, step=2))
    assert len(read_metrics(tmp_path / "mid-epoch")) == 2
    _assert_same_run(whole, train(base.replace(out=str(tmp_path / "mid-epoch"), resume=True), progress=False))


def test_more_epochs_on_resume_continues_a_constant_schedule(dataset_a: Path, tmp_path: Path) -> None:
    base = TrainConfig.from_recipe("paper", dataset=str(dataset_a), schedule="constant", max_steps_per_epoch=4, **FAST)
    whole = train(base.replace(out=str(tmp_path / "whole"), epochs=3), progress=False)
    train(base.replace(out=str(tmp_path / "grown"), epochs=2), progress=False)
    grown = train(base.replace(out=str(tmp_path / "grown"), epochs=3, resume=True), progress=False)
    _assert_same_run(whole, grown)


def test_val_split_selects_the_bundled_epoch(dataset_a: Path, tmp_path: Path) -> None:
    result = train(TrainConfig.from_recipe("paper", dataset=str(dataset_a), out=str(tmp_path / "val"), epochs=6, val_fraction=0.3,
                               **FAST), progress=False)
    val = [row["val_top1"] for row in result.history]
    assert result.best_epoch == 1 + int(np.argmax(val))  # first best val epoch; test never looked at
    best = next(row for row in result.history if row["epoch"] == result.best_epoch)
    assert result.final == {"top1": best["test_top1"], "top5": best["test_top5"], "n": best["test_n"],
                            "loss": best["test_loss"]}
    saved = torch.load(tmp_path / "val" / "best.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in _weights(result.run_dir).items())
    bundle = load_bundle(result.run_dir)
    assert bundle.temperature == result.temperature and bundle.temperature > 0
    n_train = int((load_manifest(dataset_a)["split"] == "train").sum())
    assert result.history[0]["images_per_second"] > 0 and best["test_n"] < n_train


def test_transfer_keeps_every_layer_but_the_classifier(trained, dataset_b: Path, tmp_path: Path) -> None:
    result = train(TrainConfig.from_recipe("paper", dataset=str(dataset_b), out=str(tmp_path / "b"), epochs=0,
                               init=str(trained.run_dir), **FAST), progress=False)
    source, target = _weights(trained.run_dir), _weights(result.run_dir)
    assert target.keys() == source.keys()
    classifier = {k for k in target if k.startswith("classifier.")}
    assert classifier == {"classifier.weight", "classifier.bias"}
    for key in target.keys() - classifier:
        assert torch.equal(target[key], source[key]), key
    assert target["classifier.weight"].shape == (3, source["classifier.weight"].shape[1])
    bundle = load_bundle(result.run_dir)
    assert len(bundle.species) == 3
    assert bundle.provenance["init"]["kind"] == "file"
    assert bundle.provenance["init_chain"] == ["herbarium-a", "herbarium-b"]  # inferred from A's bundle
    assert result.history == [] and result.final["n"] == int((load_manifest(dataset_b)["split"] == "test").sum())


def test_bf16_autocast_on_cpu_and_fp16_refused(dataset_a: Path, tmp_path: Path) -> None:
    result = train(TrainConfig.from_recipe("paper", dataset=str(dataset_a), out=str(tmp_path / "bf16"), epochs=1, amp="bf16",
                               max_steps_per_epoch=2, **FAST), progress=False)
    assert math.isfinite(result.history[0]["train_loss"]) and result.final["n"] > 0
    with pytest.raises(ValueError, match="amp=fp16 is not supported on cpu"):
        train(TrainConfig.from_recipe("paper", dataset=str(dataset_a), out=str(tmp_path / "fp16"), epochs=1, amp="fp16", **FAST),
              progress=False)
    assert not (tmp_path / "fp16").exists()
