"""``evaluate_bundle``: species top-1/top-5, genus/family top-1, unknown species, folds."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from herbid.data.build import BuildOptions, build_dataset
from herbid.data.dataset_folder import load_manifest
from herbid.data.splits import split_dataset
from herbid.data.synthetic import make_synthetic_collection
from herbid.evaluation.evaluate import evaluate_bundle, rank_top1
from herbid.evaluation.metrics import topk_hit_rows
from herbid.inference.bundle import load_bundle
from herbid.training.config import load_config
from herbid.training.loop import train


def _dataset(root, name, *, seed, n_species=4, per_species=8, folds=None):
    source = make_synthetic_collection(root / f"{name}-src", n_species=n_species, per_species=per_species,
                                       seed=seed, size=(160, 240))
    folder = build_dataset([source], root / name, BuildOptions(workers=1, progress=False)).out
    split_dataset(folder, by="specimen", test_fraction=0.3, seed=0, folds=folds)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small_cnn trained one short epoch on 4 synthetic species (split + 2 folds)."""
    root = tmp_path_factory.mktemp("evaluate")
    dataset = _dataset(root, "syn", seed=11, folds=2)
    config = load_config(None, {"arch": "small_cnn", "recipe": "smoke", "epochs": 1, "batch_size": 8, "workers": 0,
                                "device": "cpu", "input_size": 64, "resize_size": 72, "dataset": str(dataset),
                                "out": str(root / "run")})
    result = train(config, progress=False)
    return SimpleNamespace(root=root, dataset=dataset, result=result)


def test_matches_the_training_runs_own_test_metrics(trained):
    metrics = evaluate_bundle(trained.result.run_dir, trained.dataset, split="test", device="cpu")
    final = trained.result.final
    assert metrics["n"] == final["n"]
    assert metrics["top1"] == pytest.approx(final["top1"])
    assert metrics["top5"] == pytest.approx(final["top5"])
    assert metrics["loss"] == pytest.approx(final["loss"], rel=1e-4)
    assert metrics["unknown_species"] == 0
    assert sum(s["n"] for s in metrics["per_species"].values()) == metrics["n"]


def test_fewer_than_five_species_gives_top5_of_one_and_taxa(trained):
    bundle = load_bundle(trained.result.run_dir)
    assert len(bundle.species) == 4
    metrics = evaluate_bundle(bundle, trained.dataset, split="test", device="cpu")
    assert metrics["top5"] == 1.0
    # the synthetic species span 3 genera and 2 families (deterministic CPU training)
    assert metrics["genus_top1"] is not None and metrics["family_top1"] is not None
    assert metrics["genus_top1"] >= metrics["top1"]
    assert metrics["family_top1"] >= metrics["top1"]


def test_fold_rows_instead_of_a_split(trained):
    frame = load_manifest(trained.dataset)
    metrics = evaluate_bundle(trained.result.run_dir, trained.dataset, fold=1, device="cpu")
    assert metrics["n"] == int((frame["fold"] == 1).sum())
    assert metrics["fold"] == 1 and metrics["split"] is None
    with pytest.raises(ValueError, match="no rows in split 'val'"):
        evaluate_bundle(trained.result.run_dir, trained.dataset, split="val", device="cpu")


def test_unknown_species_count_as_wrong(trained):
    other = _dataset(trained.root, "five", seed=12, n_species=5, per_species=4)
    bundle = load_bundle(trained.result.run_dir)
    metrics = evaluate_bundle(bundle, other, split="test", device="cpu")
    frame = load_manifest(other)
    test = frame[frame["split"] == "test"]
    unknown = test[~test["scientificName"].isin(bundle.species)]
    assert len(unknown) > 0
    assert metrics["unknown_species"] == len(unknown)
    assert metrics["n"] == len(test)  # included in n...
    assert metrics["top5"] == pytest.approx((len(test) - len(unknown)) / len(test))  # ...and never right
    (name,) = set(unknown["scientificName"])
    assert metrics["unknown_species_names"] == [name]
    assert metrics["per_species"][name] == {"n": len(unknown), "top1": 0.0, "top5": 0.0, "known": False}
    assert not math.isnan(metrics["loss"])  # over the known rows


def test_rank_top1_sums_probabilities_per_taxon():
    # A1 alone beats B1 and B2 as a species, but genus B (0.3 + 0.3) beats genus A (0.4)
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.3], [0.1, 0.2, 0.7]]))
    bundle = SimpleNamespace(species=["A a1", "B b1", "B b2"],
                             taxonomy={"A a1": {"genus": "A"}, "B b1": {"genus": "B"}, "B b2": {"genus": "B"}})
    frame = pd.DataFrame({"scientificName": ["A a1", "B b2"], "genus": [None, "B"]})  # row 0: from the bundle
    assert topk_hit_rows(logits, torch.tensor([0, 2]), (1,))[:, 0].tolist() == [True, True]
    assert rank_top1(logits, frame, bundle, "genus") == 0.5
    assert rank_top1(logits, frame, bundle, "family") is None  # no family known
    assert topk_hit_rows(logits, torch.tensor([5, 1]), (5,))[:, 0].tolist() == [False, True]  # k clamped; unknown class


def test_knn_fusion_mixes_in_neighbour_votes(trained):
    import numpy as np
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from herbid.evaluation.baselines import knn_classify
    from herbid.inference.pixels import eval_transform
    from herbid.inference.sheets import ManifestDataset

    bundle = load_bundle(trained.result.run_dir)
    assert bundle.preprocessing.tta == "none"  # so one plain forward pass below is what evaluate runs
    assert bundle.temperature == 1.0  # no val split, no calibration: give it one, so that T matters below
    bundle.temperature = 2.0
    plain = evaluate_bundle(bundle, trained.dataset, split="test", device="cpu")
    assert plain["knn_fusion"] == 0.0
    # w = 0 is the unfused evaluation, bit for bit (no k-NN pass, no log/clamp round trip)
    assert evaluate_bundle(bundle, trained.dataset, split="test", device="cpu", knn_fusion=0.0) == plain
    only_knn = evaluate_bundle(bundle, trained.dataset, split="test", device="cpu", knn_fusion=1.0)
    # w = 1 is the k-NN classifier on the model's features, computed here independently
    frame = load_manifest(trained.dataset)

    def outputs(rows):
        """Pooled features, logits and class indices of ``rows``, straight from the model."""
        data = ManifestDataset(trained.dataset, rows, bundle.species, eval_transform(bundle.preprocessing))
        model, pooled, logits = bundle.model.eval(), [], []
        with torch.inference_mode():
            for images, _ in DataLoader(data, batch_size=16):
                pooled.append(model.forward_head(model.forward_features(images), pre_logits=True))
                logits.append(model(images))
        return torch.cat(pooled).numpy(), torch.cat(logits), np.asarray(data.targets)

    train_x, _, train_y = outputs(frame[frame["split"] == "train"])
    test_x, test_logits, test_y = outputs(frame[frame["split"] == "test"])
    assert len(test_y) == plain["n"]
    # unfused: the model's own logits (the loss uncalibrated, as in training's test metrics)
    assert plain["top1"] == pytest.approx(float(np.mean(test_logits.argmax(1).numpy() == test_y)))
    assert plain["loss"] == pytest.approx(F.cross_entropy(test_logits, torch.as_tensor(test_y)).item(), rel=1e-5)
    votes = knn_classify(train_x, train_y, test_x, len(bundle.species), k=5)
    assert only_knn["top1"] == pytest.approx(float(np.mean(votes.argmax(1) == test_y)))
    # its loss is the cross-entropy of the votes themselves (clamped as evaluate does)
    knn_loss = -np.log(np.clip(votes[np.arange(len(test_y)), test_y].astype(np.float32), 1e-12, None)).mean()
    assert only_knn["loss"] == pytest.approx(float(knn_loss), rel=1e-4)

    # w = 0.3: (1 − w) · softmax(logits / T) + w · votes. An asymmetric weight, so swapping
    # the two terms, dropping the temperature or ignoring the votes changes the numbers.
    w = 0.3
    probs = test_logits.double().div(bundle.temperature).softmax(dim=1).numpy()
    fused = (1 - w) * probs + w * votes
    mixed = evaluate_bundle(bundle, trained.dataset, split="test", device="cpu", knn_fusion=w)
    assert mixed["n"] == plain["n"] and mixed["knn_fusion"] == w
    assert mixed["top1"] == pytest.approx(float(np.mean(fused.argmax(1) == test_y)))
    assert mixed["loss"] == pytest.approx(float(-np.log(fused[np.arange(len(test_y)), test_y]).mean()), rel=1e-4)
    names = np.asarray(bundle.species)[test_y]
    for name, row in mixed["per_species"].items():
        rows = names == name
        assert row["top1"] == pytest.approx(float(np.mean(fused[rows].argmax(1) == test_y[rows])))
    # genus top-1 sums the *fused* probabilities per genus
    genera = [bundle.taxonomy[s]["genus"] for s in bundle.species]
    taxa = sorted(set(genera))
    per_genus = np.stack([fused[:, [g == t for g in genera]].sum(1) for t in taxa], axis=1)
    true_genus = [bundle.taxonomy[s]["genus"] for s in names]
    assert mixed["genus_top1"] == pytest.approx(float(np.mean([taxa[i] == t for i, t in
                                                                zip(per_genus.argmax(1), true_genus)])))
    # and the fused probabilities are not the unfused ones (the three losses all differ)
    assert len({round(plain["loss"], 6), round(mixed["loss"], 6), round(only_knn["loss"], 6)}) == 3
    with pytest.raises(ValueError, match="knn_fusion"):
        evaluate_bundle(bundle, trained.dataset, split="test", device="cpu", knn_fusion=1.5)
